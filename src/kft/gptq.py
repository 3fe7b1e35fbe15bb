"""GPTQ rounding for kft's int4 base (`model.int4_rounding: gptq`).

kft's default int4 rounds every weight to the nearest code of its group's least-squares grid
(`kft.int4_groups`). GPTQ (Frantar et al., 2022) rounds the input features of a layer one after
another and feeds each rounding error forward into the weights not yet rounded, through the
layer's input Hessian H = X^T X taken over calibration tokens: it minimises the error of the
layer's output on those inputs instead of the error of its weights. On the main job it keeps the
held-out loss before training near the float base's (docs/benchmarks.md).

Keras has GPTQ too, but its GPTQ layers refuse LoRA, and its groups run along each output's input
features, while Keras' int4 layers (which take LoRA) group rows of the kernel flattened in memory
order: a query kernel's [heads, input, head size] groups straddle heads. So kft keeps Keras' int4
layout and kft's least-squares grid (scale and zero point per group, chosen on the float kernel)
and lets GPTQ choose only the codes on that fixed grid.

The calibration tokens go through the float model once, in one batch; a layer is rounded as soon
as it has been called, so one Hessian is held at a time. Layers never called (embeddings, Gemma 4's
feed-forward projections, whose block multiplies by their `.kernel` itself) keep the nearest code.
"""

from __future__ import annotations

import functools

import numpy as np

DAMP = 0.01  # added to H's diagonal, as a fraction of its mean (GPTQ's percdamp)
BLOCK = 128  # input features rounded per lazy update (GPTQ's blocksize)
LEVELS = (-8, 7)  # Keras' int4 codes


def calibration_inputs(split, examples: int) -> dict:
    """The first `examples` rows of a kft data Split, cut to their longest, as backbone inputs."""
    rows = np.arange(min(examples, len(split)))
    inputs = split.inputs(rows)
    length = max(1, int(np.asarray(inputs["padding_mask"]).sum(axis=1).max()))
    return {name: np.asarray(value)[:, :length] for name, value in inputs.items()}


def out_in_view(kernel: np.ndarray, reduced: list) -> tuple[np.ndarray, tuple, list]:
    """(kernel as [outputs, inputs], the transposed shape, the transpose) for an EinsumDense/Dense
    kernel whose `reduced` axes are the ones its input's last axes contract with."""
    kept = [a for a in range(kernel.ndim) if a not in reduced]
    order = kept + list(reduced)
    moved = np.transpose(kernel, order)
    return moved.reshape(-1, int(np.prod([kernel.shape[a] for a in reduced]))), moved.shape, order


def from_out_in(matrix: np.ndarray, moved_shape: tuple, order: list) -> np.ndarray:
    return np.transpose(matrix.reshape(moved_shape), np.argsort(order))


def codes_on_grid(weights: np.ndarray, scale: np.ndarray, zero: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """GPTQ's int4 codes for `weights` [outputs, inputs] on the fixed grid (scale, zero), both
    [outputs, inputs], given the inputs' Hessian [inputs, inputs]."""
    n = weights.shape[1]
    h = np.array(hessian, np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(n)] += DAMP * np.mean(np.diag(h))
    upper = _inverse_cholesky(h)
    pad = -n % BLOCK
    if pad:  # padded inputs: weight 0 on a grid that rounds it exactly, no coupling
        weights, scale, zero = (np.pad(a, ((0, 0), (0, pad)), constant_values=v)
                                for a, v in ((weights, 0.0), (scale, 1.0), (zero, 0.0)))
        upper = np.pad(upper, ((0, pad), (0, pad)))
        upper[np.arange(n, n + pad), np.arange(n, n + pad)] = 1.0
    codes = _gptq_jitted()(*(np.asarray(a, np.float32) for a in (weights, scale, zero, upper)))
    return np.asarray(codes)[:, :n]


def _inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """The upper Cholesky factor of H^-1 (what GPTQ's updates use), in float64 on the host."""
    lower = np.linalg.cholesky(h)
    identity = np.eye(len(h))
    inverse_lower = np.linalg.solve(lower, identity)
    return np.linalg.cholesky(inverse_lower.T @ inverse_lower).T


@functools.cache
def _gptq_jitted():
    import jax
    import jax.numpy as jnp

    def run(weights, scale, zero, upper):
        outputs, n = weights.shape
        qmin, qmax = LEVELS

        def block(b, state):
            weights, codes = state
            start = b * BLOCK
            w = jax.lax.dynamic_slice(weights, (0, start), (outputs, BLOCK))
            s = jax.lax.dynamic_slice(scale, (0, start), (outputs, BLOCK))
            z = jax.lax.dynamic_slice(zero, (0, start), (outputs, BLOCK))
            u = jax.lax.dynamic_slice(upper, (start, start), (BLOCK, BLOCK))

            def column(j, inner):
                w, q, err = inner
                code = jnp.clip(jnp.round(w[:, j] / s[:, j]) + z[:, j], qmin, qmax)
                e = (w[:, j] - (code - z[:, j]) * s[:, j]) / u[j, j]
                later = (jnp.arange(BLOCK) > j).astype(w.dtype)
                w = w - e[:, None] * (u[j] * later)[None, :]
                return w, q.at[:, j].set(code), err.at[:, j].set(e)

            zeros = jnp.zeros((outputs, BLOCK), weights.dtype)
            _, q, err = jax.lax.fori_loop(0, BLOCK, column, (w, zeros, zeros))
            rows = jax.lax.dynamic_slice(upper, (start, 0), (BLOCK, n))
            rows = rows * (jnp.arange(n) >= start + BLOCK).astype(rows.dtype)[None, :]
            weights = weights - err @ rows  # the lazy update of every input feature after this block
            return weights, jax.lax.dynamic_update_slice(codes, q, (0, start))

        _, codes = jax.lax.fori_loop(0, n // BLOCK, block, (weights, jnp.zeros_like(weights)))
        return codes.astype(jnp.int8)

    return jax.jit(run)


class Hessians:
    """Wraps the `call` of `layers` so that each call adds its input's X^T X over the calibration
    tokens (the padding mask's), then hands (layer, H) to `on_called` and forgets it."""

    def __init__(self, layers, padding_mask, on_called):
        self.mask = np.asarray(padding_mask, bool).reshape(-1)
        self.layers = list(layers)
        self.on_called = on_called
        self.called = set()

    def __enter__(self):
        for layer in self.layers:
            layer.call = functools.partial(self._call, layer, layer.call)
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            del layer.call  # the instance attribute: the class's call again

    def _call(self, layer, call, x, *args, **kwargs):
        out = call(x, *args, **kwargs)
        if id(layer) not in self.called:  # a layer called twice keeps its first inputs
            self.called.add(id(layer))
            leading = int(np.prod(np.shape(x)[:2]))
            flat = np.asarray(x, np.float32).reshape(leading, -1)[self.mask]
            self.on_called(layer, (flat.T @ flat) / max(1, len(flat)))
        return out
