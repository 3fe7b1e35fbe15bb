"""Gemma 2: KerasHub's GemmaBackbone with post-attention/feed-forward norms and soft caps."""

from kft.families.family import Family
from kft.families.gemma import GEMMA_TURNS, LICENSE, hf
from kft.families.gemma import tiny as gemma_tiny
from kft.families.gemma2 import presets, tiny

FAMILY = Family(
    "gemma2",
    "GemmaBackbone",
    "GemmaCausalLM",
    "GemmaTokenizer",
    ("gemma2",),
    "Gemma2ForCausalLM",
    "gemma2",
    max_position_embeddings=8192,
    matches_keras_config=lambda config: bool(config.get("use_post_ffw_norm")),
    license=LICENSE,
    **GEMMA_TURNS,
    preset_sizes=presets.SIZES,
    preset_aliases=presets.ALIASES,
    hf_twins=presets.HF_TWINS,
    keras_ffw_counts_gate_and_up=True,
    tiny=tiny.BACKBONES,
    tiny_symbols=gemma_tiny.SYMBOLS,
    gguf_arch="gemma2",
    gguf_tensor=hf.gguf_norms_plus_one,
    gguf_metadata=hf.gguf_gemma2_metadata,
    **hf.hooks(
        hf.Layout(max_position_embeddings=8192, sliding=lambda i: i % 2 == 0, post_norms=True)
    ),
)
