"""Decoding on a CPU against kernels laid out for few rows (kft.generation.decode_kernels): same values."""

import numpy as np


def test_the_decoder_computes_the_same_logits_against_its_kernels_laid_out_for_decoding(
    tiny_presets,
):
    import keras

    from kft.generation import decode_kernels
    from kft.models import lora
    from kft.quant import frozen_base

    task = frozen_base.load(tiny_presets["gemma3"], "float32")[0]
    backbone = task.backbone
    adapted = lora.enable(backbone, 2, 4.0, ["query", "value"])
    # Keras' own LoRA layer (the merged kernel) beside kft's factorized ones.
    keras_lora = backbone.get_layer("decoder_block_0").ffw_linear
    keras_lora.enable_lora(2, lora_alpha=4.0)
    rng = np.random.default_rng(0)
    for layer in [*adapted, keras_lora]:
        layer.lora_kernel_b.assign(rng.normal(0, 0.1, layer.lora_kernel_b.shape).astype("float32"))
    assert decode_kernels.applies(backbone)
    layers = decode_kernels.float_layers(backbone)
    assert keras_lora in layers and all(layer in layers for layer in adapted)
    assert (
        len(layers) == 7 * backbone.num_layers
    )  # q, k, v, o and three feed-forward kernels per block

    inputs = {
        "token_ids": rng.integers(1, 100, (3, 12)).astype("int32"),
        "padding_mask": np.ones((3, 12), bool),
    }
    expected = keras.ops.convert_to_numpy(backbone(inputs))
    classes = [type(layer) for layer in layers]
    with decode_kernels.stored_transposed(backbone):
        query = backbone.get_layer("decoder_block_1").attention.query_dense
        heads, hidden, head_dim = query._kernel.shape
        assert vars(query)["_kft_kernel_t"].shape == (hidden, heads, head_dim)
        gate = backbone.get_layer("decoder_block_1").gating_ffw
        assert vars(gate)["_kft_kernel_t"].shape == tuple(reversed(gate._kernel.shape))
        got = keras.ops.convert_to_numpy(backbone(inputs))
    assert [type(layer) for layer in layers] == classes and not any(
        "_kft_kernel_t" in vars(layer) for layer in layers
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 0.1


def test_copies_made_outside_the_program_are_kept_until_a_kernel_changes(tiny_presets):
    import keras

    from kft.generation import decode_kernels
    from kft.models import lora
    from kft.quant import frozen_base

    task = frozen_base.load(tiny_presets["gemma3"], "float32")[0]
    backbone = task.backbone
    lora.enable(
        backbone, 2, 4.0, ["query", "value"]
    )  # factorized: the frozen kernels are the copies' sources
    kept = decode_kernels.kept_copies(backbone)
    assert kept is not None and decode_kernels.kept_copies(backbone) is kept  # kept, not made again
    layers = decode_kernels.float_layers(backbone)
    gate = backbone.get_layer("decoder_block_1").gating_ffw
    np.testing.assert_array_equal(
        np.asarray(kept[layers.index(gate)]), np.asarray(gate._kernel.value).T
    )

    rng = np.random.default_rng(0)
    inputs = {
        "token_ids": rng.integers(1, 100, (3, 12)).astype("int32"),
        "padding_mask": np.ones((3, 12), bool),
    }
    expected = keras.ops.convert_to_numpy(backbone(inputs))
    with decode_kernels.stored_transposed(backbone, kept):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(backbone(inputs)), expected, rtol=1e-5, atol=1e-5
        )

    gate._kernel.assign(gate._kernel.value * 2)  # a changed kernel: new copies, of its new value
    fresh = decode_kernels.kept_copies(backbone)
    assert fresh is not kept
    np.testing.assert_array_equal(
        np.asarray(fresh[layers.index(gate)]), np.asarray(gate._kernel.value).T
    )
    decode_kernels.release(backbone)
    assert "_kft_kernels_t" not in vars(backbone)

    # Keras' own LoRA layer contracts against its merged kernel, which changes as it trains: no kept copies.
    backbone.get_layer("decoder_block_0").ffw_linear.enable_lora(2, lora_alpha=4.0)
    assert decode_kernels.kept_copies(backbone) is None
