"""kft.quant.kernels_where_used: a quantized layer's float kernel is made right where it is used."""

import numpy as np
import pytest


def _wide_backbone(mode: str, keras_calls: bool = False, layers: int = 4):
    """A made-up Gemma 3 whose decoder is most of it (4 x hidden 1024, feed-forward 4096), `mode`
    quantized, LoRA r4 on every linear layer; with `keras_calls`, Keras' own int8/int4 calls."""
    import keras
    from keras_hub.models import Gemma3Backbone

    from kft.models import lora
    from kft.quant import quantize

    keras.utils.set_random_seed(0)
    backbone = Gemma3Backbone(
        vocabulary_size=256,
        image_size=None,
        num_layers=layers,
        num_query_heads=8,
        num_key_value_heads=4,
        hidden_dim=1024,
        intermediate_dim=4096,
        head_dim=128,
        dtype="float32",
    )
    if mode != "none":
        quantize.apply(
            backbone, mode, **({"int4_rounding": "least-squares"} if mode == "int4" else {})
        )
    if keras_calls:
        _use_keras_calls(backbone)
    lora.enable(backbone, 4, 8.0, ["all-linear"])
    return backbone


def _use_keras_calls(backbone):
    """kft's tied layers differ from Keras' only in their int8/int4 call methods."""
    from kft.models import layer_classes

    for layer in backbone._flatten_layers():
        layer_classes.remove(layer, "tied")


def _step(backbone, rows: int = 2, length: int = 128):
    """(forward, gradient) as jitted functions of (LoRA values, frozen values), and their arguments."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 256, size=(rows, length)).astype("int32")
    inputs = {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}
    direction = rng.normal(size=(rows, length, 1024)).astype(
        "float32"
    )  # the final norm fixes |hidden|

    def loss(values, frozen):
        hidden, _ = backbone.stateless_call(values, frozen, inputs)
        return jnp.mean(hidden.astype("float32") * direction)

    args = (
        [v.value for v in backbone.trainable_variables],
        [v.value for v in backbone.non_trainable_variables],
    )
    return jax.jit(loss), jax.jit(jax.value_and_grad(loss)), args


def _temporaries(function, args) -> int:
    return function.lower(*args).compile().memory_analysis().temp_size_in_bytes


def _float_decoder_bytes(backbone) -> int:
    shapes = [
        getattr(layer, "original_kernel_shape", layer._kernel.shape)
        for layer in backbone._flatten_layers()
        if getattr(layer, "quantization_mode", None) in ("int8", "int4")
    ]  # int8 keeps the float shape
    return sum(int(np.prod(shape)) * 4 for shape in shapes)


@pytest.mark.parametrize("mode", ["int4", pytest.param("int8", marks=pytest.mark.slow)])
def test_a_quantized_step_does_not_hold_the_float_decoder(mode):
    """With Keras' calls, XLA (CPU) dequantizes every layer's kernel at the start of the step and
    holds them all: a forward pass's temporaries were the whole float decoder, a gradient's 0.19 GB
    above the float model's on this 0.25 GB decoder. With kft's, one kernel at a time."""
    float_forward, float_gradient, float_args = _step(_wide_backbone("none"))
    float_temps = _temporaries(float_gradient, float_args)
    tied = _wide_backbone(mode)
    forward, gradient, args = _step(tied)
    decoder = _float_decoder_bytes(tied)
    assert decoder > 0.2e9
    assert _temporaries(forward, args) < 0.25 * decoder
    assert _temporaries(gradient, args) - float_temps < 0.25 * decoder
    _use_keras_calls(tied)  # the same codes, so the step is traced again with Keras' calls
    keras_forward, _, keras_args = _step(tied)
    assert (
        _temporaries(keras_forward, keras_args) > 0.9 * decoder
    )  # what kft's call avoids (Keras 3.15, XLA CPU)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_kfts_call_computes_what_keras_call_does(mode):
    """Same outputs and LoRA gradients as Keras' int8/int4 calls (LoRA B made non-zero so that both
    factors get gradients); only where the float kernel is made differs."""
    import jax

    results = []
    for keras_calls in (False, True):
        backbone = _wide_backbone(mode, keras_calls=keras_calls, layers=2)
        for variable in backbone.trainable_variables:
            if variable.path.endswith("lora_kernel_b"):
                variable.assign(
                    np.random.default_rng(1).normal(0, 0.02, variable.shape).astype("float32")
                )
        _, gradient, args = _step(backbone, length=32)
        loss, grads = gradient(*args)
        results.append((float(loss), [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)]))
    (tied_loss, tied_grads), (keras_loss, keras_grads) = results
    assert tied_loss == pytest.approx(keras_loss, rel=1e-5)
    scale = max(np.abs(g).max() for g in keras_grads)  # some factors' gradients are rounding noise
    for tied, keras in zip(tied_grads, keras_grads):
        np.testing.assert_allclose(tied, keras, rtol=2e-3, atol=1e-5 * scale)
