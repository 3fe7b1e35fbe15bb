"""The model families kft fine-tunes, one folder each (kft/families/<name>/), and how a preset, a
backbone or a tokenizer finds its family.

Every command asks a `Family` (kft.families.family) and never names one: detection (a Keras
preset's config.json, a Hugging Face `model_type`, a built backbone), the chat markers, the HF
export, which layers LoRA adapts, what quantization must leave alone. Adding a family is a folder
and one line in `FAMILIES` below; docs/families.md is the checklist.
"""

from __future__ import annotations

import contextlib

from kft.core.errors import KftError
from kft.families import chat, gemma, gemma2, gemma3, gemma4, llama, llama3, mistral, qwen, qwen3
from kft.families.family import ATTENTION, LORA_LAYERS, MLP, Family, KernelReaders

__all__ = ["ATTENTION", "LORA_LAYERS", "MLP", "Family", "KernelReaders", "FAMILIES", "get"]

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        gemma.FAMILY,
        gemma2.FAMILY,
        gemma3.FAMILY,
        gemma4.FAMILY,
        llama.FAMILY,
        llama3.FAMILY,
        mistral.FAMILY,
        qwen.FAMILY,
        qwen3.FAMILY,
    )
}
NAMES = tuple(FAMILIES)
DEFAULT = FAMILIES[NAMES[0]]  # whose turn markers a template names when no model says otherwise
HF_MODEL_TYPES = {t: f.name for f in FAMILIES.values() for t in f.hf_model_types}
CHAT_TEMPLATES = dict(chat.FORMATS)  # {data.template name: its ChatFormat}
# {decoder block class name: the sub-layers it reads the kernels of itself}, over every family.
KERNEL_READERS = {
    block: readers for f in FAMILIES.values() for block, readers in f.kernel_readers.items()
}
SUPPORTED = "Gemma 1-4, Llama 2, Llama 3 (3.1, 3.2, SmolLM2), Mistral, Qwen 2/2.5 and Qwen 3"


def fix_keras_hub() -> None:
    """Every family's fixes to KerasHub (Family.keras_fixes), before a model is built or loaded."""
    for f in FAMILIES.values():
        if f.keras_fixes is not None:
            f.keras_fixes()


def chat_for(family: Family, vocabulary: set) -> chat.ChatFormat:
    """The chat format a tokenizer of `family` with `vocabulary` speaks: the family's own where its
    end marker is a token, else one whose markers both are (SmolLM2: a Llama 3 model speaking ChatML),
    else the family's own."""
    if family.chat.end in vocabulary:
        return family.chat
    spoken = (c for c in CHAT_TEMPLATES.values() if c.start in vocabulary and c.end in vocabulary)
    return next(spoken, family.chat)


def get(name: str) -> Family:
    return FAMILIES[name]


def context_length(family: str, config: dict) -> int:
    """Tokens a model attends over, from its backbone config (KerasHub does not record it) or an HF
    config's max_position_embeddings: else the family's base context as the family stretches it."""
    if config.get("max_position_embeddings"):
        return int(config["max_position_embeddings"])
    f = FAMILIES[family]
    return f.context_length(f.max_position_embeddings, config)


def check_seq_len(seq_len: int, context: int) -> None:
    if seq_len > context:
        raise KftError(
            f"data.seq_len {seq_len} is longer than the model's context of {context} tokens; "
            f"use --seq-len {min(context, 8192)} or less"
        )


def of_keras_config(class_name: str, config: dict) -> str | None:
    """The family of a Keras preset's backbone (class name + its config), or None if kft has none."""
    return next(
        (
            f.name
            for f in FAMILIES.values()
            if f.backbone == class_name and f.matches_keras_config(config)
        ),
        None,
    )


class _Attributes:
    """A built backbone read like its config (KerasHub keeps each config argument as an attribute)."""

    def __init__(self, backbone):
        self.backbone = backbone

    def get(self, key, default=None):
        return getattr(self.backbone, key, default)


def of_backbone(backbone) -> str:
    name = of_keras_config(type(backbone).__name__, _Attributes(backbone))
    if name is None:
        raise KftError(
            f"the preset holds a {type(backbone).__name__}; kft fine-tunes {SUPPORTED} only"
        )
    return name


def of_tokenizer(tokenizer) -> str | None:
    """The first family whose KerasHub tokenizer class `tokenizer` is, else None."""
    return next(
        (f.name for f in FAMILIES.values() if f.tokenizer == type(tokenizer).__name__), None
    )


def of_keras_class(class_name: str) -> Family | None:
    """The first family whose backbone class is `class_name` (what its preset builds), else None."""
    return next((f for f in FAMILIES.values() if f.backbone == class_name), None)


BLOCK_PREFIXES = tuple(dict.fromkeys(f.block_prefix for f in FAMILIES.values()))


def head_dim(backbone) -> int:
    """A built backbone's attention head size (Llama-style configs imply it: hidden / heads)."""
    return getattr(backbone, "head_dim", None) or backbone.hidden_dim // backbone.num_query_heads


def of_built(backbone) -> Family:
    return FAMILIES[of_backbone(backbone)]


def decoder_blocks(backbone) -> list:
    """The text decoder's blocks: the only place LoRA goes (a vision encoder has layers of the same names)."""
    prefix = of_built(backbone).block_prefix
    return [backbone.get_layer(f"{prefix}{i}") for i in range(backbone.num_layers)]


@contextlib.contextmanager
def attention_hooks(backbone, mask=None, positions=None):
    """While inside, every decoder block of `backbone` passes its attention mask (B, queries, keys)
    through `mask(m)`, and (with `positions`) rotates queries and keys at `positions(x, start_index)`
    (B, T) instead of start_index + 0..T-1. KerasHub's blocks take a padding mask only: this is how
    kft gives them packed rows (kft.data.packing) and left-padded prompts (kft.generation.engine).
    Where each family keeps its mask and RoPE is the family's (Family.mask_method, attention, rope)."""
    family = of_built(backbone)

    def masked(original):
        return lambda *args, **kwargs: mask(original(*args, **kwargs))

    patched = []  # (object, attribute, what its instance dict held: None if nothing)

    def patch(layer, name, replacement):
        patched.append((layer, name, vars(layer).get(name)))
        vars(layer)[name] = replacement

    for block in decoder_blocks(backbone):
        if mask is not None:
            patch(block, family.mask_method, masked(getattr(block, family.mask_method)))
        if positions is not None:
            attention = family.attention(block)
            patch(attention, *family.rope(attention, positions))
    try:
        yield
    finally:
        for layer, name, held in reversed(patched):
            if held is None:
                vars(layer).pop(name, None)
            else:
                vars(layer)[name] = held


def end_of_turn_markers() -> tuple[str, ...]:
    return tuple(dict.fromkeys(f.end for f in chat.FORMATS.values()))


def turn_markers() -> tuple[str, ...]:
    """Every family's start and end of turn, once each."""
    return tuple(dict.fromkeys(t for f in chat.FORMATS.values() for t in (f.start, f.end)))
