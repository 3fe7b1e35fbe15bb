"""Many devices: kft's layouts, the choice of distribution, and training on simulated CPU devices.

Shape-level rules run here; everything that needs several devices runs in a child process with
8 simulated CPU devices (tests/distributed_checks.py), or as `kft train` processes joined over
localhost (gloo), since this pytest process has one device.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from kft.config import ConfigError, from_dict
from kft.core.errors import KftError
from kft.distribute import distribution, layouts

CHECKS = os.path.join(REPO, "tests", "distributed_checks.py")


def gemma_shapes(layers=2, q=8, kv=1, d=2048, head=256, ffw=16384, vocab=256000) -> dict:
    """{path: shape} as a GemmaBackbone names its >= 2-D weights (default: gemma_2b_en's)."""
    shapes = {"token_embedding/embeddings": (vocab, d)}
    for i in range(layers):
        block = f"decoder_block_{i}"
        shapes.update(
            {
                f"{block}/attention/query/kernel": (q, d, head),
                f"{block}/attention/key/kernel": (kv, d, head),
                f"{block}/attention/value/kernel": (kv, d, head),
                f"{block}/attention/attention_output/kernel": (q, head, d),
                f"{block}/ffw_gating/kernel": (d, ffw),
                f"{block}/ffw_gating_2/kernel": (d, ffw),
                f"{block}/ffw_linear/kernel": (ffw, d),
                f"{block}/pre_attention_norm/scale": (d,),
            }
        )
    return shapes


def role_specs(shapes, mesh) -> dict:
    names = {pattern: role for role, pattern, _ in layouts.ROLES}
    return {
        names[p]: spec
        for p, spec in layouts.specs(shapes, dict(zip(layouts.AXES, mesh))).items()
        if p in names
    }


def divisible(shapes, mesh) -> bool:
    mesh_shape = dict(zip(layouts.AXES, mesh))
    specs = layouts.specs(shapes, mesh_shape)
    return all(
        size % mesh_shape[a] == 0
        for p, s in shapes.items()
        for pat in layouts.matches(specs, p)
        for size, a in zip(s, specs[pat])
        if a
    )


# ---- layouts from shapes -------------------------------------------------------------------


def test_one_kv_head_on_a_model_axis_of_8_is_replicated_and_queries_stay_sharded():
    specs = role_specs(
        gemma_shapes(q=8, kv=1), (1, 8)
    )  # gemma_2b_en: KerasHub's layout fails here (#1613)
    assert specs["key_value"] == (None, "batch", None)
    assert specs["query"] == ("model", "batch", None)
    assert specs["attention_output"] == ("model", None, "batch")
    assert divisible(gemma_shapes(q=8, kv=1), (1, 8))


def test_kv_heads_are_sharded_when_the_model_axis_divides_them():
    assert role_specs(gemma_shapes(q=16, kv=8, d=3584), (2, 4))["key_value"] == (
        "model",
        "batch",
        None,
    )


def test_layers_with_fewer_kv_heads_get_their_own_layout_and_the_rest_stay_sharded():
    shapes = gemma_shapes(
        layers=6, q=32, kv=16, d=5376
    )  # Gemma 4 31B: 16 KV heads locally, 4 in global layers
    shapes["decoder_block_5/attention/key/kernel"] = (4, 5376, 512)
    del shapes["decoder_block_5/attention/value/kernel"]  # global layers' V is their K
    specs = layouts.specs(shapes, {"batch": 1, "model": 8})
    assert specs[r".*attention/(key|value)/kernel"] == ("model", "batch", None)
    assert specs["decoder_block_5/attention/key/kernel"] == (None, "batch", None)
    layouts.check(specs, shapes)
    assert divisible(shapes, (1, 8))


def test_fewer_query_heads_than_the_model_axis_shard_the_hidden_dimension_instead():
    specs = role_specs(
        gemma_shapes(q=4, kv=1, d=640, head=256, ffw=2048, vocab=262144), (1, 8)
    )  # Gemma 3 270M
    assert specs["query"] == (None, "model", None)
    assert specs["attention_output"] == (None, None, "model")
    assert divisible(gemma_shapes(q=4, kv=1, d=640, head=256, ffw=2048, vocab=262144), (1, 8))


def test_every_ratio_and_mesh_lays_out_without_an_indivisible_dimension():
    for q, kv in ((8, 1), (4, 1), (8, 4), (16, 8), (16, 16), (32, 16)):
        for mesh in ((1, 2), (2, 4), (1, 8), (8, 1), (4, 2), (1, 16)):
            assert divisible(gemma_shapes(q=q, kv=kv, d=64, head=16, ffw=128, vocab=640), mesh), (
                q,
                kv,
                mesh,
            )


def test_patterns_never_catch_lora_factors():
    shapes = gemma_shapes()
    patterns = layouts.specs(shapes, {"batch": 1, "model": 8})
    for path in list(shapes):
        if path.endswith("/kernel"):
            assert layouts.matches(patterns, path.replace("/kernel", "/lora_kernel_a")) == []


def test_a_layout_pattern_that_would_match_twice_is_refused():
    shapes = gemma_shapes()
    patterns = {
        **layouts.specs(shapes, {"batch": 1, "model": 8}),
        r".*query/kernel": ("model", None, None),
    }
    with pytest.raises(KftError, match=r"query/kernel .* matches 2 layout patterns"):
        layouts.check(patterns, shapes)


def test_a_weight_no_pattern_covers_is_refused_not_replicated_silently():
    shapes = {**gemma_shapes(), "decoder_block_0/new_projection/kernel": (2048, 64)}
    with pytest.raises(KftError, match=r"new_projection/kernel .* matches 0 layout patterns"):
        layouts.specs(shapes, {"batch": 1, "model": 8})


def test_a_pattern_catching_lora_factors_is_refused():
    shapes = {**gemma_shapes(), "decoder_block_0/attention/query/lora_kernel_a": (2048, 4)}
    patterns = {
        p: s
        for p, s in layouts.specs(gemma_shapes(), {"batch": 1, "model": 8}).items()
        if "query" not in p
    }
    patterns[r".*query/.*kernel.*"] = (
        "model",
        None,
        None,
    )  # the pre-Keras-3.2 habit: catches lora_kernel_a too
    with pytest.raises(KftError, match="LoRA factor decoder_block_0/attention/query/lora_kernel_a"):
        layouts.check(patterns, shapes)


def abstract_shapes(cls_name: str, **kwargs) -> dict:
    """{path: shape} of a tiny backbone built without values (kft.models.model.weights_from_preset_only)."""
    import keras_hub

    from kft.models.model import weights_from_preset_only

    common = dict(
        vocabulary_size=640,
        num_layers=4,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=64,
        intermediate_dim=128,
        head_dim=16,
    )
    with weights_from_preset_only():
        backbone = getattr(keras_hub.models, cls_name)(**{**common, **kwargs})
    return layouts.weight_shapes(backbone)


GEMMA4 = dict(
    image_size=None,
    final_logit_soft_cap=30.0,
    sliding_window_size=32,
    sliding_window_pattern=2,
    global_head_dim=32,
)  # as kft.models.tiny's gemma4 presets (branch issue10)


@pytest.mark.parametrize(
    "name,cls_name,kwargs",
    [
        (
            "gemma3",
            "Gemma3Backbone",
            dict(image_size=None, use_query_key_norm=True, num_key_value_heads=1),
        ),
        (
            "gemma4",
            "Gemma4Backbone",
            dict(
                GEMMA4,
                num_kv_shared_layers=2,
                hidden_size_per_layer_input=8,
                use_double_wide_mlp=True,
            ),
        ),
        (
            "gemma4_moe",
            "Gemma4Backbone",
            dict(
                GEMMA4,
                enable_moe_block=True,
                num_experts=4,
                expert_intermediate_dim=32,
                num_experts_per_token=2,
                num_global_key_value_heads=1,
            ),
        ),
    ],
)
def test_gemma3_and_gemma4_weights_each_match_exactly_one_divisible_layout(name, cls_name, kwargs):
    shapes = abstract_shapes(cls_name, **kwargs)
    for mesh in ((1, 8), (2, 4), (8, 1), (1, 2)):
        layouts.check(
            layouts.specs(shapes, dict(zip(layouts.AXES, mesh))), shapes
        )  # raises otherwise
        assert divisible(shapes, mesh), (name, mesh)
    if (
        name == "gemma4_moe"
    ):  # global layers keep 1 KV head: the KV-head axis is replicated for every layer
        assert role_specs(shapes, (1, 8))["key_value"] == (None, "batch", None)
        assert role_specs(shapes, (1, 4))["experts_in"] == ("model", "batch", None)


# ---- choosing the distribution ---------------------------------------------------------------


def weights_of(shapes, itemsize=2) -> dict:
    return {p: (s, itemsize) for p, s in shapes.items()}


GEMMA2_9B = weights_of(gemma_shapes(layers=42, q=16, kv=8, d=3584, head=256, ffw=14336))
GIB = 2**30


def test_auto_is_single_on_one_device_and_data_parallel_when_the_model_fits():
    small = weights_of(gemma_shapes(layers=2))
    assert distribution.choose("auto", "", small, 1, 16 * GIB).kind == "single"
    assert distribution.choose("auto", "", small, 8, 16 * GIB).mesh == (8, 1)
    assert distribution.choose("auto", "", small, 8, 16 * GIB).kind == "data"


def test_auto_picks_the_smallest_model_axis_that_fits_for_a_model_larger_than_a_device():
    plan = distribution.choose(
        "auto", "", GEMMA2_9B, 8, 16 * GIB
    )  # 18.5 GB of bf16 weights vs 16 GB chips
    assert plan.kind == "model"
    assert plan.mesh == (4, 2)
    assert (
        distribution.bytes_per_device(GEMMA2_9B, plan.mesh) <= distribution.WEIGHT_SHARE * 16 * GIB
    )


def test_a_quantized_base_chooses_its_mesh_by_its_quantized_bytes():
    """A quantized base never reaches the devices in float (kft.distribute.placement): Gemma 2 9B in int4 fits one
    16 GB chip, so auto is data parallel over 8, not a model axis of 2."""
    int4 = distribution.quantized(GEMMA2_9B, "int4", 64)
    plan = distribution.choose("auto", "", int4, 8, 16 * GIB)
    assert plan.kind == "data" and plan.mesh == (8, 1)
    total = sum(math.prod(s) * b for s, b in GEMMA2_9B.values())
    embedding = math.prod(GEMMA2_9B["token_embedding/embeddings"][0]) * 2
    assert plan.weight_bytes == pytest.approx(
        embedding + (total - embedding) / 2 * (0.5 + 5 / 64), rel=1e-3
    )
    assert distribution.quantized(GEMMA2_9B, "none", 64) is GEMMA2_9B


def test_a_mesh_larger_than_the_devices_is_refused_and_a_smaller_one_uses_the_first_devices():
    with pytest.raises(KftError, match="needs 16 devices, but JAX sees 8"):
        distribution.choose("model", "4x4", GEMMA2_9B, 8, None)
    assert distribution.choose("model", "1x2", GEMMA2_9B, 8, None).mesh == (
        1,
        2,
    )  # the first 2 devices


def test_data_parallel_with_a_model_axis_is_refused():
    with pytest.raises(KftError, match="must be Nx1"):
        distribution.choose("data", "2x4", GEMMA2_9B, 8, None)


def test_a_batch_not_divisible_by_the_batch_axis_names_both_numbers():
    with pytest.raises(
        ConfigError, match="train.batch_size.*6 does not divide by the mesh's batch axis 4"
    ):
        from_dict({"train": {"batch_size": 6, "mesh": "4x2"}})
    with pytest.raises(
        KftError, match="train.batch_size 6 does not divide by the mesh's batch axis 8"
    ):
        distribution.check_batch(6, distribution.Plan("data", (8, 1), 0, ""))


def test_a_malformed_mesh_is_refused_at_config_load():
    with pytest.raises(ConfigError, match="train.mesh"):
        from_dict({"train": {"mesh": "8"}})


# ---- on 8 simulated devices (child processes) ---------------------------------------------------


def run_checks(check: str, tmp_path, timeout=900) -> dict:
    out = tmp_path / f"{check}.json"
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "src")}
    done = subprocess.run(
        [sys.executable, CHECKS, check, str(out), str(tmp_path / "presets")],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def assert_laid_out(results: dict):
    for case, r in results.items():
        assert all(n == 1 for n in r["base_match_counts"].values()), (case, r["base_match_counts"])
        assert r["lora_factors"] > 0 and r["lora_replicated"], case
        assert r["optimizer_variables"] > 0 and r["optimizer_replicated"], case
        if r["plan"] == "model":
            assert r["base_match_counts"] and r["sharded_base"] > 0, case


@pytest.fixture(scope="module")
def fast_checks(tmp_path_factory):
    """One child process: a distribution set after building, layouts on a few meshes, and a short run
    on one device and on a 2x4 mesh."""
    return run_checks("fast", tmp_path_factory.mktemp("fast"))


def layout_cases(results: dict) -> dict:
    return {
        k: v
        for k, v in results.items()
        if k != "built_first" and not k.startswith(("train ", "placement", "quantized "))
    }


def test_tiny_presets_build_on_several_meshes_with_every_base_kernel_matching_one_layout(
    fast_checks,
):
    assert set(layout_cases(fast_checks)) == {
        f"{h} {m}" for h in ("8/1", "16/8") for m in ("2x4", "1x8", "data")
    }
    assert_laid_out(layout_cases(fast_checks))


def test_a_gptq_int4_base_is_quantized_on_the_accelerator_one_block_at_a_time(fast_checks):
    """Device 7 plays the host and device 0 the accelerator (kft.distribute.placement), as on a GPU/TPU machine."""
    placed = fast_checks["placement"]
    accelerator = placed["accelerator"]
    assert placed["hessians"] == placed["codes"] == placed["variables"] == [accelerator], placed
    # Beyond the quantized decoder it ends with, the accelerator held about one float block of twelve
    # (plus Hessians and activations), never the float decoder.
    assert (
        set(placed["peak_beyond_final"]) == {accelerator}
        and placed["peak_beyond_final"][accelerator] < 0.25
    ), placed
    assert placed["logits_equal"], placed


def test_a_quantized_base_is_rounded_before_it_is_laid_out_on_a_model_axis(fast_checks):
    """Under a 2x2 model-parallel mesh Keras would create the float base on the mesh, laid out; kft
    builds it on the host, rounds it block by block on the first device, and lays each quantized layer
    out on the mesh as soon as it is done (int4 kernels and group scales sharded too)."""
    placed = fast_checks["placement 2x2"]
    accelerator = placed["accelerator"]
    assert placed["hessians"] == placed["codes"] == [accelerator], placed
    assert (
        len(placed["variables"]) == 4
        and accelerator in placed["variables"]
        and placed["sharded"] > 0
    ), placed
    beyond = placed["peak_beyond_final"]
    assert beyond[accelerator] < 0.25, placed  # one float block at a time, as on one device
    # The other devices of the mesh never held anything but their share of the quantized base.
    assert max(v for d, v in beyond.items() if d != accelerator) <= 0.01, placed
    assert placed["logits_rel"] < 1e-5, placed  # the same codes; sharded sums in another order
    # int4 kernels are (rows, packed columns) reshaped from the float kernel: blocks of rows are blocks
    # of its leading (head) dimension, so they take the float layout's axis for it.
    specs = placed["specs"]
    assert specs["decoder_block_0/attention/query/kernel"] == ["model", None], (
        specs
    )  # float: (model, batch, -)
    assert specs["decoder_block_0/attention/attention_output/kernel"] == ["model", "batch"], specs
    assert specs["decoder_block_0/attention/query/kernel_scale"] == ["model", None], (
        specs
    )  # its groups of rows


def test_weights_per_device_shrink_with_the_mesh(fast_checks):
    data, model = (
        fast_checks["16/8 data"]["bytes_per_device"],
        fast_checks["16/8 1x8"]["bytes_per_device"],
    )
    assert model < data / 4


def test_a_distribution_set_after_the_model_was_built_is_refused(fast_checks):
    assert fast_checks["built_first"].startswith("KftError: the model was built before")


def adapter_rel(a: dict, b: dict) -> float:
    keys = sorted(a)
    x, y = (np.concatenate([np.asarray(d[k]) for k in keys]) for d in (a, b))
    return float(np.linalg.norm(x - y) / np.linalg.norm(x))


def assert_same_training(reference: dict, other: dict, adapter_tolerance: float = 1e-5):
    assert len(other["losses"]) == len(reference["losses"]) == 3
    np.testing.assert_allclose(other["losses"], reference["losses"], rtol=1e-5)
    assert other["eval_loss_after"] == pytest.approx(reference["eval_loss_after"], rel=1e-5)
    assert set(other["adapter"]) == set(reference["adapter"])
    assert adapter_rel(reference["adapter"], other["adapter"]) <= adapter_tolerance


def test_lora_training_on_a_2x4_mesh_gives_the_single_device_losses_and_adapter(fast_checks):
    single, sharded = fast_checks["train single"], fast_checks["train 2x4"]
    assert sharded["mesh"] == "2x4" and single["mesh"] == "1x1"
    assert_same_training(single, sharded)


def assert_same_dpo(runs, packed=""):
    single, sharded = runs[f"train dpo {packed}single"], runs[f"train dpo {packed}2x4"]
    assert sharded["mesh"] == "2x4"
    assert single["losses"][0] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference
    np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-5)
    assert adapter_rel(single["adapter"], sharded["adapter"]) <= 1e-5
    assert set(single["pairs_after"]) >= {"pairs_reward_accuracy_after", "pairs_preferred_after"}
    for key, value in single["pairs_after"].items():
        assert sharded["pairs_after"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_a_llama_style_familys_quantized_bases_lay_out_on_a_2x4_mesh(fast_checks):
    """Qwen: an untied head (its own layout role), q/k/v biases (replicated), int8 and GPTQ int4 bases
    quantized on one device and laid out on the mesh after (their logits: one device's). Its
    training on the mesh: the slow train grid (assert_same_qwen)."""
    for mode in ("int8", "int4"):
        r = fast_checks[f"quantized qwen {mode} 2x4"]
        assert r["logits_rel"] < 1e-5 and r["sharded"] > 0, (mode, r)


def assert_same_qwen(runs):
    single, sharded = runs["train qwen single"], runs["train qwen 2x4"]
    assert sharded["mesh"] == "2x4"
    # Sharded sums add in another order; Qwen's tiny preset (kernels at Glorot's scale, lr 0.01)
    # moves its factors further in 3 steps than Gemma's: measured 1.2e-5 apart, losses to 1e-5.
    assert_same_training(single, sharded, adapter_tolerance=5e-5)


def test_a_gptq_int4_base_trains_on_a_model_axis_as_on_one_device(fast_checks):
    assert_same_int4(fast_checks, "2x4")


def assert_same_int4(runs, mesh):
    single, other = runs["train single int4"], runs[f"train {mesh} int4"]
    assert single["int4_rounding"] == other["int4_rounding"] == "gptq"
    assert other["mesh"] == {"data": "8x1", "2x4": "2x4"}[mesh]
    np.testing.assert_allclose(other["losses"], single["losses"], rtol=1e-5)
    assert other["eval_loss_after"] == pytest.approx(single["eval_loss_after"], rel=1e-5)
    # The base is rounded on one device before it is laid out, so the codes are the one-device ones
    # (measured 1.1e-6 data parallel, 8.0e-7 on 2x4; 1.9e-4 when data parallel rounded on the mesh).
    assert adapter_rel(single["adapter"], other["adapter"]) <= 1e-5


def test_mixed_bfloat16_data_parallel_on_8_devices_trains_like_float32_on_one(fast_checks):
    # The Kaggle TPU default (configs/kaggle_tpu_v5e8.yaml): bfloat16 compute rounds the losses at
    # ~1e-3 (measured 2.3e-4 here); the LoRA factors are float32 variables and stay float32.
    single, bf16 = fast_checks["train single"], fast_checks["train data mixed_bfloat16"]
    assert bf16["mesh"] == "8x1"
    np.testing.assert_allclose(bf16["losses"], single["losses"], rtol=5e-3)
    assert bf16["eval_loss_after"] == pytest.approx(single["eval_loss_after"], rel=5e-3)
    assert bf16["adapter_dtypes"] == ["float32"] and set(bf16["adapter"]) == set(single["adapter"])
    assert 0 < adapter_rel(single["adapter"], bf16["adapter"]) <= 5e-2
    assert bf16["samples"]


@pytest.mark.slow
def test_the_full_grid_of_head_ratios_and_meshes_lays_out(tmp_path):
    results = run_checks("grid", tmp_path, timeout=1800)
    assert len(layout_cases(results)) == 5 * 5 + 2
    assert_laid_out(layout_cases(results))
    # Every family's int8 and int4 (GPTQ) base, quantized on one device and laid out on the mesh after:
    # one device's logits (measured <= 2.5e-6), with weights sharded.
    quantized = {k: v for k, v in results.items() if k.startswith("quantized ")}
    assert len(quantized) == 9 * 2 * 2
    for case, r in quantized.items():
        assert r["logits_rel"] < 1e-5 and r["sharded"] > 0, (case, r)


@pytest.mark.slow
def test_lora_training_on_every_mesh_gives_the_single_device_losses_and_adapter(tmp_path):
    runs = run_checks("train_grid", tmp_path, timeout=1800)
    for mesh in ("1x2", "2x4", "1x8", "8x1", "data"):
        assert_same_training(runs["train single"], runs[f"train {mesh}"])
    assert_same_dpo(runs)  # DPO on a 2x4 mesh: the single device's losses, adapter, held-out pairs
    assert_same_dpo(runs, "packed ")  # and with pairs packed several to a row
    assert_same_qwen(runs)  # a Llama-style family
    assert_same_int4(runs, "data")  # a GPTQ int4 base, data parallel


# ---- two processes x 4 devices on localhost ---------------------------------------------------

CONFIG = """\
model: {{preset: {preset}, precision: float32}}
lora: {{rank: 4, alpha: 8.0, targets: [all-linear]}}
data: {{source: bundled:tiny_facts, template: dolly, seq_len: 64, eval_fraction: 0.25}}
train: {{max_steps: {steps}, batch_size: 8, grad_accum: 2, lr: 0.01, log_every: 1, checkpoint_every: 1, mesh: 2x4}}
output: {{samples: 1, sample_max_new_tokens: 4, tensorboard: false}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(config: Path, run_dir: Path, devices: int, processes: int, *extra):
    env = {
        **os.environ,
        "PYTHONPATH": os.path.join(REPO, "src"),
        "KFT_XLA_CACHE": "0",
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip(),
    }
    port = free_port()
    joined = (
        []
        if processes == 1
        else ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes)]
    )
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kft.cli",
                "train",
                "--config",
                str(config),
                "--output-dir",
                str(run_dir),
                *joined,
                *(["--process-id", str(i)] if joined else []),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(processes)
    ]


def wait_all(procs, timeout=600):
    deadline = time.time() + timeout
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append((p.returncode, out, err))
    return results


def losses(run_dir: Path) -> list[float]:
    return [
        json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def adapter(run_dir: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(run_dir / "adapter.safetensors"))


@pytest.fixture(scope="module")
def grid_preset(tmp_path_factory):
    from kft.models.tiny import build_tiny_preset

    return build_tiny_preset(
        "gemma",
        tmp_path_factory.mktemp("mp") / "gemma_8q1kv",
        num_query_heads=8,
        num_key_value_heads=1,
    )


@pytest.mark.slow
def test_two_processes_of_4_devices_train_as_one_process_and_resume_after_sigterm(
    grid_preset, tmp_path
):
    config = tmp_path / "mp.yaml"
    config.write_text(CONFIG.format(preset=grid_preset, steps=8))
    one, two = tmp_path / "one", tmp_path / "two"
    for code, _, err in wait_all(start_processes(config, one, 8, 1)):
        assert code == 0, err[-3000:]
    finished = wait_all(start_processes(config, two, 4, 2))
    for code, _, err in finished:
        assert code == 0, err[-3000:]
    # Written once, by process 0; process 1 wrote into a scratch folder of its own.
    assert f"saved to {two}" in finished[0][1] and f"saved to {two}" not in finished[1][1]
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
    a, b = adapter(one), adapter(two)
    assert (
        adapter_rel({k: v.ravel() for k, v in a.items()}, {k: v.ravel() for k, v in b.items()})
        <= 1e-5
    )
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert len(list((two / "checkpoints").glob("step-*"))) == 2

    # SIGTERM to both processes once the first checkpoint exists; both stop after the same step.
    stopped = tmp_path / "stopped"
    procs = start_processes(config, stopped, 4, 2)
    deadline = time.time() + 400
    while not list((stopped / "checkpoints").glob("step-*")):
        assert time.time() < deadline and all(p.poll() is None for p in procs), (
            "no checkpoint before the end"
        )
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    codes = [code for code, _, _ in wait_all(procs)]
    assert codes == [3, 3], codes
    for code, _, err in wait_all(start_processes(config, stopped, 4, 2, "--resume", str(stopped))):
        assert code == 0, err[-3000:]
    c = adapter(stopped)
    assert set(c) == set(b) and all(np.array_equal(c[k], b[k]) for k in b)


@pytest.mark.slow
def test_two_processes_round_an_int4_base_and_lay_it_out_on_a_2x4_mesh_as_one_process(
    grid_preset, tmp_path
):
    """Each process builds the float base on its host, rounds it by GPTQ on its first device, and lays it
    out on the global mesh (kft.distribute.placement)."""
    config = tmp_path / "int4.yaml"
    config.write_text(
        CONFIG.format(preset=grid_preset, steps=3).replace(
            "precision: float32", "precision: float32, quantize: int4, calibration_examples: 16"
        )
    )
    one, two = tmp_path / "one", tmp_path / "two"
    for run_dir, devices, processes in ((one, 8, 1), (two, 4, 2)):
        for code, out, err in wait_all(start_processes(config, run_dir, devices, processes)):
            assert code == 0, err[-3000:]
    assert "int4 rounding: gptq" in out
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
    a, b = adapter(one), adapter(two)
    assert (
        adapter_rel({k: v.ravel() for k, v in a.items()}, {k: v.ravel() for k, v in b.items()})
        <= 1e-5
    )


def test_a_short_eval_batch_is_padded_to_the_batch_axis_with_weightless_rows(monkeypatch):
    from types import SimpleNamespace

    import keras

    from kft.distribute import distribution

    mesh = SimpleNamespace(
        device_mesh=SimpleNamespace(axis_names=("batch", "model"), shape=(8, 1)),
        batch_dim_name="batch",
    )
    monkeypatch.setattr(keras.distribution, "distribution", lambda: mesh)
    rows = 3  # fewer rows than are missing (5): every array must still reach 8
    x = {
        "token_ids": np.ones((rows, 16), "int32"),
        "positions": np.arange(rows * 16).reshape(rows, 16),
        "targets": np.ones((rows, 16), "int32"),
    }
    y, w = np.ones((rows, 16), "int32"), np.ones((rows, 16), "float32")
    x, y, w = distribution.local_batch(x, y, w)
    assert all(len(v) == 8 for v in (*x.values(), y, w))
    assert (
        (x["positions"][rows:] == -1).all()
        and (w[rows:] == 0).all()
        and (x["targets"][rows:] == 0).all()
    )
