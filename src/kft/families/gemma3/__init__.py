"""Gemma 3 (text decoder; the vision encoder of 4B+ presets is KerasHub's to load)."""

from kft.families.family import Family
from kft.families.gemma import GEMMA_TURNS, LICENSE, hf
from kft.families.gemma import tiny as gemma_tiny
from kft.families.gemma3 import presets, tiny

FAMILY = Family(
    "gemma3",
    "Gemma3Backbone",
    "Gemma3CausalLM",
    "Gemma3Tokenizer",
    ("gemma3_text", "gemma3"),
    "Gemma3ForCausalLM",
    "gemma3_text",
    max_position_embeddings=32768,
    license=LICENSE,
    **GEMMA_TURNS,
    preset_sizes=presets.SIZES,
    preset_aliases=presets.ALIASES,
    hf_twins=presets.HF_TWINS,
    tiny=tiny.BACKBONES,
    tiny_symbols=gemma_tiny.SYMBOLS,
    gguf_presets=presets.GGUF,
    gguf_arch="gemma3",
    gguf_tensor=hf.gguf_norms_plus_one,
    gguf_metadata=hf.gguf_gemma3_metadata,
    **hf.hooks(
        hf.Layout(
            max_position_embeddings=32768,
            sliding=lambda i: i % 6 < 5,
            post_norms=True,
            query_key_norms=True,
            rope_by_layer_type=True,
        )
    ),
)
