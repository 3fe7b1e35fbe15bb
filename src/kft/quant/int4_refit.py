"""A Keras int4 layer just quantized, given kft's group parameters (`kft.quant.int4_groups`) and,
with its inputs' Hessian, GPTQ's codes (`kft.quant.gptq`) in place of the nearest ones."""

from __future__ import annotations

import numpy as np

from kft.quant import gptq, int4_groups


def refit(layer, float_kernel: np.ndarray, hessian: np.ndarray | None = None) -> None:
    """Give `layer` (a Keras Dense/EinsumDense just quantized to grouped int4 from `float_kernel`)
    least-squares group parameters in place of Keras' full-range ones; with its inputs' `hessian`,
    the codes on that grid are GPTQ's (`kft.quant.gptq`) instead of the nearest ones."""
    from keras import quantizers

    block = layer._int4_block_size
    reduced = list(getattr(layer, "_kernel_reduced_axes", None) or [0])  # Dense: [in, out]
    rows = int(np.prod([float_kernel.shape[a] for a in reduced]))
    flat = np.asarray(float_kernel, np.float32).reshape(rows, -1)  # Keras' flattening: memory order
    if hessian is None:
        codes, scale, zero = int4_groups.fit(flat, block)
    else:
        if (
            reduced == list(range(len(reduced)))
            and rows % gptq.BLOCK == 0
            and gptq.BLOCK % block == 0
        ):
            # Groups run along each output's inputs: GPTQ fits each group's grid when it reaches it.
            codes, scale, zero = gptq.codes_and_grid(flat.T, hessian, block)
            codes = codes.T
        else:  # Keras' memory-order groups straddle outputs (q/k/v): GPTQ's codes on the least-squares grid
            codes, scale, zero = int4_groups.fit(flat, block)
            group = np.arange(rows) // block
            per_weight = [
                np.asarray(a)[group].reshape(float_kernel.shape)
                for a in (scale, zero.astype(np.float32))
            ]
            weights, moved_shape, order = gptq.out_in_view(
                np.asarray(float_kernel, np.float32), reduced
            )
            grid = [gptq.out_in_view(a, reduced)[0] for a in per_weight]
            chosen = gptq.codes_on_grid(weights, *grid, hessian)
            codes = gptq.from_out_in(chosen, moved_shape, order).reshape(rows, -1)
    packed, _, _ = quantizers.pack_int4(codes, axis=-1)
    for variable, value in (
        (layer._kernel, packed),
        (layer.kernel_scale, scale),
        (layer.kernel_zero, zero),
    ):
        if tuple(variable.shape) != tuple(value.shape):
            raise AssertionError(
                f"{layer.path}: Keras' int4 layout changed ({variable.path} {variable.shape})"
            )
        variable.assign(np.asarray(value).astype(variable.dtype))
