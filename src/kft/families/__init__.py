"""What differs between Gemma, Gemma 2, Gemma 3 and Gemma 4, in one table.

Every command reads the family from here: detection (a Keras preset's config.json, a Hugging
Face `model_type`, a built backbone), the chat markers, the HF export names, and which layers
LoRA adapts. Adding a family is one `Family` entry plus its tiny preset (tiny.py).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

from kft.core.errors import KftError

# Every attention and feed-forward projection of a decoder block (KerasHub layer names).
ATTENTION = ("query", "key", "value", "attention_output")
MLP = ("ffw_gating", "ffw_gating_2", "ffw_linear")


@dataclass(frozen=True)
class Family:
    name: str
    backbone: str  # KerasHub backbone class name
    causal_lm: str  # its KerasHub causal LM class (named: KerasHub's lookup by backbone is ambiguous for Gemma 4)
    hf_model_types: tuple[str, ...]  # transformers model_type values that load as this family
    hf_architecture: str  # what `--format hf` writes
    hf_model_type: str
    start_of_turn: str  # chat markers, single tokens in the family's vocabulary
    end_of_turn: str
    chat_template: str  # the template `data.template: chat` means for this family
    max_position_embeddings: int
    lora_layers: tuple[str, ...] = ATTENTION + MLP  # names `all-linear` adapts, inside decoder blocks only
    # Sub-layers of a decoder block that stay frozen even when their names match (MoE experts, router).
    frozen_blocks: tuple[str, ...] = ()
    needs_position_ids: bool = False  # backbone input `position_ids` (Gemma 4); kft passes 0..L-1


GEMMA_TURNS = dict(start_of_turn="<start_of_turn>", end_of_turn="<end_of_turn>", chat_template="gemma-chat")

FAMILIES: dict[str, Family] = {
    "gemma": Family("gemma", "GemmaBackbone", "GemmaCausalLM", ("gemma",), "GemmaForCausalLM", "gemma",
                    max_position_embeddings=8192, **GEMMA_TURNS),
    "gemma2": Family("gemma2", "GemmaBackbone", "GemmaCausalLM", ("gemma2",), "Gemma2ForCausalLM", "gemma2",
                     max_position_embeddings=8192, **GEMMA_TURNS),
    "gemma3": Family("gemma3", "Gemma3Backbone", "Gemma3CausalLM", ("gemma3_text", "gemma3"), "Gemma3ForCausalLM", "gemma3_text",
                     max_position_embeddings=32768, **GEMMA_TURNS),
    "gemma4": Family("gemma4", "Gemma4Backbone", "Gemma4CausalLM", ("gemma4_text", "gemma4"), "Gemma4ForCausalLM", "gemma4_text",
                     start_of_turn="<|turn>", end_of_turn="<turn|>", chat_template="gemma4-chat",
                     max_position_embeddings=131072, frozen_blocks=("moe_router", "moe_expert_bank"),
                     needs_position_ids=True),
}
NAMES = tuple(FAMILIES)
HF_MODEL_TYPES = {t: f.name for f in FAMILIES.values() for t in f.hf_model_types}
CHAT_TEMPLATES = {f.chat_template: f for f in FAMILIES.values()}
SUPPORTED = "Gemma, Gemma 2, Gemma 3 and Gemma 4"


def get(name: str) -> Family:
    return FAMILIES[name]


def context_length(family: str, config: dict) -> int:
    """Tokens a model attends over, from its backbone config (KerasHub does not record it) or an HF
    config's max_position_embeddings: the family's base context, which Gemma 3 stretches by its global
    RoPE scaling factor (8 on 4B and larger: 128k); Gemma 4 31B and 26B-A4B (no per-layer embeddings) 256k."""
    if config.get("max_position_embeddings"):
        return int(config["max_position_embeddings"])
    base = FAMILIES[family].max_position_embeddings
    if family == "gemma4" and not config.get("hidden_size_per_layer_input"):
        return 2 * base
    return int(base * (config.get("global_rope_scaling_factor") or 1.0))


def check_seq_len(seq_len: int, context: int) -> None:
    if seq_len > context:
        raise KftError(f"data.seq_len {seq_len} is longer than the model's context of {context} tokens; "
                       f"use --seq-len {min(context, 8192)} or less")


def _gemma_or_gemma2(use_post_ffw_norm) -> str:
    return "gemma2" if use_post_ffw_norm else "gemma"


def of_keras_config(class_name: str, config: dict) -> str | None:
    """The family of a Keras preset's backbone (class name + its config), or None if not Gemma."""
    if class_name == "GemmaBackbone":
        return _gemma_or_gemma2(config.get("use_post_ffw_norm"))
    return next((f.name for f in FAMILIES.values() if f.backbone == class_name), None)


def of_backbone(backbone) -> str:
    name = type(backbone).__name__
    if name == "GemmaBackbone":
        return _gemma_or_gemma2(backbone.use_post_ffw_norm)
    for family in FAMILIES.values():
        if family.backbone == name:
            return family.name
    raise KftError(f"the preset holds a {name}; kft fine-tunes {SUPPORTED} only")


def of_tokenizer(tokenizer) -> str | None:
    """The family a KerasHub tokenizer belongs to where its class tells (Gemma 4's), else None."""
    return "gemma4" if type(tokenizer).__name__ == "Gemma4Tokenizer" else None


def decoder_blocks(backbone) -> list:
    """The text decoder's blocks: the only place LoRA goes (a vision encoder has layers of the same names)."""
    return [backbone.get_layer(f"decoder_block_{i}") for i in range(backbone.num_layers)]


@contextlib.contextmanager
def attention_hooks(backbone, mask=None, positions=None):
    """While inside, every decoder block of `backbone` passes its attention mask (B, queries, keys)
    through `mask(m)`, and (with `positions`) rotates queries and keys at `positions(x, start_index)`
    (B, T) instead of start_index + 0..T-1. KerasHub's blocks take a padding mask only: this is how
    kft gives them packed rows (kft.data.packing) and left-padded prompts (kft.generation.engine)."""
    def masked(original):
        return lambda *args, **kwargs: mask(original(*args, **kwargs))

    def rotated(attention, original):
        if "positions" in inspect.signature(original).parameters:  # Gemma 1/2/4: the layer rotates given positions
            return lambda x, start_index, **_: original(x, start_index, positions=positions(x, start_index))
        return lambda x, start_index: attention.rope_layer(x, positions=positions(x, start_index))  # Gemma 3

    patched = []
    for block in decoder_blocks(backbone):
        if mask is not None:
            vars(block)["_compute_attention_mask"] = masked(block._compute_attention_mask)
            patched.append((block, "_compute_attention_mask"))
        if positions is not None:
            vars(block.attention)["_apply_rope"] = rotated(block.attention, block.attention._apply_rope)
            patched.append((block.attention, "_apply_rope"))
    try:
        yield
    finally:
        for layer, name in patched:
            vars(layer).pop(name, None)


def end_of_turn_markers() -> tuple[str, ...]:
    return tuple(dict.fromkeys(f.end_of_turn for f in FAMILIES.values()))
