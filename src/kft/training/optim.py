"""AdamW with warmup + constant/linear/cosine decay, clipping and gradient accumulation; with LoRA+
(Hayou et al. 2024) the B factors' learning rate is `ratio` times the others'."""

from __future__ import annotations

import math


def make_schedule(peak: float, total_steps: int, warmup_steps: int, kind: str):
    """A Keras LearningRateSchedule over `total_steps` counted in the optimizer's own iterations."""
    import keras
    from keras import ops

    class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = ops.cast(step, "float32")
            warm = ops.minimum((step + 1.0) / max(warmup_steps, 1), 1.0) if warmup_steps else 1.0
            progress = ops.clip(
                (step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0
            )
            if kind == "linear":
                decay = 1.0 - progress
            elif kind == "cosine":
                decay = 0.5 * (1.0 + ops.cos(math.pi * progress))
            else:
                decay = 1.0
            return peak * warm * decay

        def get_config(self):
            return {
                "peak": peak,
                "total_steps": total_steps,
                "warmup_steps": warmup_steps,
                "kind": kind,
            }

    return WarmupDecay()


def is_lora_b(variable) -> bool:
    return variable.path.endswith("lora_kernel_b")


def lora_plus_adamw(ratio: float):
    """AdamW whose LoRA B factors step with learning rate x `ratio`: the rate itself, in the update
    and in the decoupled weight decay, as LoRA+'s parameter groups do (scaling B's gradient
    instead would be undone by Adam's normalisation)."""
    import keras
    from keras import ops

    class LoraPlusAdamW(keras.optimizers.AdamW):
        def update_step(self, gradient, variable, learning_rate):
            if is_lora_b(variable):
                learning_rate = learning_rate * ratio
            return super().update_step(gradient, variable, learning_rate)

        def _apply_weight_decay(self, variables):
            if self.weight_decay is None:
                return
            for variable in variables:
                if self._use_weight_decay(variable):
                    lr = ops.cast(self.learning_rate, variable.dtype)
                    if is_lora_b(variable):
                        lr = lr * ratio
                    wd = ops.cast(self.weight_decay, variable.dtype)
                    variable.assign(variable - variable * wd * lr)

    return LoraPlusAdamW


def make_optimizer(train_config, optimizer_steps: int, plus_ratio: float | None = None):
    """(AdamW, its schedule) as in the Keras Gemma LoRA tutorial (decay excluded from bias and
    scale); with `plus_ratio`, LoRA+'s AdamW."""
    import keras

    accum = train_config.grad_accum
    # Keras evaluates the schedule on micro-steps when accumulating gradients.
    schedule = make_schedule(
        train_config.lr,
        optimizer_steps * accum,
        train_config.warmup_steps * accum,
        train_config.schedule,
    )
    adamw = lora_plus_adamw(plus_ratio) if plus_ratio else keras.optimizers.AdamW
    optimizer = adamw(
        learning_rate=schedule,
        weight_decay=train_config.weight_decay,
        global_clipnorm=train_config.clip_norm,
        gradient_accumulation_steps=accum if accum > 1 else None,
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "scale"])
    return optimizer, schedule
