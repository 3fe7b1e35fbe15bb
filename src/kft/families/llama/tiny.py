"""Llama 2's tiny random preset: an untied head, SentencePiece with Llama's ids (unk 0, <s> 1, </s> 2)."""

BACKBONES = {"llama": dict(tie_word_embeddings=False)}
SYMBOLS = ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")
SPECIALS = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": None}
