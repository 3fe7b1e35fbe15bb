"""Gemma, Gemma 2 and Gemma 3 (text) as transformers checkpoints: one mapping, and a `Layout` of what
the three differ in, which each family's folder gives (Gemma 4's is kft.families.gemma4.hf).

The weight layout is the inverse of KerasHub's own HF loaders (`convert_gemma.py`,
`convert_gemma3.py`). We write Gemma 2 ourselves because KerasHub 0.32 exports it as
`model_type: gemma`, without its extra norms and soft-capping.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import numpy as np

# transformers' tokenizer for the SentencePiece model of every Gemma
TOKENIZER_CLASS = "GemmaTokenizer"


class Layout(NamedTuple):
    """What a family's transformers checkpoint has beyond Gemma 1's."""

    max_position_embeddings: int
    # Which layers attend over a sliding window when the backbone uses one, by layer index; None:
    # the config has no window, soft caps, query scaling or layer types (Gemma 1).
    sliding: Callable[[int], bool] | None = None
    post_norms: bool = False  # post-attention and pre/post-feed-forward norms (Gemma 2 and 3)
    query_key_norms: bool = False  # q_norm/k_norm on the attention (Gemma 3)
    # rope_parameters for local and global layers (Gemma 3), else one rope_theta
    rope_by_layer_type: bool = False


def hooks(layout: Layout) -> dict:
    """The Family's transformers export (hf_config, hf_weights, hf_tokenizer_class) for `layout`."""
    return dict(
        hf_config=functools.partial(hf_config, layout),
        hf_weights=functools.partial(hf_weights, layout),
        hf_tokenizer_class=TOKENIZER_CLASS,
    )


def _layer_types(backbone, sliding) -> list[str]:
    return [
        "sliding_attention"
        if backbone.use_sliding_window_attention and sliding(i)
        else "full_attention"
        for i in range(backbone.num_layers)
    ]


def hf_config(layout: Layout, backbone, tokenizer) -> dict:
    """transformers config.json for `backbone`, less `architectures` and `model_type`."""
    config = {
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        # Read off the kernel: KerasHub's Gemma/Gemma 2 count gate+up in intermediate_dim, Gemma 3 does not.
        "intermediate_size": int(
            backbone.get_layer("decoder_block_0").gating_ffw._kernel.shape[-1]
        ),
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_query_heads,
        "num_key_value_heads": backbone.num_key_value_heads,
        "head_dim": backbone.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": backbone.layer_norm_epsilon
        if hasattr(backbone, "layer_norm_epsilon")
        else 1e-6,
        "max_position_embeddings": layout.max_position_embeddings,
        "tie_word_embeddings": True,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.start_token_id,
        "eos_token_id": tokenizer.end_token_id,
        "dtype": "float32",
    }
    if layout.sliding is None:
        config["rope_theta"] = 10000.0
        return config
    config.update(
        query_pre_attn_scalar=backbone.head_dim
        if backbone.query_head_dim_normalize
        else backbone.hidden_dim // backbone.num_query_heads,
        sliding_window=backbone.sliding_window_size,
        final_logit_softcapping=backbone.final_logit_soft_cap,
        attn_logit_softcapping=backbone.attention_logit_soft_cap,
        layer_types=_layer_types(backbone, layout.sliding),
    )
    if not layout.rope_by_layer_type:
        config["rope_theta"] = 10000.0
    else:

        def rope(theta, factor):
            return (
                {"rope_type": "default", "rope_theta": theta}
                if factor == 1.0
                else {"rope_type": "linear", "factor": factor, "rope_theta": theta}
            )

        config["rope_parameters"] = {
            "sliding_attention": rope(10000.0, backbone.local_rope_scaling_factor),
            "full_attention": rope(1000000.0, backbone.global_rope_scaling_factor),
        }
    return config


def hf_weights(layout: Layout, backbone) -> dict[str, np.ndarray]:
    """{transformers parameter name: float32 array} for `backbone` (LoRA must be merged first)."""

    def value(variable):
        return np.asarray(variable.numpy(), dtype="float32")

    hidden = backbone.hidden_dim
    weights = {
        "model.embed_tokens.weight": value(backbone.get_layer("token_embedding").embeddings),
        "model.norm.weight": value(backbone.get_layer("final_normalization").scale),
    }
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"decoder_block_{i}")
        attention = block.attention
        prefix = f"model.layers.{i}."
        # EinsumDense kernels: q/k/v (heads, hidden, head_dim), output (heads, head_dim, hidden), MLP (in, out).
        for name, layer in (
            ("q_proj", attention.query_dense),
            ("k_proj", attention.key_dense),
            ("v_proj", attention.value_dense),
        ):
            kernel = value(layer._kernel)
            weights[prefix + f"self_attn.{name}.weight"] = kernel.transpose(0, 2, 1).reshape(
                -1, hidden
            )
        weights[prefix + "self_attn.o_proj.weight"] = (
            value(attention.output_dense._kernel).reshape(-1, hidden).T
        )
        for name, layer in (
            ("gate_proj", block.gating_ffw),
            ("up_proj", block.gating_ffw_2),
            ("down_proj", block.ffw_linear),
        ):
            weights[prefix + f"mlp.{name}.weight"] = value(layer._kernel).T
        weights[prefix + "input_layernorm.weight"] = value(block.pre_attention_norm.scale)
        if not layout.post_norms:
            weights[prefix + "post_attention_layernorm.weight"] = value(block.pre_ffw_norm.scale)
        else:
            weights[prefix + "post_attention_layernorm.weight"] = value(
                block.post_attention_norm.scale
            )
            weights[prefix + "pre_feedforward_layernorm.weight"] = value(block.pre_ffw_norm.scale)
            weights[prefix + "post_feedforward_layernorm.weight"] = value(block.post_ffw_norm.scale)
        if layout.query_key_norms:
            weights[prefix + "self_attn.q_norm.weight"] = value(attention.query_norm.scale)
            weights[prefix + "self_attn.k_norm.weight"] = value(attention.key_norm.scale)
    return weights


def gguf_norms_plus_one(name: str, array, config: dict):
    """llama.cpp stores Gemma's RMSNorm weights as 1 + w (its converter adds 1; transformers' GGUF
    reader subtracts it)."""
    return array + 1.0 if name.endswith("norm") else array


def gguf_gemma3_metadata(writer, config: dict) -> None:
    """Gemma 3's keys as llama.cpp's converter writes them: the global layers' RoPE base, the window."""
    writer.add_rope_freq_base(float(config["rope_parameters"]["full_attention"]["rope_theta"]))
    writer.add_sliding_window(config["sliding_window"])


def gguf_gemma_metadata(writer, config: dict) -> None:
    """Gemma 1 has no keys beyond the common ones (llama.cpp's converter writes none)."""


def gguf_gemma2_metadata(writer, config: dict) -> None:
    """Gemma 2's keys as llama.cpp's converter writes them: the soft caps and the window (RoPE base
    stays llama.cpp's default 10000, as in the converter)."""
    writer.add_attn_logit_softcapping(config["attn_logit_softcapping"])
    writer.add_final_logit_softcapping(config["final_logit_softcapping"])
    writer.add_sliding_window(config["sliding_window"])
