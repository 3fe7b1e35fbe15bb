"""A quantized frozen base under LoRA (model.quantize int8/int4) trains like the float one.

Numerics on tiny backbones of every family (gemma3 in the default suite, the others slow), and
one family's full path: train, reload the adapter, export merged into the float base.
"""

import os

import numpy as np
import pytest
from conftest import CONFIGS, run_cli
from quantize_helpers import (
    batch,
    clone,
    cosine,
    count_float_kernels_at_each_quantized_layer,
    loss_and_lora_grads,
    tiny_backbone,
)

from kft import families
from kft.config import INT4_BLOCK_SIZE
from kft.models import layer_classes

FAMILY_PARAMS = [
    pytest.param(f, marks=() if f == "gemma3" else pytest.mark.slow)
    for f in ("gemma", "gemma2", "gemma3", "gemma4")
]


@pytest.mark.parametrize(
    "mode, extra",
    [
        ("float8", []),
        ("gptq", []),
        ("awq", []),
        ("int2", []),
        ("int8", ["--set", "model.precision=mixed_float16"]),
    ],
)
def test_quantization_modes_that_cannot_train_lora_are_refused_in_one_line(mode, extra, capsys):
    code, _, err = run_cli(["train", "--set", f"model.quantize={mode}", *extra], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "model.quantize" in err and mode in err


def _probe(base, mode, lora_source=None):
    """(loss, LoRA-B gradients, LoRA source, quantized-layer bytes) of a copy of `base` quantized as `mode`."""
    from kft.models import lora
    from kft.quant import quantize

    model = clone(base)
    if mode == "naive-int8":  # the documented Keras recipe: everything, activations too
        with (
            quantize._one_garbage_collection()
        ):  # Keras' gc.collect per kernel: seconds of test time
            model.quantize("int8")
    else:
        quantize.apply(model, mode)
    lora.enable(model, 4, 8.0, ["all-linear"])
    if lora_source is not None:  # the same LoRA A in every copy
        for path, variable in lora.lora_variables(model).items():
            variable.assign(lora_source[path])
    loss, grads = loss_and_lora_grads(model, *batch())
    factors = {p: np.asarray(v.numpy()) for p, v in lora.lora_variables(model).items()}
    return loss, grads, factors, _quantized_layer_bytes(model)


def _quantized_layer_bytes(model):
    """{layer path: bytes of its non-LoRA variables}, for the attention and feed-forward projections
    that are quantized (Gemma 4's 8-wide per-layer-input layers are all scale at this size)."""
    from kft.config import LORA_LAYER_NAMES

    sizes = {}
    for layer in model._flatten_layers():
        if getattr(layer, "quantization_mode", None) and layer.name in LORA_LAYER_NAMES:
            sizes[layer.path] = sum(
                int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                for v in layer.weights
                if "lora" not in v.path
            )
    return sizes


@pytest.fixture(scope="module", params=FAMILY_PARAMS)
def probes(request):
    base = tiny_backbone(request.param)
    out = {"none": _probe(base, "none")}
    source = out["none"][2]
    for mode in ("int8", "int4", "naive-int8"):
        out[mode] = _probe(base, mode, source)
    return request.param, out, base


def test_loss_at_init_is_the_float_loss(probes):
    family, out, _ = probes
    float_loss = out["none"][0]
    # The bounds (1e-3 int8, 2e-2 int4), except Gemma 4 with its feed-forward quantized too:
    # measured int8 1.1e-3, int4 1.5e-2 (its per-layer gate and q/k/v norms amplify the rounding).
    int8_bound, int4_bound = (2e-3, 3e-2) if family == "gemma4" else (1e-3, 2e-2)
    assert abs(out["int8"][0] - float_loss) / float_loss < int8_bound
    assert abs(out["int4"][0] - float_loss) / float_loss < int4_bound


def test_lora_gradients_on_a_weight_only_int8_base_point_where_the_float_ones_do(probes):
    family, out, _ = probes
    assert cosine(out["int8"][1], out["none"][1]) >= 0.99


# Measured on these random tiny models (groups of 64, kft's ranges): gemma 0.985, gemma2 0.970, gemma3
# 0.982, gemma4 0.777; bitsandbytes' NF4 in blocks of 64 would give 0.970 / 0.947 / 0.957 / 0.820. The
# weights are uniform random, for which no 4-bit code does much better; Gemma 4's per-layer gate and
# q/k/v norms amplify the noise (its cosine swings 0.65-0.78 across group sizes). The 0.99
# takes 5 bits on Gemma 1-3 and 8 on Gemma 4 (benchmarks/gradient_bits.py, docs/performance.md).
INT4_COSINE = {"gemma": 0.95, "gemma2": 0.95, "gemma3": 0.95, "gemma4": 0.65}


def test_lora_gradients_on_an_int4_base_stay_close_to_the_float_ones(probes):
    family, out, _ = probes
    assert cosine(out["int4"][1], out["none"][1]) >= INT4_COSINE[family]


def test_the_documented_int8_recipe_quantizing_the_embedding_would_kill_lora_gradients(probes):
    # Why kft keeps the tied embedding float and the activations unquantized: the reverse (logits)
    # path of an int8 ReversibleEmbedding rounds the hidden states, and LoRA learns from noise.
    family, out, _ = probes
    assert cosine(out["naive-int8"][1], out["none"][1]) < 0.5


def test_quantized_kernels_take_a_fraction_of_their_float32_bytes(probes):
    family, out, base = probes
    for mode, limit in (("int8", 0.30), ("int4", 0.17)):
        quantized = out[mode][3]
        assert quantized, mode
        float_bytes = {}
        for layer in base._flatten_layers():
            if layer.path in quantized:
                float_bytes[layer.path] = sum(int(np.prod(v.shape)) * 4 for v in layer.weights)
        # One 4-bit group per 64-row kernel is the tiny models' worst case for the scales' share.
        ratio = sum(quantized.values()) / sum(float_bytes.values())
        assert ratio <= limit, (mode, ratio)


def test_the_tied_token_embedding_stays_float(probes):
    from kft.quant import quantize

    family, _, base = probes
    model = clone(base)
    quantize.apply(model, "int4")
    assert model.token_embedding.quantization_mode is None
    assert model.token_embedding.embeddings.dtype == "float32"


def test_quantizing_collects_garbage_once_not_once_per_kernel(monkeypatch):
    # Keras' Layer.__delattr__ runs gc.collect() for each kernel it replaces: 78 s of the real 270M's
    # 9 s int8 load (docs/quantization.md). kft collects once, after the last kernel.
    import gc

    from kft.quant import quantize

    calls = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: calls.append(generation) or 0)
    counting = gc.collect
    model = tiny_backbone("gemma3")
    assert quantize.apply(model, "int8") >= 7
    assert len(calls) == 1 and gc.collect is counting  # once, and the function is put back


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantizing_reports_progress_on_stderr_layer_by_layer(mode, capsys):
    # A 9B base's 294 kernels take minutes on a host CPU; stdout stays for results (`kft generate`).
    from kft.quant import quantize

    count = quantize.apply(tiny_backbone("gemma3"), mode)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith(f"kft: quantizing to {mode}: ")]
    assert 2 <= len(lines) <= 5  # about four lines, not one per layer
    assert lines[-1].startswith(f"kft: quantizing to {mode}: {count}/{count} layers (")
    assert "left" in lines[0] and "quantizing" not in out


@pytest.mark.parametrize(
    "family, mode",
    [
        ("gemma3", "int4"),
        pytest.param("gemma", "int8", marks=pytest.mark.slow),
        pytest.param("gemma2", "int4", marks=pytest.mark.slow),
        pytest.param("gemma4", "int4", marks=pytest.mark.slow),
    ],
)
def test_a_base_quantized_as_it_loads_holds_one_float_kernel_at_a_time_and_equals_quantizing_after(
    tiny_presets, family, mode, monkeypatch, capsys
):
    """kft.quant.quantize_on_load: each decoder layer is quantized as soon as the loader has filled its float
    kernel, so the host never holds the float decoder (a 9B's 37 GB in float32); the codes are the ones
    quantizing the loaded float model gives, bit for bit."""
    from kft.quant import frozen_base, quantize

    path = tiny_presets[family]  # Gemma 4's is built on first use: before counting starts
    original = quantize.quantize_layer
    float_kernels = count_float_kernels_at_each_quantized_layer(monkeypatch)
    options = {"int4_rounding": "least-squares"} if mode == "int4" else {}
    task, _, _ = frozen_base.load(path, "float32", mode, **options)
    err = capsys.readouterr().err
    quantized = [
        layer
        for layer in task._flatten_layers()
        if getattr(layer, "quantization_mode", None) == mode
    ]
    assert f"kft: quantizing to {mode} as it loads: {len(quantized)}/{len(quantized)} layers" in err
    assert len(float_kernels) == len(quantized) and max(float_kernels) == 1, float_kernels

    monkeypatch.setattr(quantize, "quantize_layer", original)
    after, _, _ = frozen_base.load(path, "float32")
    quantize.apply(after, mode, **options)
    streamed = {v.path: np.asarray(v.value) for v in task.backbone.weights}
    reference = {v.path: np.asarray(v.value) for v in after.backbone.weights}
    assert set(streamed) == set(reference) and all(
        np.array_equal(streamed[p], reference[p]) for p in reference
    )


# --- Gemma 4's feed-forward projections, which its decoder block reads via `.kernel` -------------------

FFW = ("gating_ffw", "gating_ffw_2", "ffw_linear")


@pytest.fixture(scope="module")
def gemma4_ffw():
    """{mode: (model, logits, LoRA-B grads)} for a tiny Gemma 4 with the same non-zero LoRA factors
    (the int4 one, LoRA on the feed-forward layers only, is not run: 4-bit noise, and time)."""
    from kft.models import lora
    from kft.quant import quantize

    base = tiny_backbone("gemma4")
    models = {"none": base, "int8": clone(base), "int4": clone(base)}
    data = batch()
    rng = np.random.default_rng(1)
    factors, out = None, {}
    for mode, model in models.items():
        quantize.apply(model, mode)
        lora.enable(
            model,
            4,
            8.0,
            ["all-linear"] if mode != "int4" else ["ffw_gating", "ffw_gating_2", "ffw_linear"],
        )
        if factors is None:  # B non-zero, so the forward pass carries the LoRA delta too
            factors = {
                p: v.numpy()
                if p.endswith("lora_kernel_a")
                else rng.normal(0, 0.02, v.shape).astype("float32")
                for p, v in lora.lora_variables(model).items()
            }
        for path, variable in lora.lora_variables(model).items():
            variable.assign(factors[path])
        if mode == "int4":
            out[mode] = (model, None, None)
        else:
            _, grads, logits = loss_and_lora_grads(model, *data, with_logits=True)
            out[mode] = (model, logits, grads)
    return out


def test_gemma4_feed_forward_projections_read_via_kernel_are_quantized_and_compute_correctly(
    gemma4_ffw,
):
    # KerasHub 0.32's Gemma4TextDecoderBlock multiplies by `gating_ffw.kernel` etc. itself (kft.quant.quantize).
    import keras

    float_model, float_logits, float_grads = gemma4_ffw["none"]
    x = np.random.default_rng(2).normal(size=(2, 5, 64)).astype("float32")
    for mode, byte_ratio in (("int8", 0.30), ("int4", 0.17)):
        model = gemma4_ffw[mode][0]
        blocks = [
            layer
            for layer in model._flatten_layers()
            if type(layer).__name__ == "Gemma4TextDecoderBlock"
        ]
        assert len(blocks) == 2
        quantized_bytes = float_bytes = 0
        for block in blocks:
            for name in FFW:
                layer = getattr(block, name)
                # (a) quantized, stored as integers ...
                assert layer.quantization_mode == mode and "int" in str(layer._kernel.dtype), (
                    mode,
                    layer.path,
                )
                # ... and `.kernel`, what the block multiplies by, gives Keras' own quantized forward, LoRA included.
                h = x if name != "ffw_linear" else np.concatenate([x, x], -1)
                expected = np.asarray(layer(h))
                np.testing.assert_allclose(
                    np.asarray(keras.ops.matmul(h, layer.kernel)),
                    expected,
                    rtol=1e-5,
                    atol=1e-5 * float(np.abs(expected).max()),
                )
                quantized_bytes += sum(
                    int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                    for v in layer.weights
                    if "lora" not in v.path
                )
                float_bytes += (
                    int(
                        np.prod(
                            layer.original_kernel_shape if mode == "int4" else layer._kernel.shape
                        )
                    )
                    * 4
                )
        # (d) a fraction of their float32 bytes (measured: int8 0.26, int4 0.15).
        assert quantized_bytes / float_bytes <= byte_ratio, (mode, quantized_bytes / float_bytes)
    # (b) int8 logits are the float model's up to rounding: max error / max |logit| measured 0.016 (attention
    # alone quantized: 0.014; Gemma 4's per-layer gate and q/k norms amplify the rounding). Unscaled codes: > 1.
    _, logits, grads = gemma4_ffw["int8"]
    error = np.abs(logits - float_logits).max() / np.abs(float_logits).max()
    assert error < 0.03, error
    # (c) LoRA learns through the dequantized kernel as through the float one (measured cosine 0.998).
    assert set(grads) == set(float_grads)
    assert cosine(grads, float_grads) >= 0.99


# --- one family's whole path: train, reload, export ---------------------------------------------------

STEPS = 12


@pytest.fixture(scope="module")
def quantized_runs(tiny_presets, tmp_path_factory):
    """{(family, mode[, precision]): TrainResult}, each short run made on first use."""
    import kft

    class Runs(dict):
        def __missing__(self, key):
            family, mode, precision = (*key, "float32")[:3]
            self[key] = kft.train(
                os.path.join(CONFIGS, "tiny.yaml"),
                **{
                    "model.preset": tiny_presets[family],
                    "model.quantize": mode,
                    "model.precision": precision,
                    "train.epochs": None,
                    "train.max_steps": STEPS,
                    "train.lr": 0.01,
                    "lora.rank": 4,
                    "train.log_every": STEPS,
                    "output.samples": 0,
                    "output.tensorboard": False,
                    "output.dir": str(
                        tmp_path_factory.mktemp("qruns") / f"{family}-{mode}-{precision}"
                    ),
                },
            )
            return self[key]

    return Runs()


# The whole path (train, reload, export) on Gemma 3 and on Gemma 4, whose block reads its feed-forward
# kernels itself (families.KERNEL_READERS).
WHOLE_PATH_FAMILIES = ("gemma3", "gemma4")


@pytest.mark.slow
@pytest.mark.parametrize("family", WHOLE_PATH_FAMILIES)
def test_a_short_run_on_a_quantized_base_learns_as_much_as_on_the_float_base(
    quantized_runs, family
):
    float_run = quantized_runs[family, "none"].metrics
    assert float_run["final_loss"] < 0.9 * float_run["first_loss"]  # it did learn
    for mode, tolerance in (("int8", 0.05), ("int4", 0.10)):
        final = quantized_runs[family, mode].metrics["final_loss"]
        assert abs(final - float_run["final_loss"]) / float_run["final_loss"] <= tolerance, (
            mode,
            final,
        )


@pytest.mark.slow
@pytest.mark.parametrize("family", WHOLE_PATH_FAMILIES)
def test_an_int4_base_under_mixed_bfloat16_trains_and_reloads_to_identical_logits(
    quantized_runs, family
):
    # QLoRA on a TPU: `model.precision: auto` is mixed_bfloat16 there.
    import kft

    float_run = quantized_runs[family, "none"].metrics
    result = quantized_runs[family, "int4", "mixed_bfloat16"]
    assert (
        abs(result.metrics["final_loss"] - float_run["final_loss"]) / float_run["final_loss"]
        <= 0.10
    )
    reloaded = kft.load(result.run_dir)
    assert reloaded.backbone.dtype_policy.name == "mixed_bfloat16"
    np.testing.assert_array_equal(_logits(reloaded), _logits(result.task))


def _logits(task):
    ids = np.array([[2, 300, 301, 302, 303, 304, 305, 306]], dtype="int32")
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)}
    if "position_ids" in task.backbone.input:  # Gemma 4
        inputs["position_ids"] = np.arange(ids.shape[1], dtype="int32")[None]
    return np.asarray(task(inputs))


@pytest.mark.slow  # trains a quantized run (~45 s); the default suite keeps the probes above
@pytest.mark.parametrize("family", WHOLE_PATH_FAMILIES)
def test_the_adapter_records_the_quantization_and_reloads_to_identical_logits(
    quantized_runs, family
):
    import kft
    from kft.models import adapter

    result = quantized_runs[family, "int4"]
    meta = adapter.read_config(result.run_dir)
    assert meta["quantize"] == "int4" and meta["quantize_weights_only"] is True
    assert meta["int4_block_size"] == INT4_BLOCK_SIZE and meta["int4_ranges"] == "least-squares"
    assert meta["int4_rounding"] == "gptq"  # model.int4_rounding auto, on one device
    reloaded = kft.load(result.run_dir)
    assert (
        reloaded.backbone.get_layer("decoder_block_0").attention.query_dense.quantization_mode
        == "int4"
    )
    if (
        family == "gemma4"
    ):  # the feed-forward projections read by the block read dequantized kernels again
        block = reloaded.backbone.get_layer("decoder_block_0")
        assert all(
            layer_classes.has(getattr(block, name), "dequantized")
            for name in families.KERNEL_READERS[type(block).__name__].layers
        )
    np.testing.assert_array_equal(_logits(reloaded), _logits(result.task))


@pytest.mark.slow
@pytest.mark.parametrize("family", WHOLE_PATH_FAMILIES)
def test_export_merges_the_adapter_into_the_float_base_not_into_integer_kernels(
    quantized_runs, tmp_path, family
):
    import keras_hub

    from kft import families
    from kft.export import export
    from kft.generation import loading
    from kft.models import adapter
    from kft.quant import frozen_base

    result = quantized_runs[family, "int4"]
    folder = export(str(result.run_dir), "keras", str(tmp_path / "keras"))
    # The family's own class: KerasHub 0.32's `CausalLM.from_preset` picks Gemma4AssistantCausalLM for Gemma 4.
    merged = getattr(keras_hub.models, families.get(family).causal_lm).from_preset(str(folder))
    assert not any(getattr(layer, "quantization_mode", None) for layer in merged._flatten_layers())
    float_tuned = loading.load_tuned(result.run_dir, quantize="none", precision="float32")
    expected = _logits(float_tuned)
    np.testing.assert_allclose(_logits(merged), expected, rtol=1e-4, atol=1e-4)
    # ... which is the fine-tune (not the bare base), and differs from the quantized model by 4-bit rounding only.
    base = frozen_base.load(adapter.read_config(result.run_dir)["base_preset"], "float32")[0]
    assert np.abs(_logits(base) - expected).max() > 1e-3
    # 4-bit rounding of a random 64-wide model: measured 0.106 (gemma3) and 0.304 (gemma4) of the largest
    # logit with the nearest codes; 0.409 on gemma4 with GPTQ's (the default), which fits the calibration
    # examples, not this probe's arbitrary tokens. A merge into integer kernels would be off by far more.
    assert np.abs(_logits(result.task) - expected).max() / np.abs(expected).max() < {
        "gemma4": 0.5
    }.get(family, 0.25)
