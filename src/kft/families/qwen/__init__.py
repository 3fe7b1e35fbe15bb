"""Qwen 2 and 2.5 (KerasHub's QwenBackbone; byte-level BPE, ChatML, q/k/v biases)."""

from kft.families import chat
from kft.families.family import Family
from kft.families.llama import blocks, hf
from kft.families.qwen import presets

LICENSE = (
    "Qwen2.5 weights are released under the Apache-2.0 license (Qwen2.5 3B and 72B under the Qwen "
    "license: check the base model's card)."
)
SPECIALS = {"eos": "<|endoftext|>"}
SYMBOLS = ("<|im_start|>", "<|im_end|>")


FAMILY = Family(
    "qwen",
    "QwenBackbone",
    "QwenCausalLM",
    "QwenTokenizer",
    ("qwen2",),
    "Qwen2ForCausalLM",
    "qwen2",
    chat=chat.QWEN,
    max_position_embeddings=32768,
    license=LICENSE,
    preset_sizes=presets.SIZES,
    preset_aliases=presets.ALIASES,
    hf_twins=presets.HF_TWINS,
    tiny={"qwen": dict(tie_word_embeddings=False)},
    tiny_symbols=SYMBOLS,
    tiny_specials=SPECIALS,
    tokenizer_kind="bpe",
    gguf_arch="qwen2",
    gguf_pre_tokenizer="qwen2",
    gguf_metadata=hf.gguf_metadata,
    gguf_adds_bos=False,
    hf_write_tokenizer=hf.write_tokenizer,
    **blocks.hooks(
        **hf.hooks(
            hf.Layout(max_position_embeddings=32768, attention_bias=True, sliding_window="qwen")
        )
    ),
)
