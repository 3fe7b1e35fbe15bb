"""Gemma 2's KerasHub Kaggle presets: the sizes of their text decoders (from the published configs),
their other names and their Hugging Face twins."""

SIZES = {
    "gemma2_2b_en": dict(
        vocab=256000, hidden=2304, layers=26, query_heads=8, kv_heads=4, head_dim=256, ffw=9216
    ),
    "gemma2_9b_en": dict(
        vocab=256000, hidden=3584, layers=42, query_heads=16, kv_heads=8, head_dim=256, ffw=14336
    ),
    "gemma2_27b_en": dict(
        vocab=256000, hidden=4608, layers=46, query_heads=32, kv_heads=16, head_dim=128, ffw=36864
    ),
}
ALIASES = {
    "gemma2_instruct_2b_en": "gemma2_2b_en",
    "gemma2_instruct_9b_en": "gemma2_9b_en",
    "gemma2_instruct_27b_en": "gemma2_27b_en",
}
HF_TWINS = {
    "gemma2_2b_en": "google/gemma-2-2b",
    "gemma2_instruct_2b_en": "google/gemma-2-2b-it",
    "gemma2_9b_en": "google/gemma-2-9b",
    "gemma2_instruct_9b_en": "google/gemma-2-9b-it",
    "gemma2_27b_en": "google/gemma-2-27b",
    "gemma2_instruct_27b_en": "google/gemma-2-27b-it",
}
