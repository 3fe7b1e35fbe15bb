"""Gemma's tiny random preset (kft.models.tiny): KerasHub's GemmaBackbone at kft's tiny sizes."""

# What Gemma's tokenizers hold as single tokens: the chat-turn and image markers (Gemma 1-3).
SYMBOLS = ("<start_of_turn>", "<end_of_turn>", "<img>", "<start_of_image>", "<end_of_image>")
BACKBONES = {"gemma": {}}
