"""The LoRA adapter in PEFT's format, exact, for the transformers export of the base model.

Keras' EinsumDense LoRA on q/k/v is per head: A is (heads, hidden, r) and B is (r, head_dim),
so the update to HF's (heads*head_dim, hidden) q_proj weight has rank up to heads*r. PEFT's
plain `B @ A` can express it exactly with rank heads*r: A stacks the per-head factors and B is
block-diagonal. `rank_pattern`/`alpha_pattern` give q/k/v that rank and alpha = rank * (alpha/r),
so PEFT's scaling alpha/rank equals Keras' alpha/r. The output and MLP projections contract over
a flat axis and keep rank r.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from kft import families


def _factors(per_head: bool, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PEFT (lora_A (R, in), lora_B (out, R)) equal to Keras' A, B for one layer."""
    if per_head:  # a: (heads, hidden, r), b: (r, head_dim)
        heads, hidden, r = a.shape
        head_dim = b.shape[1]
        lora_a = a.transpose(0, 2, 1).reshape(heads * r, hidden)
        lora_b = np.zeros((heads * head_dim, heads * r), dtype=a.dtype)
        for n in range(heads):
            lora_b[n * head_dim : (n + 1) * head_dim, n * r : (n + 1) * r] = b.T
        return lora_a, lora_b
    # The attention output's a: (heads, head_dim, r), b: (r, hidden); the MLP's a: (in, r), b: (r, out).
    return a.reshape(-1, a.shape[-1]).T, b.T


def _patterns(ranks: dict, scale: float, rslora: bool, rank: int) -> tuple[dict, dict]:
    """PEFT rank_pattern/alpha_pattern: one key per projection name, or one per layer where the
    head count differs between layers (Gemma 4 26B-A4B's global layers have fewer K heads)."""
    rank_pattern = {}
    for hf_name, per_layer in ranks.items():
        if len(set(per_layer.values())) == 1:
            rank_pattern[hf_name] = next(iter(per_layer.values()))
        else:
            rank_pattern.update(per_layer)
    if rslora:  # alpha_R / sqrt(R) = alpha / sqrt(r)
        return rank_pattern, {
            key: scale * rank * math.sqrt(r / rank) for key, r in rank_pattern.items()
        }
    return rank_pattern, {key: r * scale for key, r in rank_pattern.items()}


def factors(backbone):
    """(layer index, HF module path e.g. self_attn.q_proj, lora_A (R, in), lora_B (out, R)) for every
    LoRA-enabled projection of `backbone`: B @ A times alpha / rank is Keras' update, exactly."""
    family = families.get(families.of_backbone(backbone))
    for i, block in enumerate(families.decoder_blocks(backbone)):
        for name, layer in family.block_layers(block).items():
            if not getattr(layer, "lora_enabled", False):
                continue
            a = np.asarray(layer.lora_kernel_a.numpy(), "float32")
            if name in family.per_head:  # heads first, whatever the family's kernel layout
                a = np.moveaxis(a, family.heads_axis, 0)
            lora_a, lora_b = _factors(
                name in family.per_head, a, np.asarray(layer.lora_kernel_b.numpy(), "float32")
            )
            yield i, family.hf_lora_modules[name], lora_a, lora_b


def write(backbone, meta: dict, base_hf_dir: str | None, folder: str | Path) -> None:
    """adapter_config.json + adapter_model.safetensors for `backbone`'s LoRA layers."""
    from safetensors.numpy import save_file

    rank, alpha = meta["rank"], meta["alpha"]
    tensors, ranks, targets = {}, {}, set()
    for i, path, lora_a, lora_b in factors(backbone):
        hf_name = path.rsplit(".", 1)[-1]
        targets.add(hf_name)
        module = f"base_model.model.model.layers.{i}.{path}"
        tensors[f"{module}.lora_A.weight"] = np.ascontiguousarray(lora_a)
        tensors[f"{module}.lora_B.weight"] = np.ascontiguousarray(lora_b)
        if lora_a.shape[0] != rank:  # a per-head projection: rank heads x r
            ranks.setdefault(hf_name, {})[f"model.layers.{i}.{path}"] = lora_a.shape[0]
    rslora = meta.get("rslora", False)
    # PEFT scales a module of rank R by alpha_R / R, or alpha_R / sqrt(R) with use_rslora: a
    # per-head module's alpha_R keeps Keras' scale (alpha / r, or alpha / sqrt(r)).
    ranks, alphas = _patterns(ranks, alpha / rank, rslora, rank)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_hf_dir,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": rslora,
        "target_modules": sorted(targets),
        "rank_pattern": ranks,
        "alpha_pattern": alphas,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
