"""Quantized layers whose float kernel exists only while the layer runs, forward and backward.

A Keras int8/int4 EinsumDense dequantizes its kernel from the stored codes and scales alone, so
nothing ties that work to the layer's turn: XLA may schedule every layer's dequantization at the
start of a training step and keep each float kernel until its backward pass. On CPU it does: a
gradient through a made-up 8-layer Gemma 3 held its whole float decoder (0.5 GB) as temporaries,
the float model's weights again, on top of the quantized ones (`benchmarks/quantized_step_memory.py`).
Whether a GPU or TPU compiler does the same is its scheduler's choice; here it cannot.

kft's call makes the kernel depend on the data: in the forward pass on the layer's input, in the
backward pass (a custom VJP whose only residuals are the stored codes and scales) on the incoming
gradient. Each stored tensor gets `0 * one element of that tensor` added, which no compiler may fold
away (0 * inf is NaN), so a float kernel is made right before its one use and freed after it. The
arithmetic is Keras' own weight-only path's (`kft.quant.kernels.dequantized_kernel`), plus LoRA's delta.
"""

from __future__ import annotations

from kft.models import layer_classes
from kft.quant import kernels


def _tie(values, tensor):
    """`values` plus a zero that depends on `tensor` (one element of it)."""
    from keras import ops

    zero = ops.multiply(ops.reshape(tensor, (-1,))[0], 0.0)
    return [ops.add(value, ops.cast(zero, value.dtype)) for value in values]


def _quantized_einsum(layer, inputs, values):
    import jax
    from keras import ops

    def kernel(values, tensor):
        return ops.cast(
            kernels.dequantized_kernel(layer, _tie(values, tensor)), layer.compute_dtype
        )

    @jax.custom_vjp
    def einsum(x, values):
        return ops.einsum(layer.equation, x, kernel(values, x))

    def forward(x, values):
        return einsum(x, values), values

    def backward(values, upstream):
        return ops.einsum(layer._custom_gradient_equation, upstream, kernel(values, upstream)), None

    einsum.defvjp(forward, backward)
    return einsum(inputs, values)


def _call(self, inputs, training=None):
    """Keras' weight-only int8/int4 EinsumDense call, with the kernel made where it is used."""
    from keras import ops

    x = _quantized_einsum(self, inputs, kernels.quantized_values(self))
    if self.lora_enabled:
        lora_x = ops.matmul(
            ops.einsum(self.equation, inputs, self.lora_kernel_a), self.lora_kernel_b
        )
        x = ops.cast(ops.add(x, (self.lora_alpha / self.lora_rank) * lora_x), self.compute_dtype)
    if self.bias is not None:
        x = ops.add(x, self.bias)
    if self.activation is not None:
        x = self.activation(x)
    return x


def _tied_class(cls):
    """`cls` (an EinsumDense class) whose int8 and int4 calls make the kernel where it is used."""
    # Same name and module: serialized, the layer is still a Keras `cls`.
    return type(
        cls.__name__,
        (cls,),
        {
            "_int8_call": _call,
            "_int4_call": _call,
            "__module__": cls.__module__,
            "__doc__": _tied_class.__doc__,
        },
    )


layer_classes.register("tied", _tied_class)


def tie(model) -> int:
    """Give every weight-only int8/int4 EinsumDense of `model` kft's call; return how many. Layers
    whose block reads their `.kernel` instead of calling them (kft.families.KERNEL_READERS) keep
    their class."""
    import keras

    tied = 0
    for layer in model._flatten_layers():
        if (
            getattr(layer, "quantization_mode", None) in ("int8", "int4")
            and isinstance(layer, keras.layers.EinsumDense)
            and getattr(layer, "inputs_quantizer", None) is None
            and not layer_classes.behaviours(layer) & {"tied", "dequantized"}
        ):
            layer_classes.add(layer, "tied")
            tied += 1
    return tied
