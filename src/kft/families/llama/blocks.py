"""What KerasHub's Llama-style decoders share (Llama 2/3, Mistral, Qwen 2/2.5, Qwen 3): blocks named
`transformer_layer_<i>`, the attention in `_self_attention_layer`, RoPE in a `rotary_embedding_layer`
that takes positions, the mask from `_compute_self_attention_mask`, query/key/value kernels laid out
(hidden, heads, head_dim). Every family folder of this kind builds its `Family` with `hooks()`."""

from __future__ import annotations

from typing import Callable

from kft.families.llama import fixes


def attention(block):
    return block._self_attention_layer


def block_layers(block) -> dict:
    """{kft layer name: the layer}: Gemma's names for the same projections (gate, up, down)."""
    a = block._self_attention_layer
    return {
        "query": a._query_dense,
        "key": a._key_dense,
        "value": a._value_dense,
        "attention_output": a._output_dense,
        "ffw_gating": block._feedforward_gate_dense,
        "ffw_gating_2": block._feedforward_intermediate_dense,
        "ffw_linear": block._feedforward_output_dense,
    }


def rope(layer, positions: Callable) -> tuple[str, Callable]:
    """The attention's rotary layer, rotating at `positions(x, start_index)` instead."""
    original = layer.rotary_embedding_layer
    return "rotary_embedding_layer", lambda x, start_index=0: original(
        x, positions=positions(x, start_index)
    )


# Layout roles on a (batch, model) mesh (kft.distribute.layouts): the Gemma roles' layouts for the same
# kernels, which here are (hidden, heads, head_dim) for q/k/v and (heads, head_dim, hidden) for the
# output; the untied head (reverse_embeddings) is (hidden, vocab).
LAYOUT_ROLES = (
    ("embeddings", r"(.*/)?token_embedding/embeddings", [("model", "batch"), ("model", None)]),
    ("head", r"(.*/)?token_embedding/reverse_embeddings", [("batch", "model"), (None, "model")]),
    (
        "query",
        r".*self_attention/query/kernel",
        [("batch", "model", None), (None, "model", None), ("model", None, None)],
    ),
    (
        "key_value",
        r".*self_attention/(key|value)/kernel",
        [("batch", "model", None), (None, "model", None), ("batch", None, None)],
    ),
    (
        "attention_output",
        r".*self_attention/attention_output/kernel",
        [("model", None, "batch"), ("model", None, None), (None, None, "model")],
    ),
    # Qwen 2's q/k/v biases (heads, head_dim): small, replicated.
    ("bias", r".*self_attention/(query|key|value)/bias", []),
    (
        "ffw_in",
        r".*feedforward_(gate|intermediate)_dense/kernel",
        [("batch", "model"), (None, "model")],
    ),
    ("ffw_out", r".*feedforward_output_dense/kernel", [("model", "batch"), ("model", None)]),
)


def hooks(**export) -> dict:
    """The Family fields every Llama-style family shares, with its export hooks."""
    return dict(
        block_prefix="transformer_layer_",
        tiny_kernel_scale=5.0,  # std 0.02 -> 0.1, Glorot's for the tiny sizes
        final_norm="sequence_output_layernorm",
        attention=attention,
        block_layers=block_layers,
        mask_method="_compute_self_attention_mask",
        rope=rope,
        heads_axis=1,
        layout_roles=LAYOUT_ROLES,
        keras_fixes=fixes.keras_hub,
        **export,
    )
