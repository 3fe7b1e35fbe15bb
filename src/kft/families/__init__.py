"""The model families kft fine-tunes, one folder each (kft/families/<name>/), and how a preset, a
backbone or a tokenizer finds its family.

Every command asks a `Family` (kft.families.family) and never names one: detection (a Keras
preset's config.json, a Hugging Face `model_type`, a built backbone), the chat markers, the HF
export, which layers LoRA adapts, what quantization must leave alone. Adding a family is a folder
and one line in `FAMILIES` below; docs/families.md is the checklist.
"""

from __future__ import annotations

import contextlib
import inspect

from kft.core.errors import KftError
from kft.families import gemma, gemma2, gemma3, gemma4
from kft.families.family import ATTENTION, LORA_LAYERS, MLP, Family, KernelReaders

__all__ = ["ATTENTION", "LORA_LAYERS", "MLP", "Family", "KernelReaders", "FAMILIES", "get"]

FAMILIES: dict[str, Family] = {
    f.name: f for f in (gemma.FAMILY, gemma2.FAMILY, gemma3.FAMILY, gemma4.FAMILY)
}
NAMES = tuple(FAMILIES)
DEFAULT = FAMILIES[NAMES[0]]  # whose turn markers a template names when no model says otherwise
HF_MODEL_TYPES = {t: f.name for f in FAMILIES.values() for t in f.hf_model_types}
CHAT_TEMPLATES = {f.chat_template: f for f in FAMILIES.values()}
# {decoder block class name: the sub-layers it reads the kernels of itself}, over every family.
KERNEL_READERS = {
    block: readers for f in FAMILIES.values() for block, readers in f.kernel_readers.items()
}
SUPPORTED = "Gemma, Gemma 2, Gemma 3 and Gemma 4"


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
        if (
            "positions" in inspect.signature(original).parameters
        ):  # Gemma 1/2/4: the layer rotates given positions
            return lambda x, start_index, **_: original(
                x, start_index, positions=positions(x, start_index)
            )
        return lambda x, start_index: attention.rope_layer(
            x, positions=positions(x, start_index)
        )  # Gemma 3

    patched = []
    for block in decoder_blocks(backbone):
        if mask is not None:
            vars(block)["_compute_attention_mask"] = masked(block._compute_attention_mask)
            patched.append((block, "_compute_attention_mask"))
        if positions is not None:
            vars(block.attention)["_apply_rope"] = rotated(
                block.attention, block.attention._apply_rope
            )
            patched.append((block.attention, "_apply_rope"))
    try:
        yield
    finally:
        for layer, name in patched:
            vars(layer).pop(name, None)


def end_of_turn_markers() -> tuple[str, ...]:
    return tuple(dict.fromkeys(f.end_of_turn for f in FAMILIES.values()))


def turn_markers() -> tuple[str, ...]:
    """Every family's start and end of turn, once each."""
    return tuple(
        dict.fromkeys(t for f in FAMILIES.values() for t in (f.start_of_turn, f.end_of_turn))
    )
