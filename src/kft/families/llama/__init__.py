"""Llama 2 (KerasHub's LlamaBackbone; SentencePiece, `[INST]` chat turns), and in blocks.py/hf.py what
every Llama-style family folder (llama3, mistral, qwen, qwen3) shares."""

from kft.families import chat
from kft.families.family import Family
from kft.families.llama import blocks, hf, presets, tiny

LICENSE = (
    "This model is a derivative of Llama 2 and is subject to the Llama 2 Community License "
    "(https://ai.meta.com/llama/license/) and its Acceptable Use Policy."
)

FAMILY = Family(
    "llama",
    "LlamaBackbone",
    "LlamaCausalLM",
    "LlamaTokenizer",
    (),  # HF Llama folders load as Llama 3 in KerasHub (byte-level BPE): see models.model
    "LlamaForCausalLM",
    "llama",
    chat=chat.LLAMA2,
    max_position_embeddings=4096,
    license=LICENSE,
    preset_sizes=presets.SIZES,
    preset_aliases=presets.ALIASES,
    hf_twins=presets.HF_TWINS,
    tiny=tiny.BACKBONES,
    tiny_symbols=tiny.SYMBOLS,
    tiny_specials=tiny.SPECIALS,
    # llama.cpp writes Llama 2 and Mistral (v0.1-v0.3) as its `llama` architecture.
    gguf_arch="llama",
    gguf_metadata=hf.gguf_metadata,
    gguf_tensor=hf.gguf_rotary_rows,
    **blocks.hooks(
        **hf.hooks(hf.Layout(max_position_embeddings=4096, tokenizer_class="LlamaTokenizer"))
    ),
)
