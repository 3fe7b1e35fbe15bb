"""Gemma 4's text decoder as a transformers `Gemma4ForCausalLM` (`model_type: gemma4_text`).

The inverse of KerasHub's `convert_gemma4.py` for the text part: per-layer embeddings, layers
reusing an earlier layer's K/V (no k/v weights of their own), global layers with their own head
dim (and K=V with fewer heads on 26B-A4B/31B), the MoE block, and the per-layer `layer_scalar`.
"""

from __future__ import annotations

import numpy as np


def _value(variable):
    return np.asarray(variable.numpy(), dtype="float32")


def _rope(theta, factor, partial):
    params = {"rope_type": "default", "rope_theta": float(theta)}
    if (
        partial is not None
    ):  # written even at 1.0: KerasHub's convert_gemma4 reads it unconditionally
        params["partial_rotary_factor"] = float(partial)
    if partial not in (None, 1.0):
        params["rope_type"] = "proportional"
    if factor not in (None, 1.0):
        raise NotImplementedError(
            "Gemma 4 export with RoPE scaling factors other than 1 is not supported"
        )
    return params


def hf_config(backbone, tokenizer) -> dict:
    """transformers config.json for a text-only Gemma4Backbone, less `architectures` and `model_type`."""
    b = backbone
    config = {
        "vocab_size": b.vocabulary_size,
        "hidden_size": b.hidden_dim,
        "intermediate_size": b.intermediate_dim,
        "num_hidden_layers": b.num_layers,
        "num_attention_heads": b.num_query_heads,
        "num_key_value_heads": b.num_key_value_heads,
        "head_dim": b.head_dim,
        "global_head_dim": b.global_head_dim or b.head_dim,
        "attention_k_eq_v": b.num_global_key_value_heads is not None,
        "num_global_key_value_heads": b.num_global_key_value_heads,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": b.layer_norm_epsilon,
        "max_position_embeddings": 131072,
        "sliding_window": b.sliding_window_size,
        "layer_types": list(b.layer_types),
        "final_logit_softcapping": b.final_logit_soft_cap,
        "rope_parameters": {
            "sliding_attention": _rope(
                b.local_rope_wavelength or 10000.0, b.local_rope_scaling_factor, None
            ),
            "full_attention": _rope(
                b.global_rope_wavelength or 1000000.0,
                b.global_rope_scaling_factor,
                b.global_rope_partial_rotary_factor or 1.0,
            ),
        },
        "hidden_size_per_layer_input": b.hidden_size_per_layer_input,
        "vocab_size_per_layer_input": b.vocab_size_per_layer_input or b.vocabulary_size,
        "num_kv_shared_layers": b.num_kv_shared_layers,
        "use_double_wide_mlp": b.use_double_wide_mlp,
        "enable_moe_block": b.enable_moe_block,
        "num_experts": b.num_experts,
        "top_k_experts": b.num_experts_per_token if b.enable_moe_block else None,
        "moe_intermediate_size": b.expert_intermediate_dim,
        "use_bidirectional_attention": "vision" if b.use_vision_bidirectional_attention else None,
        "tie_word_embeddings": True,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.start_token_id,
        "eos_token_id": tokenizer.end_token_id,
        "dtype": "float32",
    }
    if not b.use_sliding_window_attention:
        raise NotImplementedError(
            "Gemma 4 export needs sliding-window local layers (every released model has them)"
        )
    return config


def _heads_in(kernel):  # Keras (heads, hidden, head_dim) -> HF (heads * head_dim, hidden)
    return kernel.transpose(0, 2, 1).reshape(-1, kernel.shape[1])


def hf_weights(backbone) -> dict[str, np.ndarray]:
    """{transformers parameter name: float32 array} (LoRA must be merged first)."""
    b = backbone
    weights = {
        "model.embed_tokens.weight": _value(b.get_layer("token_embedding").embeddings),
        "model.norm.weight": _value(b.get_layer("final_normalization").scale),
    }
    if b.hidden_size_per_layer_input > 0:
        weights["model.embed_tokens_per_layer.weight"] = _value(
            b.get_layer("per_layer_token_embedding").embeddings
        )
        weights["model.per_layer_model_projection.weight"] = _value(
            b.get_layer("per_layer_model_projection").kernel
        ).T
        weights["model.per_layer_projection_norm.weight"] = _value(
            b.get_layer("per_layer_projection_norm").scale
        )
    for i in range(b.num_layers):
        block = b.get_layer(f"decoder_block_{i}")
        attention = block.attention
        p = f"model.layers.{i}."
        w = {
            "input_layernorm.weight": block.pre_attention_norm.scale,
            "post_attention_layernorm.weight": block.post_attention_norm.scale,
            "pre_feedforward_layernorm.weight": block.pre_ffw_norm.scale,
            "post_feedforward_layernorm.weight": block.post_ffw_norm.scale,
            "self_attn.q_norm.weight": attention.query_norm.scale,
        }
        weights.update({p + name: _value(v) for name, v in w.items()})
        weights[p + "self_attn.q_proj.weight"] = _heads_in(_value(attention.query_dense._kernel))
        if not attention.is_kv_shared_layer:
            weights[p + "self_attn.k_proj.weight"] = _heads_in(_value(attention.key_dense._kernel))
            weights[p + "self_attn.k_norm.weight"] = _value(attention.key_norm.scale)
            if attention.value_dense is not None:
                weights[p + "self_attn.v_proj.weight"] = _heads_in(
                    _value(attention.value_dense._kernel)
                )
        output = _value(attention.output_dense._kernel)  # (heads, head_dim, hidden)
        weights[p + "self_attn.o_proj.weight"] = output.reshape(-1, output.shape[-1]).T
        for name, layer in (
            ("gate_proj", block.gating_ffw),
            ("up_proj", block.gating_ffw_2),
            ("down_proj", block.ffw_linear),
        ):
            weights[p + f"mlp.{name}.weight"] = _value(layer._kernel).T
        if block.hidden_size_per_layer_input > 0:
            weights[p + "per_layer_input_gate.weight"] = _value(block.per_layer_input_gate.kernel).T
            weights[p + "per_layer_projection.weight"] = _value(block.per_layer_up_proj.kernel).T
            weights[p + "post_per_layer_input_norm.weight"] = _value(
                block.post_per_layer_input_norm.scale
            )
        if block.enable_moe_block:
            bank, router = block.moe_expert_bank, block.moe_router
            weights[p + "post_feedforward_layernorm_1.weight"] = _value(
                block.post_ffw_norm_dense.scale
            )
            weights[p + "pre_feedforward_layernorm_2.weight"] = _value(block.pre_ffw_norm_moe.scale)
            weights[p + "post_feedforward_layernorm_2.weight"] = _value(
                block.post_ffw_norm_moe_path.scale
            )
            weights[p + "router.scale"] = _value(router.per_dim_scale)
            weights[p + "router.proj.weight"] = _value(router.proj.kernel).T
            weights[p + "router.per_expert_scale"] = _value(bank.per_expert_scale)
            # KerasHub gate/up (E, H, I) and down (E, I, H); HF gate_up (E, 2I, H) and down (E, H, I).
            weights[p + "experts.gate_up_proj"] = np.concatenate(
                [
                    _value(bank.gate_proj).transpose(0, 2, 1),
                    _value(bank.up_proj).transpose(0, 2, 1),
                ],
                axis=1,
            )
            weights[p + "experts.down_proj"] = _value(bank.down_proj).transpose(0, 2, 1)
        weights[p + "layer_scalar"] = _value(block.layer_scalar).reshape(1)
    return weights
