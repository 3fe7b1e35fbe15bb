"""Gemma (1 and 1.1): KerasHub's GemmaBackbone without Gemma 2's extra norms."""

from kft.families import chat
from kft.families.family import Family
from kft.families.gemma import hf, presets, tiny

# Gemma 1-3 share their chat turns (and a system message folded into the first user turn).
GEMMA_TURNS = dict(chat=chat.GEMMA)
LICENSE = (
    "This model is a derivative of Gemma and is subject to the Gemma Terms of Use "
    "(https://ai.google.dev/gemma/terms) and the Gemma Prohibited Use Policy "
    "(https://ai.google.dev/gemma/prohibited_use_policy)."
)

FAMILY = Family(
    "gemma",
    "GemmaBackbone",
    "GemmaCausalLM",
    "GemmaTokenizer",
    ("gemma",),
    "GemmaForCausalLM",
    "gemma",
    max_position_embeddings=8192,
    matches_keras_config=lambda config: not config.get("use_post_ffw_norm"),
    license=LICENSE,
    **GEMMA_TURNS,
    preset_sizes=presets.SIZES,
    preset_aliases=presets.ALIASES,
    hf_twins=presets.HF_TWINS,
    keras_ffw_counts_gate_and_up=True,
    tiny=tiny.BACKBONES,
    tiny_symbols=tiny.SYMBOLS,
    # Checked in llama.cpp itself only: transformers' GGUF reader has no Gemma 1.
    gguf_arch="gemma",
    gguf_tensor=hf.gguf_norms_plus_one,
    gguf_metadata=hf.gguf_gemma_metadata,
    **hf.hooks(hf.Layout(max_position_embeddings=8192)),
)
