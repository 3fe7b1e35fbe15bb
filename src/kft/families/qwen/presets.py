"""Qwen 2.5's Kaggle presets in KerasHub (sizes from Qwen's published configs) and their HF twins."""


def qwen(hidden, layers, heads, kv, ffw, tied, vocab=151936):
    return dict(
        vocab=vocab,
        hidden=hidden,
        layers=layers,
        query_heads=heads,
        kv_heads=kv,
        head_dim=hidden // heads,
        ffw=ffw,
        tied=tied,
    )


SIZES = {
    "qwen2.5_0.5b_en": qwen(896, 24, 14, 2, 4864, True),
    "qwen2.5_3b_en": qwen(2048, 36, 16, 2, 11008, True),
    "qwen2.5_7b_en": qwen(3584, 28, 28, 4, 18944, False, vocab=152064),
}
ALIASES = {
    "qwen2.5_instruct_0.5b_en": "qwen2.5_0.5b_en",
    "qwen2.5_instruct_3b_en": "qwen2.5_3b_en",
    "qwen2.5_instruct_7b_en": "qwen2.5_7b_en",
}
HF_TWINS = {
    "qwen2.5_0.5b_en": "Qwen/Qwen2.5-0.5B",
    "qwen2.5_instruct_0.5b_en": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5_3b_en": "Qwen/Qwen2.5-3B",
    "qwen2.5_instruct_3b_en": "Qwen/Qwen2.5-3B-Instruct",
    "qwen2.5_7b_en": "Qwen/Qwen2.5-7B",
    "qwen2.5_instruct_7b_en": "Qwen/Qwen2.5-7B-Instruct",
}
