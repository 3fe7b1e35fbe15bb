"""`model.int4_rounding: gptq`: int4 codes chosen by GPTQ on kft's grid, calibrated on training examples."""

import os
import shutil

import numpy as np
import pytest
from conftest import CONFIGS, run_cli
from quantize_helpers import (
    batch,
    clone,
    count_float_kernels_at_each_quantized_layer,
    tiny_backbone,
)


def _grid(weights):
    """kft's least-squares int4 grid for `weights` [outputs, inputs], groups of 64 inputs, per weight."""
    from kft.quant import int4_groups

    codes, scale, zero = int4_groups.fit(weights.T, 64)
    group = np.arange(weights.shape[1]) // 64
    return codes.T, scale[group].T, zero[group].T.astype(np.float32)


def _reference_gptq(weights, scale, zero, hessian, damp=0.01):
    """GPTQ's loop as the paper writes it, one input feature at a time, in float64."""
    weights, n = weights.astype(np.float64), weights.shape[1]
    hessian = hessian + damp * np.mean(np.diag(hessian)) * np.eye(n)
    upper = np.linalg.cholesky(np.linalg.inv(hessian)).T
    codes = np.zeros_like(weights)
    for i in range(n):
        codes[:, i] = np.clip(np.round(weights[:, i] / scale[:, i]) + zero[:, i], -8, 7)
        error = (weights[:, i] - (codes[:, i] - zero[:, i]) * scale[:, i]) / upper[i, i]
        weights[:, i + 1 :] -= np.outer(error, upper[i, i + 1 :])
    return codes


def test_gptq_codes_are_the_papers_and_cut_the_output_error_on_correlated_inputs():
    from kft.quant import gptq

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(48, 200)).astype(
        np.float32
    )  # 200 inputs: not a multiple of gptq.BLOCK
    nearest, scale, zero = _grid(weights)
    inputs = rng.normal(size=(2000, 20)) @ rng.normal(size=(20, 200)) + 0.1 * rng.normal(
        size=(2000, 200)
    )
    hessian = inputs.T @ inputs / len(inputs)

    def output_error(codes):
        return float(np.sum(((weights - (codes - zero) * scale) @ inputs.T) ** 2))

    chosen = gptq.codes_on_grid(weights, scale, zero, hessian)
    assert chosen.dtype == np.int8 and chosen.min() >= -8 and chosen.max() <= 7
    np.testing.assert_array_equal(chosen, _reference_gptq(weights, scale, zero, hessian))
    assert output_error(chosen) < 0.2 * output_error(nearest), (
        output_error(chosen),
        output_error(nearest),
    )
    # Uncorrelated inputs of equal power: no error is worth feeding forward.
    np.testing.assert_array_equal(gptq.codes_on_grid(weights, scale, zero, np.eye(200)), nearest)


def _reference_regrouped_gptq(weights, hessian, group, damp=0.01):
    """The same loop, with each group's least-squares grid fitted when the loop reaches the group."""
    from kft.quant import int4_groups

    weights, n = weights.astype(np.float64), weights.shape[1]
    hessian = hessian + damp * np.mean(np.diag(hessian)) * np.eye(n)
    upper = np.linalg.cholesky(np.linalg.inv(hessian)).T
    codes, scales, zeros = np.zeros_like(weights), [], []
    for i in range(n):
        if i % group == 0:
            _, scale, zero = int4_groups.fit(weights[:, i : i + group].T, group)
            scale, zero = scale[0], zero[0].astype(np.float64)
            scales.append(scale), zeros.append(zero)
        codes[:, i] = np.clip(np.round(weights[:, i] / scale) + zero, -8, 7)
        error = (weights[:, i] - (codes[:, i] - zero) * scale) / upper[i, i]
        weights[:, i + 1 :] -= np.outer(error, upper[i, i + 1 :])
    return codes, np.stack(scales), np.stack(zeros)


def test_gptq_fits_each_groups_grid_when_it_reaches_it_where_groups_run_along_the_inputs():
    from kft.quant import gptq

    rng = np.random.default_rng(1)
    weights = rng.normal(size=(32, 256)).astype(np.float32)
    inputs = rng.normal(size=(3000, 24)) @ rng.normal(size=(24, 256)) + 0.1 * rng.normal(
        size=(3000, 256)
    )
    hessian = inputs.T @ inputs / len(inputs)
    codes, scale, zero = gptq.codes_and_grid(weights, hessian, 64)
    ref_codes, ref_scale, ref_zero = _reference_regrouped_gptq(weights, hessian, 64)
    assert scale.shape == zero.shape == (4, 32) and zero.dtype == np.int8
    # float32 against float64 feedback: a rare tie may round the other way
    assert np.mean(codes != ref_codes) < 0.01
    np.testing.assert_allclose(scale, ref_scale, rtol=1e-3)

    def output_error(codes, scale, zero):
        group = np.arange(256) // 64
        return float(
            np.sum(((weights - (codes - zero.T[:, group]) * scale.T[:, group]) @ inputs.T) ** 2)
        )

    nearest, near_scale, near_zero = _grid(weights)  # the grid on the float weights, nearest codes
    assert output_error(codes, scale, zero) < 0.2 * output_error(
        nearest, near_scale[:, ::64].T, near_zero[:, ::64].T
    )


def _quantized_loss(base, rounding, calibration):
    from quantize_helpers import loss_and_lora_grads

    from kft.models import lora
    from kft.quant import quantize

    model = clone(base)
    quantize.apply(model, "int4", int4_rounding=rounding, calibration=calibration)
    lora.enable(model, 4, 8.0, ["all-linear"])
    return loss_and_lora_grads(model, *batch(seed=0))[0]


# Gemma 3 only: on the tiny random Gemma 4, GPTQ on kft's grid gains next to nothing (loss change from
# float 1.55e-2 -> 1.49e-2; docs/quantization.md), and the 270M main job is a Gemma 3.
def test_a_gptq_base_stays_closer_to_the_float_model_than_the_nearest_codes_on_unseen_tokens(
    family="gemma3",
):
    from quantize_helpers import loss_and_lora_grads

    from kft.models import lora

    base = tiny_backbone(family)
    calibration, _, _ = batch(seed=1, rows=32)  # other tokens than the measured batch's (seed 0)
    if "position_ids" in base.input:  # Gemma 4
        calibration["position_ids"] = np.broadcast_to(np.arange(24, dtype="int32"), (32, 24))
    float_model = clone(base)
    lora.enable(float_model, 4, 8.0, ["all-linear"])
    float_loss = loss_and_lora_grads(float_model, *batch(seed=0))[0]
    nearest = abs(_quantized_loss(base, "least-squares", None) - float_loss)
    gptq = abs(_quantized_loss(base, "gptq", calibration) - float_loss)
    print(f"{family}: loss change from float {nearest:.2e} (nearest codes), {gptq:.2e} (GPTQ)")
    assert gptq < 0.7 * nearest, (gptq, nearest)


def test_gemma4_feed_forward_inputs_are_rebuilt_as_its_block_computes_them(monkeypatch):
    """Gemma 4's block multiplies by its feed-forward kernels itself (no layer call to wrap): the
    Hessians kft rebuilds for them must be those of the left operands the block really uses."""
    import keras

    from kft import families
    from kft.quant import gptq

    base = tiny_backbone("gemma4")
    blocks = base.transformer_layers
    kernels = {
        id(getattr(b, name).kernel): getattr(b, name).path
        for b in blocks
        for name in families.KERNEL_READERS["Gemma4TextDecoderBlock"].layers
    }
    used, matmul = {}, keras.ops.matmul

    def recording(a, b):
        if id(b) in kernels:
            used.setdefault(kernels[id(b)], []).append(
                np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1])
            )
        return matmul(a, b)

    monkeypatch.setattr(keras.ops, "matmul", recording)
    inputs, _, _ = batch(seed=1, rows=6)
    inputs["position_ids"] = np.broadcast_to(np.arange(24, dtype="int32"), (6, 24))
    hessians = {}
    layers = [
        layer for layer in base._flatten_layers() if isinstance(layer, keras.layers.EinsumDense)
    ]
    with gptq.Hessians(
        blocks, layers, inputs["padding_mask"], lambda layer, h: hessians.update({layer.path: h})
    ):
        base(inputs)
    assert set(used) == set(kernels.values()) and set(kernels.values()) <= set(hessians)
    for path, operands in used.items():
        x = np.concatenate(operands)
        np.testing.assert_allclose(
            np.asarray(hessians[path]), x.T @ x / len(x), rtol=1e-4, atol=1e-6
        )


def test_gptq_needs_calibration_and_an_int4_base():
    from kft.core.errors import KftError
    from kft.quant import quantize

    base = tiny_backbone("gemma3")
    with pytest.raises(KftError, match="calibration"):
        quantize.apply(clone(base), "int4", int4_rounding="gptq")
    with pytest.raises(KftError, match="int4"):
        quantize.apply(clone(base), "int8", int4_rounding="gptq", calibration=batch()[0])


@pytest.mark.parametrize(
    "extra, key",
    [
        (["model.quantize=int4", "model.int4_rounding=nearest"], "int4_rounding"),
        (["model.int4_rounding=gptq"], "int4_rounding"),
        (
            ["model.quantize=int4", "model.int4_rounding=gptq", "model.calibration_examples=0"],
            "calibration_examples",
        ),
    ],
)
def test_bad_gptq_settings_are_refused_in_one_line(extra, key, capsys):
    args = ["train"]
    for setting in extra:
        args += ["--set", setting]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1 and key in err, err


def test_an_int4_run_rounds_by_gptq_by_default_saves_its_calibration_and_reloads_to_identical_logits(
    tiny_presets, tmp_path, capsys, monkeypatch
):
    import kft
    from kft import config
    from kft.core.errors import KftError
    from kft.data import dataset
    from kft.models import adapter

    assert config.ModelConfig().int4_rounding == "auto"
    builds, build = [], dataset.build
    monkeypatch.setattr(dataset, "build", lambda *a, **k: builds.append(1) or build(*a, **k))
    result = kft.train(
        os.path.join(CONFIGS, "tiny.yaml"),
        **{
            "model.preset": tiny_presets["gemma3"],
            "model.quantize": "int4",
            "model.calibration_examples": 8,
            "train.epochs": None,
            "train.max_steps": 6,
            "lora.rank": 4,
            "output.samples": 0,
            "output.tensorboard": False,
            "output.dir": str(tmp_path / "run"),
        },
    )
    assert (
        "kft: int4 rounding: gptq, calibrated on the first 8 training examples"
        in capsys.readouterr().out
    )
    assert (
        "int4_rounding: auto" in (result.run_dir / "config.yaml").read_text()
    )  # --resume compares the user's
    assert len(builds) == 1  # the calibration's dataset is the run's (no packing): tokenized once
    meta = adapter.read_config(result.run_dir)
    assert meta["int4_rounding"] == "gptq" and meta["calibration"] == "calibration.npz"
    with np.load(result.run_dir / "calibration.npz") as saved:
        assert saved["token_ids"].shape[0] == 8 and saved["padding_mask"].any()
    ids = np.array([[2, 300, 301, 302, 303, 304, 305, 306]], dtype="int32")
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)}
    np.testing.assert_array_equal(
        np.asarray(kft.load(result.run_dir)(inputs)), np.asarray(result.task(inputs))
    )
    # `kft eval --base` rebuilds the GPTQ base from the adapter's calibration.npz (the config says auto).
    from kft.evaluate.evaluation import evaluate_run
    from kft.quant import frozen_base

    loads, load = [], frozen_base.load
    monkeypatch.setattr(frozen_base, "load", lambda *a, **k: loads.append(k) or load(*a, **k))
    assert evaluate_run(result.run_dir, base=True)["model"] == "base"
    assert (
        loads[0]["int4_rounding"] == "gptq" and loads[0]["calibration"]["token_ids"].shape[0] == 8
    )

    moved = tmp_path / "without-calibration"
    shutil.copytree(result.run_dir, moved)
    (moved / "calibration.npz").unlink()
    with pytest.raises(KftError, match="calibration.npz"):
        kft.load(moved)


# --- GPTQ without reading the float base whole (kft.quant.parking) -----------------------------------------


@pytest.mark.parametrize("family", ["gemma3", pytest.param("gemma4", marks=pytest.mark.slow)])
def test_a_gptq_base_parks_its_float_kernels_on_disk_and_equals_one_read_whole(
    tiny_presets, family, monkeypatch, capsys
):
    """GPTQ rounds a block's layers on the inputs that block sees, so as a preset loads, each decoder
    kernel goes to a file instead of being rounded, and comes back when the calibration pass reaches
    its block: the host holds one block's float kernels at a time, not the float decoder (a 9B's 37 GB
    in float32). The codes are those GPTQ gives on the base read whole, bit for bit; the files go."""
    import keras

    from kft.quant import frozen_base, parking, quantize

    path = tiny_presets[family]
    tokens = np.random.default_rng(1).integers(4, 300, size=(8, 16)).astype("int32")
    calibration = {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}
    if family == "gemma4":
        calibration["position_ids"] = np.broadcast_to(
            np.arange(16, dtype="int32"), tokens.shape
        ).copy()
    original = quantize.quantize_layer
    held = count_float_kernels_at_each_quantized_layer(monkeypatch)

    folders, made = [], parking.Parking.__init__

    def recorded(self, *args, **kwargs):
        made(self, *args, **kwargs)
        folders.append(self)

    monkeypatch.setattr(parking.Parking, "__init__", recorded)
    task, _, _ = frozen_base.load(
        path, "float32", "int4", int4_rounding="gptq", calibration=calibration
    )
    err = capsys.readouterr().err
    blocks, kinds = task.backbone.transformer_layers, (keras.layers.Dense, keras.layers.EinsumDense)
    per_block = max(
        sum(isinstance(layer, kinds) for layer in block._flatten_layers()) for block in blocks
    )
    decoder = sum(isinstance(layer, kinds) for block in blocks for layer in block._flatten_layers())
    assert 0 < max(held) <= per_block < decoder, (held, per_block)
    assert "kft: int4 (GPTQ): parking float kernels on disk as they load: " in err
    quantized = sum(
        getattr(layer, "quantization_mode", None) == "int4" for layer in task._flatten_layers()
    )
    assert (
        f"kft: quantizing to int4 (GPTQ): {quantized}/{quantized} layers" in err
    )  # + Gemma 4's lookup table
    (parked,) = folders
    assert (
        parked.files == decoder
        and parked.written > 0
        and not parked.parked
        and not parked.folder.exists()
    )

    monkeypatch.setattr(quantize, "quantize_layer", original)
    after, _, _ = frozen_base.load(path, "float32")
    quantize.apply(after, "int4", int4_rounding="gptq", calibration=calibration)
    streamed = {v.path: np.asarray(v.value) for v in task.backbone.weights}
    reference = {v.path: np.asarray(v.value) for v in after.backbone.weights}
    assert set(streamed) == set(reference) and all(
        np.array_equal(streamed[p], reference[p]) for p in reference
    )


def test_parked_kernels_come_back_exactly_in_half_the_bytes_when_they_are_bfloat16_numbers(
    monkeypatch,
):
    import keras

    from kft.core.errors import KftError
    from kft.quant import parking

    rng = np.random.default_rng(0)
    exact = rng.normal(size=(64, 32)).astype(np.float32)
    exact = (exact.view(np.uint32) & 0xFFFF0000).view(
        np.float32
    )  # bfloat16 numbers, as Gemma's weights are
    parked = parking.Parking()
    try:
        for values, size in (
            (exact, exact.size * 2),
            (rng.normal(size=(64, 32)).astype(np.float32), exact.size * 4),
        ):
            layer = keras.layers.Dense(32)
            layer.build((None, 64))
            layer.kernel.assign(values)
            written = parked.written
            parked.park(layer)
            assert (
                parked.written - written == size
                and layer._kernel._value is None
                and layer._kernel in parked
            )
            parked.restore(layer)
            np.testing.assert_array_equal(np.asarray(layer.kernel), values)
            assert layer._kernel not in parked and not list(parked.folder.iterdir())
        monkeypatch.setattr(parking, "MARGIN", 1 << 60)  # a full disk: one line, with what to do
        with pytest.raises(
            KftError,
            match="has .* GB free; set TMPDIR to a folder on a larger disk, or use "
            "model.int4_rounding least-squares",
        ):
            parked.park(layer)
    finally:
        parked.close()
    assert not parked.folder.exists()


def test_a_parking_folder_left_by_a_killed_process_is_removed_by_the_next(tmp_path):
    import subprocess
    import sys

    from kft.quant import parking

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    orphan = tmp_path / f"{parking.PREFIX}{int(dead.stdout)}-abc"
    orphan.mkdir()
    (orphan / "0.bin").write_bytes(b"x" * 16)
    live = tmp_path / f"{parking.PREFIX}{os.getpid()}-def"  # this process's: kept
    live.mkdir()
    parked = parking.Parking(str(tmp_path))
    try:
        assert (
            not orphan.exists()
            and live.exists()
            and parked.folder.name.startswith(f"{parking.PREFIX}{os.getpid()}-")
        )
    finally:
        parked.close()


def test_a_disk_too_small_for_the_parked_kernels_stops_the_load_in_one_line(
    tiny_presets, monkeypatch
):
    """Keras' loader catches what a layer's loading raises and loads the layer again; kft's error
    must still reach the user, not turn into a silent whole read."""
    from kft.core.errors import KftError
    from kft.quant import frozen_base, parking

    monkeypatch.setattr(parking, "MARGIN", 1 << 60)
    tokens = np.ones((2, 8), "int32")
    with pytest.raises(KftError, match="set TMPDIR to a folder on a larger disk"):
        frozen_base.load(
            tiny_presets["gemma3"],
            "float32",
            "int4",
            int4_rounding="gptq",
            calibration={"token_ids": tokens, "padding_mask": tokens},
        )


def test_kernels_are_parked_on_disk_even_where_the_temporary_folder_lives_in_memory(
    tmp_path, monkeypatch
):
    """On many Linux machines /tmp is a tmpfs: parking there would take the RAM it is meant to spare."""
    from kft.quant import parking

    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\ntmpfs /tmp/x/data ext4 rw 0 0\n"
    )
    assert parking.in_memory("/tmp/kft-gptq-1-a", str(mounts)) and not parking.in_memory(
        "/home/u", str(mounts)
    )
    assert not parking.in_memory("/tmp/x/data/y", str(mounts))  # the longest mount point decides
    monkeypatch.setenv("KFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(parking, "in_memory", lambda path: True)
    parked = parking.Parking()
    try:
        assert parked.folder.parent == tmp_path / "cache" / "parking"
    finally:
        parked.close()
