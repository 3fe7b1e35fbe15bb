"""Llama-style backbones (Llama 2/3, Mistral, Qwen 2/2.5, Qwen 3) as transformers checkpoints: one
mapping, the inverse of KerasHub's HF loaders (`convert_llama3.py`, `convert_mistral.py`,
`convert_qwen.py`, `convert_qwen3.py`). KerasHub 0.32 exports Llama 3, Mistral and Qwen but not
Llama 2 or Qwen 3, and its Llama 3 exporter writes a 131072-token context for every 3.1+ model; one
mapping for all five keeps them alike. What a family adds is a `Layout`."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Layout(NamedTuple):
    max_position_embeddings: int
    attention_bias: bool = False  # q/k/v biases (Qwen 2/2.5)
    query_key_norms: bool = False  # q_norm/k_norm per head (Qwen 3)
    sliding_window: str = ""  # the config keys of a sliding window: "mistral" or "qwen"
    tokenizer_class: str = "PreTrainedTokenizerFast"


def head_dim(backbone) -> int:
    return getattr(backbone, "head_dim", None) or backbone.hidden_dim // backbone.num_query_heads


def _tied(backbone) -> bool:
    return bool(getattr(backbone.token_embedding, "tie_weights", True))


def hf_config(layout: Layout, backbone, tokenizer) -> dict:
    """transformers config.json for `backbone`, less `architectures` and `model_type`."""
    config = {
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        "intermediate_size": backbone.intermediate_dim,
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_query_heads,
        "num_key_value_heads": backbone.num_key_value_heads,
        "head_dim": head_dim(backbone),
        "hidden_act": "silu",
        "max_position_embeddings": layout.max_position_embeddings,
        "rms_norm_eps": backbone.layer_norm_epsilon,
        "rope_theta": backbone.rope_max_wavelength,
        "attention_bias": layout.attention_bias,
        "attention_dropout": 0.0,
        "tie_word_embeddings": _tied(backbone),
        "bos_token_id": tokenizer.start_token_id,
        "eos_token_id": tokenizer.end_token_id,
        "torch_dtype": "float32",
    }
    factor = getattr(backbone, "rope_frequency_adjustment_factor", None)
    if factor:  # Llama 3.1+
        config["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": backbone.rope_low_freq_factor,
            "high_freq_factor": backbone.rope_high_freq_factor,
            "original_max_position_embeddings": backbone.rope_pretraining_sequence_length,
        }
    scaling = getattr(backbone, "rope_position_scaling_factor", None) or getattr(
        backbone, "rope_scaling_factor", None
    )
    if scaling and scaling != 1.0:
        config["rope_scaling"] = {"rope_type": "linear", "factor": scaling}
    if layout.sliding_window == "mistral":
        config["sliding_window"] = backbone.sliding_window
    elif layout.sliding_window == "qwen":
        window = getattr(backbone, "sliding_window_size", None)
        use = bool(getattr(backbone, "use_sliding_window_attention", window is not None))
        config.update(use_sliding_window=use and window is not None, sliding_window=window)
    return config


def _flat_in(kernel) -> np.ndarray:  # (hidden, heads, head_dim) -> (heads*head_dim, hidden)
    k = np.asarray(kernel, "float32")
    return k.reshape(k.shape[0], -1).T


def hf_weights(layout: Layout, backbone) -> dict[str, np.ndarray]:
    """{transformers parameter name: float32 array} for a backbone whose LoRA is merged."""

    def value(variable) -> np.ndarray:
        return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable, "float32")

    embedding = backbone.token_embedding
    weights = {"model.embed_tokens.weight": value(embedding.embeddings)}
    if not _tied(backbone):
        weights["lm_head.weight"] = value(embedding.reverse_embeddings).T
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"transformer_layer_{i}")
        a = block._self_attention_layer
        p = f"model.layers.{i}"
        weights[f"{p}.input_layernorm.weight"] = value(block._self_attention_layernorm.scale)
        weights[f"{p}.post_attention_layernorm.weight"] = value(block._feedforward_layernorm.scale)
        for name, layer in (("q", a._query_dense), ("k", a._key_dense), ("v", a._value_dense)):
            weights[f"{p}.self_attn.{name}_proj.weight"] = _flat_in(value(layer.kernel))
            if layout.attention_bias:
                weights[f"{p}.self_attn.{name}_proj.bias"] = value(layer.bias).reshape(-1)
        out = value(a._output_dense.kernel)
        weights[f"{p}.self_attn.o_proj.weight"] = out.reshape(-1, out.shape[-1]).T
        if layout.query_key_norms:
            weights[f"{p}.self_attn.q_norm.weight"] = value(a._query_dense_layer_norm.scale)
            weights[f"{p}.self_attn.k_norm.weight"] = value(a._key_dense_layer_norm.scale)
        weights[f"{p}.mlp.gate_proj.weight"] = value(block._feedforward_gate_dense.kernel).T
        weights[f"{p}.mlp.up_proj.weight"] = value(block._feedforward_intermediate_dense.kernel).T
        weights[f"{p}.mlp.down_proj.weight"] = value(block._feedforward_output_dense.kernel).T
    weights["model.norm.weight"] = value(backbone.get_layer("sequence_output_layernorm").scale)
    return weights


def write_tokenizer(tokenizer, folder: Path, chat_template: str) -> None:
    """A KerasHub byte-level BPE tokenizer (Llama 3, Qwen) as transformers' tokenizer.json: KerasHub's
    Llama 3 builder (any BytePairTokenizer: same split pattern), with every unsplittable token (ChatML's
    markers on Qwen) an added token as in the model's own file; and the chat template kft trained with."""
    import json

    from keras_hub.src.utils.transformers.export.llama3 import build_llama3_tokenizer_json

    document = build_llama3_tokenizer_json(tokenizer)
    vocabulary = document["model"]["vocab"]
    listed = {t["content"] for t in document["added_tokens"]}
    for token in tokenizer.unsplittable_tokens or ():
        if token not in listed and token in vocabulary:
            document["added_tokens"].append(
                {
                    "id": vocabulary[token],
                    "content": token,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
            )
    document["added_tokens"].sort(key=lambda t: t["id"])
    (folder / "tokenizer.json").write_text(json.dumps(document, ensure_ascii=False) + "\n")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokenizer.start_token,
        "eos_token": tokenizer.end_token,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000,
        "chat_template": chat_template,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def hooks(layout: Layout) -> dict:
    return dict(
        hf_config=functools.partial(hf_config, layout),
        hf_weights=functools.partial(hf_weights, layout),
        hf_tokenizer_class=layout.tokenizer_class,
    )


def gguf_rotary_rows(name: str, array, config: dict):
    """llama.cpp's `llama` architecture keeps q/k rows in its own rotary order (convert_hf_to_gguf.py's
    `permute`; transformers' GGUF reader undoes it): heads x (2, head_dim/2) -> heads x (head_dim/2, 2)."""
    if name.endswith("attn_q") or name.endswith("attn_k"):
        heads = config["num_attention_heads" if name.endswith("attn_q") else "num_key_value_heads"]
        shape = array.shape
        return (
            array.reshape(heads, 2, shape[0] // heads // 2, *shape[1:])
            .swapaxes(1, 2)
            .reshape(shape)
        )
    return array


def gguf_metadata(writer, config: dict) -> None:
    """The keys llama.cpp's converter writes for Llama and Qwen beyond the common ones."""
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_freq_base(float(config["rope_theta"]))
    writer.add_rope_dimension_count(config["head_dim"])
