"""Gemma's KerasHub Kaggle presets: the sizes of their text decoders (from the published configs),
their other names and their Hugging Face twins."""

SIZES = {
    "gemma_2b_en": dict(
        vocab=256000, hidden=2048, layers=18, query_heads=8, kv_heads=1, head_dim=256, ffw=16384
    ),
    "gemma_7b_en": dict(
        vocab=256000, hidden=3072, layers=28, query_heads=16, kv_heads=16, head_dim=256, ffw=24576
    ),
}
ALIASES = {"gemma_instruct_2b_en": "gemma_2b_en", "gemma_instruct_7b_en": "gemma_7b_en"}
HF_TWINS = {
    "gemma_2b_en": "google/gemma-2b",
    "gemma_instruct_2b_en": "google/gemma-2b-it",
    "gemma_7b_en": "google/gemma-7b",
    "gemma_instruct_7b_en": "google/gemma-7b-it",
    "gemma_1.1_instruct_2b_en": "google/gemma-1.1-2b-it",
    "gemma_1.1_instruct_7b_en": "google/gemma-1.1-7b-it",
}
