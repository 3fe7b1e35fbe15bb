"""Llama 3, 3.1 and 3.2 (KerasHub's Llama3Backbone; byte-level BPE, header turns ending <|eot_id|>),
and SmolLM2 (the same architecture speaking ChatML), prepared offline as `smollm2_135m_gguf`."""

from kft.families import chat
from kft.families.family import Family
from kft.families.llama import blocks, hf
from kft.families.llama3 import presets, tiny

LICENSE = (
    "This model is a derivative of Llama 3 and is subject to the Llama 3.x Community License "
    "(https://www.llama.com/llama3_2/license/) and its Acceptable Use Policy; SmolLM2 weights are "
    "Apache-2.0."
)


FAMILY = Family(
    "llama3",
    "Llama3Backbone",
    "Llama3CausalLM",
    "Llama3Tokenizer",
    ("llama",),
    "LlamaForCausalLM",
    "llama",
    chat=chat.LLAMA3,
    max_position_embeddings=131072,
    license=LICENSE,
    preset_sizes=presets.SIZES,
    preset_aliases=presets.ALIASES,
    hf_twins=presets.HF_TWINS,
    tiny=tiny.BACKBONES,
    tiny_symbols=tiny.SYMBOLS,
    tiny_specials=tiny.SPECIALS,
    tokenizer_kind="bpe",
    hf_write_tokenizer=hf.write_tokenizer,
    gguf_presets=presets.GGUF,
    **blocks.hooks(**hf.hooks(hf.Layout(max_position_embeddings=131072))),
)
