"""Llama 2's tiny random preset: an untied head, SentencePiece with Llama's ids (unk 0, <s> 1, </s> 2)."""

BACKBONES = {"llama": dict(tie_word_embeddings=False)}
SYMBOLS = ()  # Llama 2 and Mistral v0.1 spell `[INST]` out in plain pieces, as here
SPECIALS = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": None}
