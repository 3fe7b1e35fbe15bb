"""kft.models.layer_classes: every composition of layer behaviours the product uses computes what
the plain Keras layer computes, and the composition does not depend on the order of the calls.

float x {train: lora, decode: lora + transposed (and Keras' own LoRA + transposed)};
int8/int4 x {train and decode: tied; a block reading `.kernel`: dequantized}; the embedding: screened.
Each layer carries non-zero LoRA factors, so a behaviour that dropped the update could not pass.
"""

import numpy as np
import pytest

# (equation, output shape, kernel axes laid out for decoding): a Gemma query and feed-forward projection.
EQUATIONS = {"query": ("btd,ndh->btnh", (None, 2, 8)), "feed_forward": ("btd,df->btf", (None, 32))}
HIDDEN, RANK = 16, 4


@pytest.fixture(scope="module")
def keras():
    from kft.core import backend

    backend.setup()
    import keras

    return keras


def _layer(keras, kind: str, mode: str | None = None, seed: int = 0):
    """A built EinsumDense (quantized as `mode` says) with LoRA whose B factor is not zero."""
    from kft.quant import quantize

    equation, output_shape = EQUATIONS[kind]
    keras.utils.set_random_seed(seed)
    layer = keras.layers.EinsumDense(equation, output_shape=output_shape)
    layer.build((2, 5, HIDDEN))
    if mode:
        layer.quantize(mode, config=quantize.keras_config(mode, int4_block_size=8))
    layer.enable_lora(RANK)
    rng = np.random.default_rng(seed + 1)
    layer.lora_kernel_b.assign(rng.normal(0, 0.5, layer.lora_kernel_b.shape).astype("float32"))
    return layer


def _inputs(seed: int = 2):
    return np.random.default_rng(seed).normal(0, 1, (2, 5, HIDDEN)).astype("float32")


def _pair(keras, kind, mode=None):
    """Two identical layers: the plain Keras one and one to give behaviours to."""
    plain, composed = _layer(keras, kind, mode), _layer(keras, kind, mode)
    for a, b in zip(plain.weights, composed.weights):
        b.assign(a.value)
    return plain, composed


def _transposed_copy(layer, kernel):
    from keras import ops

    from kft.generation import decode_kernels

    order = [
        layer.equation.split("->")[0].split(",")[1].index(a)
        for a in decode_kernels.DECODE_ORDER[layer.equation]
    ]
    return ops.transpose(ops.convert_to_tensor(kernel), order)


@pytest.mark.parametrize("kind", sorted(EQUATIONS))
def test_float_lora_for_training_and_decoding_equals_keras_own(keras, kind):
    from kft.models import layer_classes, lora

    plain, composed = _pair(keras, kind)
    x = _inputs()
    expected = np.asarray(plain(x))
    assert lora.factorize(composed) and layer_classes.behaviours(composed) == {"lora"}
    np.testing.assert_allclose(np.asarray(composed(x)), expected, rtol=1e-5, atol=1e-5)
    # Decoding: the factorized layer against its frozen kernel, laid out for few rows, plus LoRA's update.
    vars(composed)["_kft_kernel_t"] = _transposed_copy(composed, composed._kernel)
    with layer_classes.adding([composed], "transposed"):
        assert layer_classes.behaviours(composed) == {"lora", "transposed"}
        np.testing.assert_allclose(np.asarray(composed(x)), expected, rtol=1e-5, atol=1e-5)
    assert layer_classes.behaviours(composed) == {"lora"}
    # Keras' own LoRA layer (not factorized) decodes against its merged kernel.
    vars(plain)["_kft_kernel_t"] = _transposed_copy(plain, plain.kernel)
    with layer_classes.adding([plain], "transposed"):
        np.testing.assert_allclose(np.asarray(plain(x)), expected, rtol=1e-5, atol=1e-5)
    assert type(plain) is keras.layers.EinsumDense


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("kind", sorted(EQUATIONS))
def test_quantized_layers_tied_or_dequantized_equal_keras_own(keras, kind, mode):
    from keras import ops

    from kft.models import layer_classes
    from kft.quant import kernels_where_used

    plain, tied = _pair(keras, kind, mode)
    x = _inputs()
    expected = np.asarray(plain(x))
    assert kernels_where_used.tie(tied) == 1 and layer_classes.behaviours(tied) == {"tied"}
    # int4: Keras' own arithmetic; int8: kft scales before the einsum, Keras after (2e-6 relative).
    tolerance = 0 if mode == "int4" else 5e-6
    for training in (True, False):  # a train step and a decode step call the same way
        np.testing.assert_allclose(
            np.asarray(tied(x, training=training)),
            expected,
            rtol=tolerance,
            atol=tolerance * np.abs(expected).max(),
        )
    _, dequantized = _pair(keras, kind, mode)
    layer_classes.add(dequantized, "dequantized")
    assert kernels_where_used.tie(dequantized) == 0  # a block reads its kernel: it keeps that class
    read = np.asarray(
        ops.einsum(dequantized.equation, x, dequantized.kernel)
    )  # what the block computes
    np.testing.assert_allclose(read, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_the_class_is_the_same_whatever_order_behaviours_come_in(keras):
    from kft.generation import decode_kernels  # noqa: F401  (registers "transposed")
    from kft.models import layer_classes, lora  # noqa: F401  (registers "lora")

    one, other = _pair(keras, "query")
    layer_classes.add(one, "lora")
    layer_classes.add(one, "transposed")
    layer_classes.add(other, "transposed")
    layer_classes.add(other, "lora")
    assert type(one) is type(other)
    assert [c.__name__ for c in type(one).__mro__[:3]] == [
        "EinsumDense"
    ] * 3  # a saved layer names Keras' class
    assert type(one).__module__ == keras.layers.EinsumDense.__module__
    assert layer_classes.keras_class(one) is keras.layers.EinsumDense
    layer_classes.remove(one, "lora")
    layer_classes.remove(one, "transposed")
    assert type(one) is keras.layers.EinsumDense
    with pytest.raises(ValueError, match="no place"):
        layer_classes.register("sideways", lambda cls: cls)


def test_screened_embedding_picks_the_plain_embeddings_argmax(keras):
    import keras_hub

    from kft.generation import screened_argmax
    from kft.models import layer_classes

    keras.utils.set_random_seed(3)
    embedding = keras_hub.layers.ReversibleEmbedding(300, HIDDEN, tie_weights=True)
    embedding.build((2, 1))
    hidden = np.random.default_rng(4).normal(0, 1, (6, 1, HIDDEN)).astype("float32")
    expected = np.asarray(embedding(hidden, reverse=True)).argmax(-1)
    vars(embedding)["_kft_screen"] = screened_argmax.bfloat16_copy(embedding.embeddings.value)
    with layer_classes.adding([embedding], "screened"):
        one_hot = np.asarray(embedding(hidden, reverse=True))
    assert type(embedding) is keras_hub.layers.ReversibleEmbedding
    np.testing.assert_array_equal(one_hot.argmax(-1), expected)
    assert set(np.unique(one_hot)) == {0.0, 1.0}
