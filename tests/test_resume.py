"""Surviving a session's end: kill -9, SIGTERM, failed checkpoint writes, NaN; resume is exact."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, run_cli
from safetensors.numpy import load_file

ARGS = [
    "--config",
    os.path.join(CONFIGS, "tiny.yaml"),
    "--max-steps",
    "150",
    "--set",
    "train.checkpoint_every=10",
    "--set",
    "train.log_every=10",
    "--set",
    "output.samples=1",
    "--set",
    "output.tensorboard=false",
]


def start(run_dir, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "kft.cli", "train", *ARGS, "--output-dir", str(run_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(*args):
    done = subprocess.run(
        [sys.executable, "-m", "kft.cli", "train", *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def checkpoint_step(run_dir):
    from kft.training.checkpoint import latest

    last = latest(run_dir)
    return int(last.name.split("-")[1]) if last else 0


def wait_for_checkpoint(proc, run_dir, at_least, timeout=180):
    deadline = time.time() + timeout
    while checkpoint_step(run_dir) < at_least:
        assert proc.poll() is None, (
            f"training ended before step {at_least}: {proc.stderr.read()[-2000:]}"
        )
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.01)


def same_adapter(a, b):
    x, y = (
        load_file(str(Path(a) / "adapter.safetensors")),
        load_file(str(Path(b) / "adapter.safetensors")),
    )
    return set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("resume") / "reference"
    finish(*ARGS, "--output-dir", str(run))
    return run


@pytest.mark.parametrize(
    "kill_at", [(20,), pytest.param((20, 70), marks=pytest.mark.slow)]
)  # slow: resume twice
def test_sigkill_at_several_steps_then_resume_gives_a_bit_identical_adapter(
    uninterrupted, tmp_path, kill_at
):
    run = tmp_path / "killed"
    kills = []
    for at_least in kill_at:
        proc = start(run, *(["--resume", "auto"] if kills else []))
        wait_for_checkpoint(proc, run, at_least)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(checkpoint_step(run))
    assert kills == sorted(kills) and kills[0] >= 20
    done = finish("--resume", str(run))
    assert "resuming from step-" in done.stdout
    assert same_adapter(run, uninterrupted)
    steps = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == len((uninterrupted / "metrics.jsonl").read_text().splitlines())


def test_sigterm_writes_a_checkpoint_exits_3_and_resumes_exactly(uninterrupted, tmp_path):
    run = tmp_path / "terminated"
    proc = start(run)
    wait_for_checkpoint(proc, run, 30)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-2000:]
    assert (
        "interrupted (resumable)" in err
        and f"kft train --resume {run}" in err
        and "Traceback" not in err
    )
    finish("--resume", str(run))
    assert same_adapter(run, uninterrupted)


@pytest.mark.slow  # two quantized runs of 40 steps (~1 min)
def test_a_run_on_an_int8_base_stopped_at_a_checkpoint_resumes_to_the_same_adapter(tmp_path):
    # The base is re-quantized on resume (deterministically) and only the LoRA factors and optimizer
    # state come from the checkpoint.
    from kft.models import adapter

    quantized = ["--set", "model.quantize=int8", "--max-steps", "40"]
    reference = tmp_path / "reference"
    finish(*ARGS, *quantized, "--output-dir", str(reference))
    run = tmp_path / "stopped"
    proc = start(run, *quantized)
    wait_for_checkpoint(proc, run, 10)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-2000:]
    assert checkpoint_step(run) < 40
    done = finish("--resume", str(run))
    assert "resuming from step-" in done.stdout
    assert adapter.read_config(run)["quantize"] == "int8"
    assert same_adapter(run, reference)


def test_a_failed_checkpoint_write_leaves_the_previous_one_loadable(
    family_run, tmp_path, monkeypatch
):
    import safetensors.numpy

    from kft.models import lora
    from kft.training import checkpoint

    result, _ = family_run
    task = result.task
    first = checkpoint.save(tmp_path, task, 2, 1, [], keep=2)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", disk_full)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, task, 4, 2, [], keep=2)
    monkeypatch.undo()
    assert checkpoint.latest(tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [first.name]
    before = {p: np.asarray(v.numpy()) for p, v in lora.lora_variables(task.backbone).items()}
    state = checkpoint.restore(first, task)
    assert state["micro_step"] == 2
    assert all(
        np.array_equal(np.asarray(v.numpy()), before[p])
        for p, v in lora.lora_variables(task.backbone).items()
    )


def test_resume_refuses_a_config_change_that_alters_the_result(uninterrupted, capsys):
    code, _, err = run_cli(
        ["train", "--resume", str(uninterrupted), "--rank", "16", "--seed", "5"], capsys
    )
    assert code == 2 and "lora.rank: 8 -> 16" in err and "train.seed: 0 -> 5" in err


def test_resume_of_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    code, _, err = run_cli(["train", "--resume", str(tmp_path)], capsys)
    assert code == 2 and "not a kft run folder" in err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_nan_loss_stops_within_a_step_and_says_so(tmp_path, capsys):
    code, out, err = run_cli(
        ["train", *ARGS, "--lr", "1e12", "--output-dir", str(tmp_path / "nan")], capsys
    )
    assert code == 4 and "NaN/Inf" in err and "Traceback" not in err
    assert not (tmp_path / "nan" / "adapter.safetensors").exists()


@pytest.mark.slow
def test_a_llama_style_run_stopped_at_a_checkpoint_resumes_to_the_same_adapter(tmp_path):
    """Qwen (untied head, q/k/v biases, ChatML) on its tiny preset: SIGTERM, then resume, bit-identical."""
    qwen = ["--preset", "tiny_qwen", "--data", "bundled:tiny_chat", "--set", "data.template=chat"]
    qwen += ["--seq-len", "128", "--batch-size", "2", "--max-steps", "40"]
    reference = tmp_path / "reference"
    finish(*ARGS, *qwen, "--output-dir", str(reference))
    run = tmp_path / "stopped"
    proc = start(run, *qwen)
    wait_for_checkpoint(proc, run, 10)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-2000:]
    assert checkpoint_step(run) < 40
    done = finish("--resume", str(run))
    assert "resuming from step-" in done.stdout
    assert same_adapter(run, reference)


@pytest.mark.slow  # three tiny DPO runs of 150 steps (~1 min) a case
@pytest.mark.parametrize("case", ["unpacked", "packed", "continuing an int4 run"])
def test_a_dpo_run_stopped_at_a_checkpoint_resumes_to_the_same_adapter(tmp_path, case):
    # The reference log-probs come back from the run folder (reference_logps.npz), not recomputed
    # with the checkpoint's LoRA in place; a run continuing an int4 run's LoRA rebuilds that base
    # (GPTQ on its calibration tokens) from its own copy.
    from test_preference import fact_pairs, short_fact_pairs

    dpo = ["--set", "train.objective=dpo", "--data", fact_pairs(tmp_path / "pairs.jsonl")]
    if case == "packed":
        dpo[-1] = short_fact_pairs(tmp_path / "short.jsonl")
        dpo += ["--set", "data.template=text", "--set", "data.packing=true", "--batch-size", "2"]
    if case == "continuing an int4 run":
        sft, int4 = tmp_path / "sft", ["--set", "model.quantize=int4"]
        int4 += ["--set", "model.int4_rounding=gptq", "--set", "model.calibration_examples=8"]
        finish(*ARGS, "--max-steps", "20", *int4, "--output-dir", str(sft))
        dpo += [*int4, "--set", f"model.init_adapter={sft}"]
    reference = tmp_path / "reference"
    finish(*ARGS, *dpo, "--output-dir", str(reference))
    run = tmp_path / "stopped"
    proc = start(run, *dpo)
    wait_for_checkpoint(proc, run, 20)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-2000:]
    done = finish("--resume", str(run))
    assert "resuming from step-" in done.stdout
    assert same_adapter(run, reference)

    def steps(folder):  # a window cut by the stop averages fewer steps: its figures differ
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert all("reward_accuracy" in r for r in rows)
        return [r["step"] for r in rows]

    assert steps(run) == steps(reference)
