"""Mistral's Kaggle presets in KerasHub (sizes from Mistral's published configs) and their HF twins."""

_7B = dict(
    vocab=32000,
    hidden=4096,
    layers=32,
    query_heads=32,
    kv_heads=8,
    head_dim=128,
    ffw=14336,
    tied=False,
)
SIZES = {"mistral_7b_en": _7B, "mistral_0.3_7b_en": dict(_7B, vocab=32768)}
ALIASES = {
    "mistral_instruct_7b_en": "mistral_7b_en",
    "mistral_0.2_instruct_7b_en": "mistral_7b_en",
    "mistral_0.3_instruct_7b_en": "mistral_0.3_7b_en",
}
HF_TWINS = {
    "mistral_7b_en": "mistralai/Mistral-7B-v0.1",
    "mistral_instruct_7b_en": "mistralai/Mistral-7B-Instruct-v0.1",
    "mistral_0.2_instruct_7b_en": "mistralai/Mistral-7B-Instruct-v0.2",
    "mistral_0.3_7b_en": "mistralai/Mistral-7B-v0.3",
    "mistral_0.3_instruct_7b_en": "mistralai/Mistral-7B-Instruct-v0.3",
}
