"""What kft asks of a model family: one `Family` per folder under kft/families/.

Outside kft/families/, code reads these fields and hooks and never names a family or one of its
KerasHub classes (tests/test_architecture.py keeps it so). docs/families.md is the checklist for a
new family folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

# kft's names for a decoder block's projections (KerasHub's layer names in Gemma's blocks): what
# `lora.targets` accepts, what `all-linear` means and what the PEFT export maps to transformers' names.
ATTENTION = ("query", "key", "value", "attention_output")
MLP = ("ffw_gating", "ffw_gating_2", "ffw_linear")
LORA_LAYERS = ATTENTION + MLP


class KernelReaders(NamedTuple):
    """Sub-layers a decoder block does not call but reads the `.kernel` of, multiplying by it itself."""

    layers: tuple[str, ...]  # attributes of the block naming them
    norm: str  # the block's sub-layer whose output they are computed from
    inputs: Callable  # (block, that output) -> {sub-layer: its input}, as the block computes them


def scaled_context(base: int, config: dict) -> int:
    """The family's base context stretched by its global RoPE scaling factor (Gemma 3 4B+: 8, 128k)."""
    return int(base * (config.get("global_rope_scaling_factor") or 1.0))


@dataclass(frozen=True)
class Family:
    name: str
    backbone: str  # KerasHub backbone class name
    causal_lm: str  # its KerasHub causal LM class (named: KerasHub's lookup by backbone is ambiguous for Gemma 4)
    tokenizer: str  # its KerasHub tokenizer class name
    hf_model_types: tuple[str, ...]  # transformers model_type values that load as this family
    hf_architecture: str  # what `--format hf` writes
    hf_model_type: str
    start_of_turn: str  # chat markers, single tokens in the family's vocabulary
    end_of_turn: str
    chat_template: str  # the template `data.template: chat` means for this family
    max_position_embeddings: int
    # Is a Keras backbone config of class `backbone` this family's? (Gemma and Gemma 2 share a class.)
    matches_keras_config: Callable[[dict], bool] = lambda config: True
    # Tokens attended over, from a backbone or HF config when it does not say (None: the base context).
    context_length: Callable[[int, dict], int] = scaled_context
    lora_layers: tuple[str, ...] = LORA_LAYERS  # names `all-linear` adapts, inside decoder blocks only
    # Sub-layers of a decoder block that stay frozen even when their names match (MoE experts, router).
    frozen_blocks: tuple[str, ...] = ()
    needs_position_ids: bool = False  # backbone input `position_ids` (Gemma 4); kft passes 0..L-1
    # The chat template has a system turn of its own; else a system message opens the first user turn.
    system_turn: bool = False
    # Backbone arguments that leave out what text fine-tuning does not need ({} = build it whole), and
    # a reader of a preset's config naming the parts that left out (for one line to the user).
    text_only: dict = field(default_factory=dict)
    left_out: Callable[[dict], list[str]] = lambda config: []
    # {decoder block class name: attributes naming sub-layers whose `.kernel` the block reads itself
    # instead of calling them}: a quantized base keeps a dequantizing `kernel` on those.
    kernel_readers: dict[str, KernelReaders] = field(default_factory=dict)
    license: str = ""  # what a model card of a derivative must say about the weights' terms
