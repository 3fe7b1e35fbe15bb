"""Qwen 3 (KerasHub's Qwen3Backbone; byte-level BPE, ChatML, per-head q/k norms)."""

from kft.families import chat
from kft.families.family import Family
from kft.families.llama import blocks, hf
from kft.families.qwen import SYMBOLS
from kft.families.qwen3 import presets

LICENSE = "Qwen3 weights are released under the Apache-2.0 license."

FAMILY = Family(
    "qwen3",
    "Qwen3Backbone",
    "Qwen3CausalLM",
    "Qwen3Tokenizer",
    ("qwen3",),
    "Qwen3ForCausalLM",
    "qwen3",
    chat=chat.QWEN3,
    max_position_embeddings=40960,
    license=LICENSE,
    preset_sizes=presets.SIZES,
    hf_twins=presets.HF_TWINS,
    tiny={"qwen3": dict(tie_word_embeddings=True)},
    tiny_symbols=SYMBOLS,
    tiny_specials={"eos": "<|im_end|>", "pad": "<|endoftext|>"},
    tokenizer_kind="bpe",
    gguf_arch="qwen3",
    gguf_pre_tokenizer="qwen2",
    gguf_metadata=hf.gguf_metadata,
    gguf_adds_bos=False,
    hf_write_tokenizer=hf.write_tokenizer,
    **blocks.hooks(**hf.hooks(hf.Layout(max_position_embeddings=40960, query_key_norms=True))),
)
