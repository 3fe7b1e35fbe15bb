"""Qwen 3 (KerasHub's Qwen3Backbone; byte-level BPE, ChatML, per-head q/k norms)."""

from kft.families import chat
from kft.families.family import Family
from kft.families.llama import blocks, hf
from kft.families.qwen import SYMBOLS

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
    preset_sizes={
        "qwen3_0.6b_en": dict(
            vocab=151936,
            hidden=1024,
            layers=28,
            query_heads=16,
            kv_heads=8,
            head_dim=128,
            ffw=3072,
            tied=True,
        ),
        "qwen3_8b_en": dict(
            vocab=151936,
            hidden=4096,
            layers=36,
            query_heads=32,
            kv_heads=8,
            head_dim=128,
            ffw=12288,
            tied=False,
        ),
    },
    hf_twins={"qwen3_0.6b_en": "Qwen/Qwen3-0.6B", "qwen3_8b_en": "Qwen/Qwen3-8B"},
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
