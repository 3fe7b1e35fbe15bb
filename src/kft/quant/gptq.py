"""GPTQ rounding for kft's int4 base (`model.int4_rounding: gptq`).

kft's default int4 rounds every weight to the nearest code of its group's least-squares grid
(`kft.quant.int4_groups`). GPTQ (Frantar et al., 2022) rounds the input features of a layer one after
another and feeds each rounding error forward into the weights not yet rounded, through the
layer's input Hessian H = X^T X taken over calibration tokens: it minimises the error of the
layer's output on those inputs instead of the error of its weights. On the main job it brings the
held-out loss before training from +21% of the float base's to +4% (docs/quantization.md).

Keras has GPTQ too, but its GPTQ layers refuse LoRA. So kft writes GPTQ's codes into Keras' int4
layers (which take LoRA), in their layout: a kernel flattened in memory order, in groups of rows.
Where those rows are the input features (every Dense, and EinsumDense kernels whose inputs come
first: attention output, feed-forward), a group's grid (kft's least-squares scale and zero point) is
fitted when GPTQ reaches it, on the weights as the errors fed forward have left them, as GPTQ does. Where
they are not (query/key/value kernels, [heads, input, head size]: a group straddles heads), the grid
is fitted on the float kernel first and GPTQ chooses only the codes on it.

The calibration tokens go through the float model once, each decoder block taking them 8 at a
time on the accelerator (`Hessians`); a block's layers are rounded as soon as the block has run.
Gemma 4's feed-forward projections, whose block multiplies by their `.kernel` itself, get their
inputs rebuilt from the block's pre-feed-forward norm. Layers never called (embeddings) keep the
nearest code.
"""

from __future__ import annotations

import functools

import numpy as np

from kft import families
from kft.distribute import placement
from kft.quant import int4_groups

DAMP = 0.01  # added to H's diagonal, as a fraction of its mean (GPTQ's percdamp)
BLOCK = 128  # input features rounded per lazy update (GPTQ's blocksize)
LEVELS = (-8, 7)  # Keras' int4 codes
CHUNK = 8  # calibration examples per pass through a decoder block
HIGHEST = "highest"  # matmul precision: TPUs otherwise multiply float32 in bfloat16 passes


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


def codes_on_grid(weights, scale, zero, hessian) -> np.ndarray:
    """GPTQ's int4 codes for `weights` [outputs, inputs] on the fixed grid (scale, zero), both
    [outputs, inputs], given the inputs' Hessian [inputs, inputs] (which may be on the accelerator;
    the work runs where the default device is)."""
    import jax.numpy as jnp

    n = weights.shape[1]
    pad = -n % BLOCK  # padded inputs: weight 0 on a grid that rounds it exactly, no coupling
    weights, scale, zero = (
        np.pad(np.asarray(a, np.float32), ((0, 0), (0, pad)), constant_values=v)
        for a, v in ((weights, 0.0), (scale, 1.0), (zero, 0.0))
    )
    codes = _gptq_jitted(pad)(weights, scale, zero, jnp.asarray(hessian, jnp.float32))
    return np.asarray(codes)[:, :n]


def _inverse_cholesky(h):
    """The upper Cholesky factor of H^-1 (what GPTQ's updates use), in float32 as GPTQ's own code
    computes it: H = L L^T, H^-1 = L^-T L^-1 (jax.numpy, traceable)."""
    import jax
    import jax.numpy as jnp

    lower = jnp.linalg.cholesky(h)
    inverse_lower = jax.scipy.linalg.solve_triangular(
        lower, jnp.eye(len(h), dtype=h.dtype), lower=True
    )
    return jnp.linalg.cholesky(jnp.matmul(inverse_lower.T, inverse_lower, precision=HIGHEST)).T


@functools.cache
def _gptq_jitted(pad: int):
    import jax
    import jax.numpy as jnp

    def run(weights, scale, zero, hessian):
        outputs, n = weights.shape
        upper = _inverse_cholesky(_damped(hessian))
        if pad:
            upper = jax.scipy.linalg.block_diag(upper, jnp.eye(pad, dtype=upper.dtype))

        def block(b, state):
            weights, codes = state
            start = b * BLOCK
            w, s, z = (
                jax.lax.dynamic_slice(a, (0, start), (outputs, BLOCK))
                for a in (weights, scale, zero)
            )
            u = jax.lax.dynamic_slice(upper, (start, start), (BLOCK, BLOCK))
            zeros = jnp.zeros((outputs, BLOCK), weights.dtype)
            _, q, err = _round_columns(w, zeros, zeros, u, s, z, 0, BLOCK)
            return _lazy_update(weights, err, upper, start), jax.lax.dynamic_update_slice(
                codes, q, (0, start)
            )

        _, codes = jax.lax.fori_loop(0, n // BLOCK, block, (weights, jnp.zeros_like(weights)))
        return codes.astype(jnp.int8)

    return jax.jit(run)


def codes_and_grid(
    weights: np.ndarray, hessian: np.ndarray, group: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes [outputs, inputs], scale and zero [inputs / group, outputs]) for `weights` whose groups
    run along each output's inputs: each group's grid is fitted when GPTQ reaches it, on the weights
    as the errors fed forward so far have left them (GPTQ's own order)."""
    n = weights.shape[1]
    if n % BLOCK or BLOCK % group:
        raise ValueError(
            f"{n} inputs in groups of {group}: GPTQ's regrouping needs multiples of {BLOCK}"
        )
    import jax.numpy as jnp

    shrinks = tuple(float(x) for x in int4_groups.SHRINKS)
    codes, scale, zero = _gptq_regrouped_jitted(group, shrinks)(
        np.asarray(weights, np.float32), jnp.asarray(hessian, jnp.float32)
    )
    return np.asarray(codes), np.asarray(scale), np.asarray(zero)


def _damped(h):
    """H with GPTQ's damping on its diagonal; inputs that were always zero get a diagonal of 1."""
    import jax.numpy as jnp

    diagonal = jnp.diag(h)
    diagonal = jnp.where(diagonal > 0, diagonal, 1.0)
    return h + jnp.diag(diagonal - jnp.diag(h) + DAMP * jnp.mean(diagonal))


def _round_columns(w, q, err, u, scale, zero, start, stop):
    """GPTQ's inner loop over columns start..stop-1 of a block (jax.numpy)."""
    import jax
    import jax.numpy as jnp

    qmin, qmax = LEVELS

    def column(j, inner):
        w, q, err = inner
        s, z = (scale, zero) if scale.ndim == 1 else (scale[:, j], zero[:, j])
        code = jnp.clip(jnp.round(w[:, j] / s) + z, qmin, qmax)
        e = (w[:, j] - (code - z) * s) / u[j, j]
        later = (jnp.arange(w.shape[1]) > j).astype(w.dtype)
        w = w - e[:, None] * (u[j] * later)[None, :]
        return w, q.at[:, j].set(code), err.at[:, j].set(e)

    return jax.lax.fori_loop(start, stop, column, (w, q, err))


def _lazy_update(weights, err, upper, start):
    """GPTQ's lazy update: the errors fed by a block's columns into every input feature after it."""
    import jax
    import jax.numpy as jnp

    n = weights.shape[1]
    rows = jax.lax.dynamic_slice(upper, (start, 0), (BLOCK, n))
    later = rows * (jnp.arange(n) >= start + BLOCK).astype(rows.dtype)[None, :]
    return weights - jnp.matmul(err, later, precision=HIGHEST)


@functools.cache
def _gptq_regrouped_jitted(group: int, shrinks: tuple):
    import jax
    import jax.numpy as jnp

    def run(weights, hessian):
        outputs, n = weights.shape
        per_block = BLOCK // group

        upper = _inverse_cholesky(_damped(hessian))

        def block(b, state):
            weights, codes, scales, zeros = state
            start = b * BLOCK
            w = jax.lax.dynamic_slice(weights, (0, start), (outputs, BLOCK))
            u = jax.lax.dynamic_slice(upper, (start, start), (BLOCK, BLOCK))
            q = err = jnp.zeros((outputs, BLOCK), weights.dtype)
            for g in range(per_block):
                lo = g * group
                _, scale, zero = int4_groups.fit_groups(
                    w[:, lo : lo + group].T, group, shrinks, LEVELS
                )
                scale, zero = scale[0], zero[0].astype(weights.dtype)
                w, q, err = _round_columns(w, q, err, u, scale, zero, lo, lo + group)
                index = b * per_block + g
                scales = jax.lax.dynamic_update_slice(scales, scale[None], (index, 0))
                zeros = jax.lax.dynamic_update_slice(zeros, zero[None], (index, 0))
            return (
                _lazy_update(weights, err, upper, start),
                jax.lax.dynamic_update_slice(codes, q, (0, start)),
                scales,
                zeros,
            )

        empty = jnp.zeros((n // group, outputs), weights.dtype)
        _, codes, scales, zeros = jax.lax.fori_loop(
            0, n // BLOCK, block, (weights, jnp.zeros_like(weights), empty, empty)
        )
        return codes.astype(jnp.int8), scales, zeros.astype(jnp.int8)

    return jax.jit(run)


class Hessians:
    """While inside, each decoder block of `blocks` runs the calibration batch `CHUNK` examples at a
    time, on the accelerator (kft.distribute.placement), and each of `layers` in it adds its inputs' X^T X over
    the real tokens (the padding mask's). Once a block has seen the whole batch, `on_done(layer, H)`
    is called for each of its layers that ran, and H is dropped: one block's Hessians, and one block's
    inputs and outputs, are held at a time. Everything between the blocks (embeddings, final norm)
    runs where it would have. `before_block(block)`, if given, is called as each block starts."""

    def __init__(
        self, blocks, layers, padding_mask, on_done, chunk: int = CHUNK, before_block=None
    ):
        self.mask = np.asarray(padding_mask, bool)
        self.before_block = before_block  # called with each block before it runs
        self.blocks, self.layers = list(blocks), list(layers)
        self.on_done, self.chunk = on_done, chunk
        self.rows = None  # the current chunk's mask, flattened
        self.sums = {}  # id(layer) -> (layer, sum of X^T X, tokens)
        self.passed = None  # the last block's output
        self.wanted = {id(layer) for layer in self.layers}

    def __enter__(self):
        self.wrapped = []
        for layer in self.layers:
            self._wrap(layer, functools.partial(self._layer_call, layer, layer.call))
        for block in self.blocks:
            self._wrap(block, functools.partial(self._block_call, block, block.call))
            readers = families.KERNEL_READERS.get(type(block).__name__)
            norm = getattr(block, readers.norm, None) if readers else None
            if norm is not None:
                self._wrap(
                    norm, functools.partial(self._read_kernels_inputs, block, readers, norm.call)
                )
        return self

    def __exit__(self, *exc):
        for layer in self.wrapped:
            del layer.call  # the instance attribute: the class's call again

    def _wrap(self, layer, call):
        layer.call = call
        self.wrapped.append(layer)

    def _add(self, layer, x):
        """Add X^T X of `x`'s real tokens to `layer`'s sum."""
        import jax.numpy as jnp

        flat = (
            jnp.reshape(jnp.asarray(x, jnp.float32), (self.rows.shape[0], -1)) * self.rows[:, None]
        )
        total = jnp.matmul(flat.T, flat, precision=HIGHEST)
        _, before, tokens = self.sums.get(id(layer), (layer, 0.0, 0))
        self.sums[id(layer)] = (layer, before + total, tokens + int(self.rows.sum()))

    def _layer_call(self, layer, call, x, *args, **kwargs):
        out = call(x, *args, **kwargs)
        if self.rows is not None:
            self._add(layer, x)
        return out

    def _read_kernels_inputs(self, block, readers, call, x, *args, **kwargs):
        """A block that multiplies by some sub-layers' kernels itself (families.KERNEL_READERS) never
        calls them, so their calls cannot be wrapped: their inputs are rebuilt, as the family says,
        from the output of the sub-layer they are computed from."""
        out = call(x, *args, **kwargs)
        layers = [getattr(block, name) for name in readers.layers]
        if self.rows is None or not all(id(layer) in self.wanted for layer in layers):
            return out
        for layer, inputs in readers.inputs(block, out).items():
            self._add(layer, inputs)
        return out

    def _block_call(self, block, call, x, *args, **kwargs):
        import jax
        import jax.numpy as jnp

        batch = int(np.shape(x)[0])
        if self.before_block is not None:
            self.before_block(block)

        def rows(start):
            return lambda a: (
                a[start : start + self.chunk] if np.ndim(a) and np.shape(a)[0] == batch else a
            )

        outs = []
        with placement.on_accelerator():
            for start in range(0, batch, self.chunk):
                self.rows = jnp.asarray(
                    self.mask[start : start + self.chunk].reshape(-1), jnp.float32
                )
                piece, piece_kwargs = jax.tree_util.tree_map(rows(start), ((x, *args), kwargs))
                outs.append(call(*piece, **piece_kwargs))
            self.rows = None
            out = jax.tree_util.tree_map(lambda *parts: jnp.concatenate(parts, axis=0), *outs)
            for layer in block._flatten_layers():
                if id(layer) in self.sums:
                    layer, total, tokens = self.sums.pop(id(layer))
                    hessian = total / max(1, tokens)
                    del total
                    self.on_done(layer, hessian)
        # Keras' functional forward keeps every block's output to its end: for a 9B on 64 x 512
        # tokens, 20 GB. The previous block's output is read by this block only; free it.
        if x is self.passed:
            x.delete()
        self.passed = out[0] if isinstance(out, (tuple, list)) else out
        return out
