"""Llama 2's Kaggle presets in KerasHub (sizes from Meta's published configs) and their HF twins."""

SIZES = {
    "llama2_7b_en": dict(
        vocab=32000,
        hidden=4096,
        layers=32,
        query_heads=32,
        kv_heads=32,
        head_dim=128,
        ffw=11008,
        tied=False,
    ),
    "llama2_13b_en": dict(
        vocab=32000,
        hidden=5120,
        layers=40,
        query_heads=40,
        kv_heads=40,
        head_dim=128,
        ffw=13824,
        tied=False,
    ),
}
ALIASES = {
    "llama2_instruct_7b_en": "llama2_7b_en",
    "llama2_7b_en_int8": "llama2_7b_en",
    "llama2_instruct_7b_en_int8": "llama2_7b_en",
}
HF_TWINS = {
    "llama2_7b_en": "meta-llama/Llama-2-7b-hf",
    "llama2_instruct_7b_en": "meta-llama/Llama-2-7b-chat-hf",
}
