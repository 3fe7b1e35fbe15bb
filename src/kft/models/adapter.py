"""The LoRA adapter on disk: `adapter.safetensors` + `adapter_config.json`.

Tensors are keyed by Keras variable path (e.g. `decoder_block_0/attention/query/lora_kernel_a`)
and stored in float32. The config names the base preset and the LoRA settings needed to
re-create the same layers on a fresh copy of that base.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kft import families
from kft.core import files
from kft.core.errors import KftError
from kft.core.version import __version__
from kft.models import lora

WEIGHTS, CONFIG = "adapter.safetensors", "adapter_config.json"
ADAPTER_FIX = "copy the adapter folder again from where it was trained, or train it again"


def fingerprint(backbone) -> str:
    """A short digest of the base model's architecture and final-norm values.

    Same-shaped but different bases (say Gemma 3 270M pretrained vs instruction-tuned) differ in
    their norm scales; the precision policy is left out so a bf16 and an fp32 load agree.
    """
    import hashlib

    config = {
        k: v for k, v in backbone.get_config().items() if k not in ("dtype", "name", "trainable")
    }
    scale = np.asarray(
        backbone.get_layer(families.of_built(backbone).final_norm).scale.numpy(), dtype="float32"
    )
    text = json.dumps(config, sort_keys=True, default=str) + repr(np.round(scale[:32], 2).tolist())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save(folder: str | Path, backbone, meta: dict) -> None:
    """Write the adapter of `backbone` and its config (`meta` plus kft's version) into `folder`."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        path: np.asarray(v.numpy(), dtype="float32")
        for path, v in lora.lora_variables(backbone).items()
    }
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "kft-lora"})
    config = {
        **meta,
        "base_fingerprint": fingerprint(backbone),
        "kft_version": __version__,
        "tensors": len(tensors),
    }
    (folder / CONFIG).write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise KftError(
            f"'{folder}' holds no {CONFIG}; point at a kft run folder or an adapter folder"
        )
    config = files.read_json(path, ADAPTER_FIX)
    missing = [
        key for key in ("base_preset", "family", "rank", "alpha", "targets") if key not in config
    ]
    if missing:
        raise files.damaged(
            path, f"lacks {', '.join(missing)} (not written by kft, or damaged)", ADAPTER_FIX
        )
    return config


def apply(folder: str | Path, backbone) -> dict:
    """Enable LoRA on `backbone` as the adapter in `folder` was trained, and load its weights."""

    config = read_config(folder)
    if config.get("base_fingerprint") not in (None, fingerprint(backbone)):
        raise KftError(
            f"the adapter in '{folder}' does not fit this base model: it was trained on {config.get('base_preset')} "
            "and this base differs (architecture or weights); load the base it was trained on"
        )
    lora.enable(
        backbone, config["rank"], config["alpha"], config["targets"], config.get("rslora", False)
    )
    load_weights(folder, backbone, config)
    return config


def load_weights(folder: str | Path, backbone, config: dict) -> None:
    """Assign the adapter in `folder` to `backbone`'s LoRA factors (enabled as it was trained)."""
    tensors = files.read_safetensors(Path(folder) / WEIGHTS, ADAPTER_FIX)
    variables = lora.lora_variables(backbone)
    if set(tensors) != set(variables):
        missing, extra = (
            sorted(set(variables) - set(tensors)),
            sorted(set(tensors) - set(variables)),
        )
        raise KftError(
            f"{Path(folder) / WEIGHTS} does not fit this base model (trained on {config.get('base_preset')}): "
            f"{len(missing)} layer(s) missing, {len(extra)} unknown, e.g. {(missing or extra)[0]}"
        )
    for path, variable in variables.items():
        if tuple(tensors[path].shape) != tuple(variable.shape):
            raise KftError(
                f"{Path(folder) / WEIGHTS} does not fit this base model (trained on {config.get('base_preset')}): "
                f"{path} has shape {tuple(tensors[path].shape)}, the base needs {tuple(variable.shape)}"
            )
    for path, variable in variables.items():
        variable.assign(tensors[path])


def continuing(folder: str | Path, model, lora_config) -> dict | None:
    """model.init_adapter's adapter settings where this run (its ModelConfig and LoraConfig)
    continues training it: on an int8/int4 base integer kernels cannot hold a merge exactly, so the
    base is rebuilt as that adapter records and its LoRA goes on training (the policy at step 0 is
    that run's model). None where it is merged into a float base instead. Refuses what cannot
    start from it, with the fix."""
    config = read_config(folder)
    quantize = model.quantize
    rank, alpha = lora_config.rank, lora_config.alpha
    trained_on = config.get("quantize", "none")
    if trained_on == quantize == "none":
        return None
    if trained_on != quantize:
        fix = (
            "model.quantize: none (its LoRA is merged into the float base)"
            if trained_on == "none"
            else f"model.quantize: {trained_on} (its LoRA goes on training on the same base)"
        )
        raise KftError(
            f"model.init_adapter '{folder}' was trained on {'a float' if trained_on == 'none' else 'an ' + trained_on} "
            f"base and this run asks for model.quantize {quantize}; set {fix}"
        )
    ours = {
        "lora.rank": rank,
        "lora.alpha": lora.alpha_of(rank, alpha),
        "lora.targets": lora.target_names(lora_config.targets),
        "lora.rslora": lora_config.rslora,
    }
    theirs = {
        "lora.rank": config["rank"],
        "lora.alpha": float(config["alpha"]),
        "lora.targets": list(config["targets"]),
        "lora.rslora": config.get("rslora", False),
    }
    if quantize == "int4":  # the base is rebuilt as it was
        ours["model.int4_block_size"] = model.int4_block_size
        theirs["model.int4_block_size"] = int(config.get("int4_block_size", 128))
        theirs["model.int4_rounding"] = config.get("int4_rounding", "least-squares")
        ours["model.int4_rounding"] = (
            theirs["model.int4_rounding"] if model.int4_rounding == "auto" else model.int4_rounding
        )
    differ = [k for k in ours if ours[k] != theirs[k]]
    if differ:
        raise KftError(
            f"on an {quantize} base, model.init_adapter continues the LoRA of '{folder}' on the base it "
            "was trained on, so these must match: set "
            + ", ".join(f"{k}: {theirs[k]}" for k in differ)
            + f" (this run has {', '.join(f'{ours[k]}' for k in differ)})"
        )
    return config


INIT_ADAPTER = "init_adapter"  # a run's copy of the adapter it started from (model.init_adapter)


def merge_start(folder: str | Path, backbone) -> int:
    """Merge the adapter a run (or adapter folder) started from, as its adapter_config.json records
    (model.init_adapter): the run's own copy in FOLDER/init_adapter. Returns the layers merged (0:
    the run started from the base preset)."""
    folder = Path(folder)
    if not read_config(folder).get("init_adapter"):
        return 0
    if not (folder / INIT_ADAPTER / CONFIG).is_file():
        raise KftError(
            f"'{folder}' was trained on top of another run's adapter, and its copy "
            f"({folder / INIT_ADAPTER}) is missing; copy the whole run folder again"
        )
    return merge(folder / INIT_ADAPTER, backbone)


def merge(folder: str | Path, backbone) -> int:
    """Fold the adapter in `folder` into `backbone`'s float kernels (kernel += scale x A @ B), first
    the adapter that one started from, if any; no LoRA layer is enabled. Returns the layers merged."""
    folder = Path(folder)
    config = read_config(folder)
    merged = merge_start(folder, backbone)
    if config.get("base_fingerprint") not in (None, fingerprint(backbone)):
        raise KftError(
            f"the adapter in '{folder}' does not fit this base model: it was trained on "
            f"{config.get('base_preset')}; use a run trained on this model.preset"
        )
    if config.get("quantize", "none") != "none":
        raise KftError(
            f"the adapter in '{folder}' was trained on an {config['quantize']} base; model.init_adapter "
            f"merges into a float base only: set model.quantize: {config['quantize']} to go on "
            "training its LoRA on that base, or start from a run trained on the float model"
        )
    tensors = files.read_safetensors(folder / WEIGHTS, ADAPTER_FIX)
    kernels = {v.path: v for v in backbone.weights}
    s = lora.scale(config["rank"], config["alpha"], config.get("rslora", False))
    for path in sorted(p for p in tensors if p.endswith("/lora_kernel_a")):
        layer = path.removesuffix("/lora_kernel_a")
        kernel = kernels.get(f"{layer}/kernel")
        b = tensors.get(f"{layer}/lora_kernel_b")
        if kernel is None or b is None:
            raise KftError(
                f"{folder / WEIGHTS} does not fit this base model: no kernel for {layer}"
            )
        value = np.asarray(kernel.numpy(), dtype="float32") + s * np.matmul(tensors[path], b)
        kernel.assign(value)  # cast to the kernel's dtype
        merged += 1
    return merged
