"""Qwen 3's Kaggle presets in KerasHub (sizes from Qwen's published configs) and their HF twins."""

from kft.families.qwen.presets import qwen

SIZES = {
    "qwen3_0.6b_en": dict(qwen(1024, 28, 16, 8, 3072, True), head_dim=128),
    "qwen3_8b_en": dict(qwen(4096, 36, 32, 8, 12288, False), head_dim=128),
}
HF_TWINS = {"qwen3_0.6b_en": "Qwen/Qwen3-0.6B", "qwen3_8b_en": "Qwen/Qwen3-8B"}
