"""kft.quant.int4_groups: least-squares ranges for Keras' int4 groups (unit level; the model level is in
test_quantize.py and benchmarks/quantized_gradients.py)."""

import numpy as np
import pytest


def _trained_like(rows=256, cols=48, seed=0):
    """Gaussian weights with a few large ones, as trained kernels have."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.02, (rows, cols)).astype("float32")
    spots = rng.integers(0, rows * cols, rows * cols // 200)
    w.flat[spots] *= 6
    return w


def test_with_the_full_range_only_it_is_keras_own_quantizer(monkeypatch):
    # Same codes, scales and zero points as Keras' grouped int4: the layout and formula are Keras'.
    from keras import ops
    from keras.quantizers import abs_max_quantize_grouped_with_zero_point

    from kft.quant import int4_groups

    monkeypatch.setattr(int4_groups, "SHRINKS", np.array([1.0]))
    w = _trained_like(rows=200)  # a last group shorter than the block
    codes, scale, zero = int4_groups.fit(w, 64)
    k_codes, k_scale, k_zero = (
        ops.convert_to_numpy(t)
        for t in abs_max_quantize_grouped_with_zero_point(w, block_size=64, to_numpy=True)
    )
    np.testing.assert_array_equal(codes, k_codes)
    np.testing.assert_array_equal(zero, k_zero)
    np.testing.assert_allclose(scale, k_scale, rtol=1e-5)


@pytest.mark.parametrize("block", [32, 128])
def test_a_refitted_dense_layer_computes_with_less_error_through_keras_own_forward(block):
    import keras
    from keras.quantizers import Int4QuantizationConfig

    from kft.quant import int4_refit

    w = _trained_like()
    x = np.random.default_rng(1).normal(size=(8, w.shape[0])).astype("float32")

    def quantized_output(refit: bool):
        layer = keras.layers.Dense(w.shape[1], use_bias=False, dtype="float32")
        layer.build((None, w.shape[0]))
        layer.kernel.assign(w)
        layer.quantize(
            "int4", config=Int4QuantizationConfig(activation_quantizer=None, block_size=block)
        )
        if refit:
            int4_refit.refit(layer, w)
        return np.asarray(layer(x))

    exact = x @ w
    keras_error = np.linalg.norm(quantized_output(False) - exact)
    kft_error = np.linalg.norm(quantized_output(True) - exact)
    # Measured: 0.91x of Keras' full-range error in groups of 32 and of 128.
    assert kft_error < 0.95 * keras_error, (kft_error, keras_error)


def test_adapters_rebuild_the_int4_base_they_were_trained_on():
    import keras
    from keras.quantizers import Int4QuantizationConfig
    from quantize_helpers import clone, tiny_backbone

    from kft.quant import quantize

    assert quantize.rebuild_options(quantize.settings("int4", 32)) == {
        "int4_block_size": 32,
        "int4_ranges": "least-squares",
    }
    # An adapter from before kft chose the ranges: Keras' own int4 in groups of 128, bit for bit.
    old = quantize.rebuild_options({"quantize": "int4", "int4_block_size": 128})
    assert old == {"int4_block_size": 128, "int4_ranges": "full"}
    base = tiny_backbone("gemma3")
    rebuilt, keras_own, refitted = clone(base), clone(base), clone(base)
    quantize.apply(rebuilt, "int4", **old)
    keras_own.quantize(
        "int4",
        config=Int4QuantizationConfig(activation_quantizer=None, block_size=128),
        filters=quantize.decoder_filter(keras_own),
    )
    quantize.apply(refitted, "int4", int4_block_size=128)
    for a, b, c in zip(rebuilt.weights, keras_own.weights, refitted.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    scales = [
        (np.asarray(a), np.asarray(c))
        for a, c in zip(rebuilt.weights, refitted.weights)
        if a.path.endswith("kernel_scale")
    ]
    assert scales and any(not np.array_equal(a, c) for a, c in scales)  # kft's ranges are others
    assert isinstance(rebuilt, keras.Model)


def test_wider_codes_halve_the_error_per_bit_and_stay_in_their_levels():
    # benchmarks/gradient_bits.py rounds kernels to 5-8 bits with the same groups and ranges as int4.
    from kft.quant import int4_groups

    w = _trained_like()
    errors = []
    for bits in (4, 5, 6, 8):
        top = 2 ** (bits - 1)
        codes, scale, zero = int4_groups.fit(w, 64, (-top, top - 1))
        assert codes.min() >= -top and codes.max() <= top - 1
        group = np.arange(w.shape[0]) // 64
        dequantized = (codes.astype("float32") - zero[group]) * scale[group]
        errors.append(np.sqrt(np.mean((dequantized - w) ** 2)))
    assert 1.7 < errors[0] / errors[1] < 2.3 and 1.7 < errors[1] / errors[2] < 2.3, errors
    assert errors[3] < errors[2] / 3
