"""Writing a Gemma, Gemma 2, Gemma 3 or Gemma 4 (text) KerasHub model as a transformers checkpoint.

The weight layout is the inverse of KerasHub's own HF loaders (`convert_gemma.py`,
`convert_gemma3.py`; Gemma 4's in hf_gemma4.py). We write Gemma 2 ourselves because KerasHub 0.32
exports it as `model_type: gemma`, without its extra norms and soft-capping.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from kft import families
from kft.export import hf_gemma4

ARCHITECTURES = {name: f.hf_architecture for name, f in families.FAMILIES.items()}
MODEL_TYPES = {name: f.hf_model_type for name, f in families.FAMILIES.items()}


def _layer_types(backbone, family) -> list[str]:
    def sliding(i):
        if family == "gemma2":
            return backbone.use_sliding_window_attention and i % 2 == 0
        return backbone.use_sliding_window_attention and i % 6 < 5

    return ["sliding_attention" if sliding(i) else "full_attention" for i in range(backbone.num_layers)]


def hf_config(backbone, family: str, tokenizer) -> dict:
    """transformers config.json for `backbone`."""
    if family == "gemma4":
        return hf_gemma4.hf_config(backbone, tokenizer, backbone.final_logit_soft_cap)
    config = {
        "architectures": [ARCHITECTURES[family]],
        "model_type": MODEL_TYPES[family],
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        # Read off the kernel: KerasHub's Gemma/Gemma 2 count gate+up in intermediate_dim, Gemma 3 does not.
        "intermediate_size": int(backbone.get_layer("decoder_block_0").gating_ffw._kernel.shape[-1]),
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_query_heads,
        "num_key_value_heads": backbone.num_key_value_heads,
        "head_dim": backbone.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": backbone.layer_norm_epsilon if hasattr(backbone, "layer_norm_epsilon") else 1e-6,
        "max_position_embeddings": families.get(family).max_position_embeddings,
        "tie_word_embeddings": True,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.start_token_id,
        "eos_token_id": tokenizer.end_token_id,
        "dtype": "float32",
    }
    if family == "gemma":
        config["rope_theta"] = 10000.0
        return config
    config.update(
        query_pre_attn_scalar=backbone.head_dim if backbone.query_head_dim_normalize
        else backbone.hidden_dim // backbone.num_query_heads,
        sliding_window=backbone.sliding_window_size,
        final_logit_softcapping=backbone.final_logit_soft_cap,
        attn_logit_softcapping=backbone.attention_logit_soft_cap,
        layer_types=_layer_types(backbone, family),
    )
    if family == "gemma2":
        config["rope_theta"] = 10000.0
    else:
        def rope(theta, factor):
            return {"rope_type": "default", "rope_theta": theta} if factor == 1.0 else \
                {"rope_type": "linear", "factor": factor, "rope_theta": theta}

        config["rope_parameters"] = {
            "sliding_attention": rope(10000.0, backbone.local_rope_scaling_factor),
            "full_attention": rope(1000000.0, backbone.global_rope_scaling_factor),
        }
    return config


def hf_weights(backbone, family: str) -> dict[str, np.ndarray]:
    """{transformers parameter name: float32 array} for `backbone` (LoRA must be merged first)."""
    if family == "gemma4":
        return hf_gemma4.hf_weights(backbone)

    def value(variable):
        return np.asarray(variable.numpy(), dtype="float32")

    hidden = backbone.hidden_dim
    weights = {"model.embed_tokens.weight": value(backbone.get_layer("token_embedding").embeddings),
               "model.norm.weight": value(backbone.get_layer("final_normalization").scale)}
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"decoder_block_{i}")
        attention = block.attention
        prefix = f"model.layers.{i}."
        # EinsumDense kernels: q/k/v (heads, hidden, head_dim), output (heads, head_dim, hidden), MLP (in, out).
        for name, layer in (("q_proj", attention.query_dense), ("k_proj", attention.key_dense),
                            ("v_proj", attention.value_dense)):
            kernel = value(layer._kernel)
            weights[prefix + f"self_attn.{name}.weight"] = kernel.transpose(0, 2, 1).reshape(-1, hidden)
        weights[prefix + "self_attn.o_proj.weight"] = value(attention.output_dense._kernel).reshape(-1, hidden).T
        for name, layer in (("gate_proj", block.gating_ffw), ("up_proj", block.gating_ffw_2),
                            ("down_proj", block.ffw_linear)):
            weights[prefix + f"mlp.{name}.weight"] = value(layer._kernel).T
        weights[prefix + "input_layernorm.weight"] = value(block.pre_attention_norm.scale)
        if family == "gemma":
            weights[prefix + "post_attention_layernorm.weight"] = value(block.pre_ffw_norm.scale)
        else:
            weights[prefix + "post_attention_layernorm.weight"] = value(block.post_attention_norm.scale)
            weights[prefix + "pre_feedforward_layernorm.weight"] = value(block.pre_ffw_norm.scale)
            weights[prefix + "post_feedforward_layernorm.weight"] = value(block.post_ffw_norm.scale)
        if family == "gemma3":
            weights[prefix + "self_attn.q_norm.weight"] = value(attention.query_norm.scale)
            weights[prefix + "self_attn.k_norm.weight"] = value(attention.key_norm.scale)
    return weights


def write_tokenizer(tokenizer, folder: Path) -> None:
    """tokenizer.model (the SentencePiece proto itself) plus transformers' tokenizer files."""
    proto = tokenizer.proto
    (folder / "tokenizer.model").write_bytes(proto if isinstance(proto, bytes) else Path(proto).read_bytes())
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    vocabulary = set(tokenizer.get_vocabulary())
    extra = [t for f in families.FAMILIES.values() for t in (f.start_of_turn, f.end_of_turn) if t in vocabulary]
    extra = list(dict.fromkeys(extra))
    config = {"tokenizer_class": "GemmaTokenizer", **specials, "add_bos_token": True, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "additional_special_tokens": extra,
              "model_max_length": 1_000_000}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps({**specials, "additional_special_tokens": extra},
                                                               indent=2) + "\n")


def write(backbone, tokenizer, family: str, folder: str | os.PathLike) -> None:
    """config.json, model.safetensors, generation_config.json and tokenizer files into `folder`."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config(backbone, family, tokenizer), indent=2) + "\n")
    # safetensors writes an array's memory as it lies: transposed views must be made contiguous first.
    weights = {name: np.ascontiguousarray(array) for name, array in hf_weights(backbone, family).items()}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    from kft.generation.sampling import stop_token_ids

    stops = list(stop_token_ids(tokenizer))
    generation = {"bos_token_id": tokenizer.start_token_id, "eos_token_id": stops,
                  "pad_token_id": tokenizer.pad_token_id}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    write_tokenizer(tokenizer, folder)
