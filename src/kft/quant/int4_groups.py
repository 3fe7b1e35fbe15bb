"""Better int4 group parameters for Keras' own int4 layers: clipped ranges, chosen per group.

Keras 3.15 quantizes an int4 kernel in groups of rows with a scale and an integer zero point each,
dequantized as `(code - zero) * scale`, and takes the scale from the group's full range
(`(max - min) / 15`). One large weight in a group then coarsens the step for the other 63 or 127.
Trained weights have such tails: on the real Gemma 3 270M, Keras' groups of 64 raise the loss by
57% before any training (bitsandbytes' NF4 in blocks of 64, what QLoRA uses: 21%).

`kft.quant.int4_refit.refit` keeps Keras' storage, layout and forward pass and only chooses each group's scale and zero
point again: both ends of the range are scaled toward zero by the factor in `SHRINKS` that gives the
least squared error for that group and column (the weights outside are clipped to the end codes).
Deterministic, so a quantized base still rebuilds bit for bit when an adapter reloads.
"""

from __future__ import annotations

import functools

import numpy as np

from kft.core.arithmetic import ceil_div

# Fractions of each group's [min, max] range tried. Adapters record the choice as "least-squares"
# (kft.quant.quantize.INT4_RANGES): changing these changes every int4 base rebuilt on reload, so a new
# choice needs a new name there.
SHRINKS = np.linspace(
    1.0, 0.5, 11
)  # 6 (steps of 0.1) left the real 270M's loss +35% from float, not +21%
LEVELS = (-8, 7)  # Keras' int4 codes


def fit(
    flat: np.ndarray, block: int, levels: tuple[int, int] = LEVELS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes int8 [rows, cols], scale [groups, cols], zero int8 [groups, cols]) for `flat`
    [rows, cols] in groups of `block` rows: Keras' layout, least-squares choice of range; codes in
    `levels` (Keras' int4 by default; other widths serve benchmarks/gradient_bits.py).
    Jitted on the default device (the accelerator while kft quantizes, kft.distribute.placement; on a CPU every
    core): ~2.3 s for a 3584 x 14336 kernel on 2 cores, where Keras' own int4 takes ~1.4 s."""
    codes, scale, zero = _fit_jitted()(
        np.asarray(flat, np.float32), block, tuple(float(s) for s in SHRINKS), tuple(levels)
    )
    return np.asarray(codes), np.asarray(scale), np.asarray(zero)


def fit_groups(flat, block: int, shrinks: tuple, levels: tuple):
    """`fit`'s search in jax.numpy (traceable: GPTQ runs it inside its own jitted loop)."""
    import jax.numpy as jnp

    qmin, qmax = levels
    rows, cols = flat.shape
    groups = ceil_div(rows, block)
    x = (
        jnp.zeros((groups * block, cols), jnp.float32)
        .at[:rows]
        .set(flat)
        .reshape(groups, block, cols)
    )
    valid = (jnp.arange(groups * block) < rows).reshape(groups, block, 1)
    low = jnp.where(valid, x, jnp.inf).min(axis=1, keepdims=True)
    high = jnp.where(valid, x, -jnp.inf).max(axis=1, keepdims=True)
    best = (
        jnp.full((groups, 1, cols), jnp.inf, jnp.float32),
        jnp.zeros((groups, 1, cols), jnp.float32),
        jnp.zeros((groups, 1, cols), jnp.float32),
    )
    for shrink in shrinks:
        scale = ((high - low) * shrink + 1e-7) / (qmax - qmin)
        zero = jnp.clip(jnp.round(-low * shrink / scale) + qmin, qmin, qmax)
        codes = jnp.clip(
            jnp.round(x * (1 / scale)) + zero, qmin, qmax
        )  # a multiply: the search's cost
        err = jnp.sum(jnp.square((codes - zero) * scale - x) * valid, axis=1, keepdims=True)
        better = err < best[0]
        best = tuple(jnp.where(better, new, old) for new, old in zip((err, scale, zero), best))
    _, scale, zero = best
    codes = jnp.clip(jnp.round(x / scale) + zero, qmin, qmax).reshape(groups * block, cols)[:rows]
    small = jnp.int8 if qmax < 128 else jnp.int16
    return codes.astype(small), scale[:, 0], zero[:, 0].astype(small)


@functools.cache
def _fit_jitted():
    import jax

    return jax.jit(fit_groups, static_argnums=(1, 2, 3))
