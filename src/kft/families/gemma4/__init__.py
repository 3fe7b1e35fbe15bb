"""Gemma 4 (text): per-layer embeddings, shared K/V layers, the MoE block, its own chat turns."""

from kft.families import chat
from kft.families.family import Family, KernelReaders
from kft.families.gemma import LICENSE
from kft.families.gemma.hf import TOKENIZER_CLASS
from kft.families.gemma4 import hf, presets, tiny


def _context_length(base: int, config: dict) -> int:
    # 31B and 26B-A4B (no per-layer embeddings) attend over 256k tokens, E2B/E4B over 128k.
    return base if config.get("hidden_size_per_layer_input") else 2 * base


def _left_out(config: dict) -> list[str]:
    if (
        "model_type" in config
    ):  # Hugging Face: a multimodal `gemma4` folder carries vision/audio configs
        present = {
            "vision encoder": config.get("vision_config") is not None,
            "audio encoder": config.get("audio_config") is not None,
        }
    else:
        inner = config.get("config", {})
        present = {
            "vision encoder": inner.get("vision_encoder") is not None,
            "audio encoder": inner.get("audio_encoder") is not None,
        }
    return [name for name, there in present.items() if there]


def _feed_forward_inputs(block, normed):
    """KerasHub 0.32's Gemma4TextDecoderBlock multiplies by its feed-forward kernels itself: their
    inputs, rebuilt from the pre-feed-forward norm's output as the block computes them:
    gelu(x W_gate) * (x W_up) for the down projection."""
    from keras import activations, ops

    gate, up, down = block.gating_ffw, block.gating_ffw_2, block.ffw_linear
    hidden = activations.gelu(ops.matmul(normed, gate.kernel), approximate=True) * ops.matmul(
        normed, up.kernel
    )
    return {gate: normed, up: normed, down: hidden}


FAMILY = Family(
    "gemma4",
    "Gemma4Backbone",
    "Gemma4CausalLM",
    "Gemma4Tokenizer",
    ("gemma4_text", "gemma4"),
    "Gemma4ForCausalLM",
    "gemma4_text",
    chat=chat.GEMMA4,
    max_position_embeddings=131072,
    context_length=_context_length,
    frozen_blocks=("moe_router", "moe_expert_bank"),
    needs_position_ids=True,
    text_only={"vision_encoder": None, "audio_encoder": None},
    left_out=_left_out,
    kernel_readers={
        "Gemma4TextDecoderBlock": KernelReaders(
            ("gating_ffw", "gating_ffw_2", "ffw_linear"), "pre_ffw_norm", _feed_forward_inputs
        )
    },
    license=LICENSE,
    preset_sizes=presets.SIZES,
    preset_sizes_approximate=True,
    preset_aliases=presets.ALIASES,
    hf_twins=presets.HF_TWINS,
    tiny=tiny.BACKBONES,
    tiny_symbols=tiny.SYMBOLS,
    hf_config=hf.hf_config,
    hf_weights=hf.hf_weights,
    hf_tokenizer_class=TOKENIZER_CLASS,
)
