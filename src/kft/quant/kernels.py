"""An int8/int4 layer's stored kernel (codes, scales, zero points) and the float kernel it stands for,
dequantized as Keras' own forward pass does it."""

from __future__ import annotations

from kft.models import layer_classes


def quantized_values(layer) -> list:
    """An int8/int4 EinsumDense's stored kernel: its integer codes, scales (and zero points and
    group indices, for int4 in groups), as tensors (inside a stateless call, the call's values)."""
    from keras import ops

    names = ["_kernel", "kernel_scale"]
    if layer.quantization_mode == "int4" and getattr(layer, "_int4_block_size", None) not in (
        None,
        -1,
    ):
        names += ["kernel_zero", "g_idx"]
    return [ops.convert_to_tensor(getattr(layer, name)) for name in names]


def dequantized_kernel(layer, values=None):
    """An int8/int4 EinsumDense's kernel as float32, dequantized as Keras' own forward pass does it
    (`EinsumDense._int8_call`, `_int4_call`, `_get_kernel_with_merged_lora`), from `values`
    (`quantized_values`; the layer's own by default)."""
    from keras import ops, quantizers
    from keras.src.quantizers.quantizers import dequantize_with_sz_map

    codes, scale, *groups = quantized_values(layer) if values is None else values
    if layer.quantization_mode == "int8":
        return ops.divide(ops.cast(codes, "float32"), layer._adjust_scale_for_dequant(scale))
    # int4: codes packed two per byte along the last axis of the [rows, columns] kernel.
    codes = quantizers.unpack_int4(codes, layer._int4_unpacked_column_size, axis=-1)
    if groups:  # groups of rows with zero points
        kernel = dequantize_with_sz_map(codes, scale, groups[0], groups[1], group_axis=0)
    else:  # one scale per column
        kernel = ops.divide(ops.cast(codes, "float32"), scale)
    return ops.reshape(ops.cast(kernel, "float32"), layer.original_kernel_shape)


def _dequantizing_class(cls):
    """`cls` with a `kernel` that is the dequantized float kernel (+ the LoRA delta) once quantized."""
    from keras import ops

    def kernel(self):
        if self.quantization_mode not in ("int8", "int4"):
            return cls.kernel.fget(self)
        value = dequantized_kernel(self)
        if self.lora_enabled:
            value = value + (self.lora_alpha / self.lora_rank) * ops.matmul(
                self.lora_kernel_a, self.lora_kernel_b
            )
        return ops.cast(value, self.compute_dtype)

    # Same name and module: serialized, the layer is still a Keras `cls`.
    return type(
        cls.__name__,
        (cls,),
        {
            "kernel": property(kernel),
            "__module__": cls.__module__,
            "__doc__": _dequantizing_class.__doc__,
        },
    )


layer_classes.register("dequantized", _dequantizing_class)
