"""Decoding on a CPU with the decoder's kernels laid out for few rows.

A decode step multiplies a few rows (one position per prompt) by every kernel of the decoder.
XLA:CPU does that faster when the kernel is stored [outputs, inputs] (60 rows by Gemma 3 270M's
640 x 2048 feed-forward kernel: 1.6 ms against 2.6 ms as Keras stores it, [inputs, outputs], on a
2-core Zen 3), and it copies the query and output projections' [heads, ...] kernels into another
order at every step of the decode loop. While kft's generate program is traced, `stored_transposed`
gives each float EinsumDense of the decoder a copy of its kernel in the order of DECODE_ORDER,
made once before the loop (an optimization barrier keeps XLA from folding the transposes back),
and the layer's einsum contracts against it: same values, summed in another order. On the 270M's
60 held-out prompts x 16 new tokens: op time 22.4 -> 20.5 s, the call ~2% faster.

Making the copies inside the program cost every call ~0.95 s of op time on the 270M, so
`kept_copies` makes them once, outside it, and keeps them on the backbone until a kernel's value
changes; the generate program takes them as an input (60 prompts: median 14.94 -> 14.45 s a call).

Only on the CPU backend, and only while the copies fit in TRANSPOSED_BUDGET: they double the
decoder's float weights while kept (`release` drops them: kft does before training).
"""

from __future__ import annotations

import contextlib
import functools
import math

from kft import families
from kft.models import layer_classes, lora

TRANSPOSED_BUDGET = 2 * 1024**3


def float_layers(backbone) -> list:
    """The decoder's float (not quantized) Keras EinsumDense layers of a Gemma equation (kft's
    LoRA layers included: kft.models.lora)."""
    import keras

    return [
        layer
        for block in families.decoder_blocks(backbone)
        for layer in block._flatten_layers(include_self=False)
        if layer_classes.keras_class(layer) is keras.layers.EinsumDense
        and layer_classes.behaviours(layer) <= {"lora"}
        and layer.quantization_mode is None
        and layer.weights
        and layer.equation in DECODE_ORDER
    ]


def applies(backbone) -> bool:
    import keras

    if keras.backend.backend() != "jax":
        return False
    import jax

    if jax.default_backend() != "cpu":
        return False
    layers = float_layers(backbone)
    return (
        bool(layers)
        and sum(math.prod(layer._kernel.shape) * 4 for layer in layers) <= TRANSPOSED_BUDGET
    )


# The order of its axes each Gemma einsum's kernel is stored in while decoding (Keras': the order
# in the equation). Feed-forward kernels go transposed (outputs first): XLA:CPU multiplies few rows
# faster by them. Attention kernels go in the order XLA would otherwise copy them to at every
# decode step (the contracted axes first, in the order the activations lie in).
DECODE_ORDER = {
    "btd,df->btf": "fd",
    "btf,fd->btd": "df",
    "btd,ndh->btnh": "dnh",
    "bsd,kdh->bskh": "dkh",
    "btnh,nhd->btd": "hnd",
}


def _order(equation: str) -> list[int]:
    kernel = equation.split("->")[0].split(",")[1]
    return [kernel.index(a) for a in DECODE_ORDER[equation]]


def kept_copies(backbone) -> tuple | None:
    """The transposed copies `stored_transposed` takes, made outside any program and kept on
    `backbone` while every source kernel keeps its value (the same array); None where they cannot
    be kept: not `applies`, or a layer with Keras' own LoRA (its merged kernel changes as it trains)."""
    if not applies(backbone):
        return None
    layers = float_layers(backbone)
    if any(layer.lora_enabled and not layer_classes.has(layer, "lora") for layer in layers):
        return None
    sources = tuple(layer._kernel.value for layer in layers)
    kept = vars(backbone).get("_kft_kernels_t")
    if (
        kept is not None
        and len(kept[0]) == len(sources)
        and all(a is b for a, b in zip(kept[0], sources))
    ):
        return kept[1]
    release(backbone)  # the stale copies go before the new ones are made
    made = _transpose_all(tuple((layer.equation, layer.compute_dtype) for layer in layers))(sources)
    vars(backbone)["_kft_kernels_t"] = (sources, made)
    return made


def release(backbone) -> None:
    """Drop the copies `kept_copies` keeps on `backbone`."""
    vars(backbone).pop("_kft_kernels_t", None)


@functools.cache
def _transpose_all(specs: tuple):
    import jax

    def transpose(sources):
        return tuple(
            jax.numpy.transpose(source.astype(dtype), _order(equation))
            for source, (equation, dtype) in zip(sources, specs)
        )

    return jax.jit(transpose)


@contextlib.contextmanager
def stored_transposed(backbone, kernels: tuple | None = None):
    """While inside (tracing a jitted program), the decoder's float EinsumDense layers contract
    their inputs against transposed copies of their kernels: `kernels` (`kept_copies`, an input
    of the program) or, without them, copies made once where this is entered."""
    import jax
    from keras import ops

    layers = float_layers(backbone)
    if kernels is None:
        # A LoRA layer kft did not factorize (kft.models.lora) contracts against its merged kernel.
        kernels = [
            ops.transpose(
                ops.cast(
                    layer._kernel if layer_classes.has(layer, "lora") else layer.kernel,
                    layer.compute_dtype,
                ),
                _order(layer.equation),
            )
            for layer in layers
        ]
        kernels = jax.lax.optimization_barrier(tuple(kernels))
    for layer, kernel_t in zip(layers, kernels):
        vars(layer)["_kft_kernel_t"] = kernel_t
    try:
        with layer_classes.adding(layers, "transposed"):
            yield
    finally:
        for layer in layers:
            vars(layer).pop("_kft_kernel_t", None)


def _transposed_class(cls):
    from keras import ops

    def call(self, inputs, training=None):
        operands, output = self.equation.split("->")
        x = ops.einsum(
            f"{operands.split(',')[0]},{DECODE_ORDER[self.equation]}->{output}",
            inputs,
            self._kft_kernel_t,
        )
        # A factorized LoRA layer adds its update; Keras' own has it merged into the copied kernel.
        return lora.finish(
            self, inputs, x, with_lora=self.lora_enabled and layer_classes.has(cls, "lora")
        )

    return type(cls.__name__, (cls,), {"call": call, "__module__": cls.__module__})


layer_classes.register("transposed", _transposed_class)
