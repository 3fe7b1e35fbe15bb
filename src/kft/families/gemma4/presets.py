"""Gemma 4's KerasHub Kaggle presets: the sizes of their text decoders, their other names and their
Hugging Face twins.

E2B/E4B sizes come from their text configs (as in benchmarks/gemma4_param_counts.py), approximate
because the global layers' wider heads are not counted -- a local config.json is always exact.
"""

SIZES = {
    "gemma4_2b": dict(
        vocab=262144,
        hidden=1536,
        layers=35,
        query_heads=8,
        kv_heads=1,
        head_dim=256,
        ffw=6144,
        per_layer_vocab=262144,
        per_layer_dim=256,
        double_wide_layers=20,
        global_head_dim=512,
    ),
    "gemma4_4b": dict(
        vocab=262144,
        hidden=2560,
        layers=42,
        query_heads=8,
        kv_heads=2,
        head_dim=256,
        ffw=10240,
        per_layer_vocab=262144,
        per_layer_dim=256,
        double_wide_layers=0,
        global_head_dim=512,
    ),
}
ALIASES = {"gemma4_instruct_2b": "gemma4_2b", "gemma4_instruct_4b": "gemma4_4b"}
HF_TWINS = {
    "gemma4_2b": "google/gemma-4-E2B",
    "gemma4_instruct_2b": "google/gemma-4-E2B-it",
    "gemma4_4b": "google/gemma-4-E4B",
    "gemma4_instruct_4b": "google/gemma-4-E4B-it",
    "gemma4_31b": "google/gemma-4-31B",
    "gemma4_instruct_31b": "google/gemma-4-31B-it",
    "gemma4_26b_a4b": "google/gemma-4-26B-A4B",
    "gemma4_instruct_26b_a4b": "google/gemma-4-26B-A4B-it",
}
