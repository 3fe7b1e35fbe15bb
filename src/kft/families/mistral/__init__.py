"""Mistral (KerasHub's MistralBackbone; SentencePiece, `[INST]` turns, an untied head)."""

from kft.families import chat
from kft.families.family import Family
from kft.families.llama import blocks, hf
from kft.families.llama import tiny as llama_tiny
from kft.families.mistral import presets

LICENSE = "Mistral 7B weights are released under the Apache-2.0 license."

FAMILY = Family(
    "mistral",
    "MistralBackbone",
    "MistralCausalLM",
    "MistralTokenizer",
    ("mistral",),
    "MistralForCausalLM",
    "mistral",
    chat=chat.MISTRAL,
    max_position_embeddings=32768,
    license=LICENSE,
    preset_sizes=presets.SIZES,
    preset_aliases=presets.ALIASES,
    hf_twins=presets.HF_TWINS,
    tiny={"mistral": dict(sliding_window=512)},
    tiny_symbols=llama_tiny.SYMBOLS,
    tiny_specials=llama_tiny.SPECIALS,
    tied_by_default=False,
    # llama.cpp writes Llama 2 and Mistral (v0.1-v0.3) as its `llama` architecture.
    gguf_arch="llama",
    gguf_metadata=hf.gguf_metadata,
    gguf_tensor=hf.gguf_rotary_rows,
    **blocks.hooks(
        **hf.hooks(
            hf.Layout(
                max_position_embeddings=32768,
                sliding_window="mistral",
                tokenizer_class="LlamaTokenizer",
            )
        )
    ),
)
