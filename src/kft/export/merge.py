"""Folding LoRA into the base kernels, in place.

After `merge_lora`, every adapted layer's stored kernel is `kernel + (alpha/rank) * A @ B` and B is
zero, so any reader of the kernel variable (KerasHub's exporters, our HF writer, `save_to_preset`)
sees the fine-tuned weights. KerasHub 0.32's `export_to_transformers` reads the stored kernel of a
LoRA layer and would silently export the base model; merging first is what makes exports true.
"""

import numpy as np


def merge_lora(backbone) -> int:
    """Merge every LoRA layer of `backbone`; return how many were merged."""
    merged = 0
    for layer in backbone._flatten_layers(include_self=False):
        if getattr(layer, "lora_enabled", False):
            # `layer.kernel` is Keras' merged view; `_kernel` is the stored base variable.
            layer._kernel.assign(layer.kernel)
            layer.lora_kernel_b.assign(np.zeros(layer.lora_kernel_b.shape, dtype="float32"))
            merged += 1
    return merged
