"""Llama 3's tiny random preset: byte-level BPE with Llama 3's start/end and header-turn tokens, a
tied head (as Llama 3.2 1B/3B)."""

BACKBONES = {"llama3": dict(tie_word_embeddings=True)}
SPECIALS = {"bos": "<|begin_of_text|>", "eos": "<|end_of_text|>"}
SYMBOLS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
