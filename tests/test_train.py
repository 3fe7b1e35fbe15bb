"""The whole path: `kft train` on tiny presets, the run folder, adapter reload, generation."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, assert_base_weights_untouched, run_cli

TINY = str(Path(CONFIGS) / "tiny.yaml")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`kft train --config configs/tiny.yaml` in its own process, as a user runs it (no log-level
    variables set); returns (run folder, stdout), and keeps stderr for the clean start-up test."""
    import os
    import subprocess
    import sys

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "GLOG", "ABSL"))}
    done = subprocess.run(
        [sys.executable, "-m", "kft.cli", "train", "--config", TINY, "--output-dir", str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    (run_dir.parent / "stderr.txt").write_text(done.stderr)
    return run_dir, done.stdout


def test_start_up_is_quiet_every_stderr_line_is_kft_s_own(tiny_run):
    err = (tiny_run[0].parent / "stderr.txt").read_text()
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith("kft: ") for line in lines), err


def test_kft_train_on_tiny_yaml_memorises_the_bundled_facts(tiny_run):
    run_dir, out = tiny_run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 1 and rows[-1]["step"] == 160
    assert rows[-1]["loss"] < 0.3 * rows[0]["loss"]
    assert all(r["tokens_per_s"] > 0 for r in rows[1:])
    assert (
        "trainable" in out
        and "step 160/160" in out
        and out.strip().splitlines()[-1] == str(run_dir)
    )
    prompts = len((run_dir / "samples.jsonl").read_text().splitlines())
    assert f"kft: measuring before: {prompts}/{prompts} prompts" in out
    assert f"kft: measuring after: {prompts}/{prompts} prompts" in out


def test_the_after_measurement_runs_the_programs_compiled_for_the_before_one(tiny_run):
    xla = json.loads((tiny_run[0] / "summary.json").read_text())["xla"]
    assert xla["before"]["compiled"] + xla["before"]["xla_cache_hits"] >= 1  # the generate program
    assert xla["after"]["compiled"] == 0 and xla["after"]["xla_cache_hits"] == 0


def test_run_folder_is_complete(tiny_run):
    run_dir, _ = tiny_run
    for name in (
        "config.yaml",
        "adapter.safetensors",
        "adapter_config.json",
        "metrics.jsonl",
        "samples.jsonl",
        "summary.json",
    ):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents*"))
    meta = json.loads((run_dir / "adapter_config.json").read_text())
    assert meta["base_preset"] == "tiny_gemma3" and meta["family"] == "gemma3"
    assert (meta["rank"], meta["alpha"], meta["dtype"]) == (8, 8, "float32")
    assert meta["targets"] == [
        "query",
        "key",
        "value",
        "attention_output",
        "ffw_gating",
        "ffw_gating_2",
        "ffw_linear",
    ]
    assert meta["kft_version"]


def test_samples_show_before_and_after_and_the_tuned_model_answers(tiny_run):
    run_dir, _ = tiny_run
    samples = [
        json.loads(line)
        for line in (run_dir / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(samples) == 2
    assert all(
        s["prompt"].startswith("Instruction:\n") and s["before"] != s["after"] for s in samples
    )
    assert (
        sum(s["after"] == s["reference"] for s in samples) >= 1
    )  # greedy output reproduces a memorised answer


def test_kft_generate_from_the_run_folder_stops_at_eos(tiny_run, capsys):
    run_dir, _ = tiny_run
    code, out, err = run_cli(
        [
            "generate",
            "--run",
            str(run_dir),
            "--max-new-tokens",
            "24",
            "What colour is the planet Zorb?",
            "조르브 행성은 무슨 색인가요?",
        ],
        capsys,
    )
    assert code == 0, err
    assert "The planet Zorb is teal.\n" in out and "조르브 행성은 청록색입니다.\n" in out


def test_generation_is_the_same_alone_and_next_to_a_longer_prompt(tiny_run):
    import kft

    lm = kft.load(tiny_run[0])
    short = "Instruction:\nHow many moons does Zorb have?\n\nResponse:\n"
    long = (
        "Instruction:\nTranslate to Korean: thank you very much. "
        + "Please. " * 10
        + "\n\nResponse:\n"
    )
    alone = kft.generate(lm, [short], max_new_tokens=24)
    together = kft.generate(lm, [short, long], max_new_tokens=24)
    assert alone[0] == together[0] == "Zorb has seven moons."


def test_adapter_for_another_base_is_refused(tiny_run, tiny_presets, capsys):
    code, _, err = run_cli(
        ["generate", "--preset", tiny_presets["gemma"], "--adapter", str(tiny_run[0]), "hi"], capsys
    )
    assert code == 2 and "does not fit this base model" in err and "Traceback" not in err


def test_existing_run_folder_is_not_overwritten(tiny_run, capsys):
    before = (tiny_run[0] / "adapter.safetensors").read_bytes()
    code, _, err = run_cli(["train", "--config", TINY, "--output-dir", str(tiny_run[0])], capsys)
    assert code == 2 and "--overwrite" in err
    assert (tiny_run[0] / "adapter.safetensors").read_bytes() == before


def _logits(task, ids):
    return np.asarray(task({"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)}))


def test_adapter_reloads_onto_a_fresh_base_and_reproduces_the_logits(family_run):
    import kft
    from kft.models import lora

    result, preset = family_run
    ids = np.array([[2, 300, 301, 302, 303, 304, 305, 306]], dtype="int32")
    trained = _logits(result.task, ids)
    b_norms = [
        float(np.abs(v.numpy()).max())
        for p, v in lora.lora_variables(result.task.backbone).items()
        if p.endswith("lora_kernel_b")
    ]
    assert (
        min(b_norms) > 0
    )  # every LoRA B moved off its zero init: the comparison below is not vacuous
    reloaded = _logits(kft.load(result.run_dir), ids)
    np.testing.assert_allclose(reloaded, trained, rtol=1e-5, atol=1e-5 * np.abs(trained).max())
    base = _logits(kft.quant.frozen_base.load(preset, "float32")[0], ids)
    assert np.abs(base - trained).max() > 1e-3  # and the fine-tune changed the model


def test_base_weights_are_bit_identical_after_training(family_run):
    result, preset = family_run
    assert_base_weights_untouched(result.task, preset)


def test_parameter_counts_match_the_lora_shapes_exactly(family_run):
    from kft.models import lora

    result, _ = family_run
    total, trainable = lora.parameter_counts(result.task)
    expected = sum(
        int(np.prod(v.shape)) for v in lora.lora_variables(result.task.backbone).values()
    )
    assert trainable == expected == result.metrics["trainable_parameters"]
    assert total == sum(int(np.prod(v.shape)) for v in result.task.weights)
    assert [v.path for v in result.task.trainable_weights] == list(
        lora.lora_variables(result.task.backbone)
    )


def test_eval_split_is_held_out_and_measured_before_and_after(family_run):
    metrics = family_run[0].metrics
    assert (metrics["data"]["eval_examples"], metrics["data"]["train_examples"]) == (4, 12)
    before, after = metrics["eval_loss_before"], metrics["eval_loss_after"]
    assert np.isfinite(before) and np.isfinite(after) and before != after


def test_kft_eval_base_reproduces_the_run_s_before_loss(family_run, capsys):
    result, _ = family_run
    code, out, _ = run_cli(["eval", str(result.run_dir), "--base"], capsys)
    measured = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and measured["model"] == "base"
    assert (
        abs(measured["loss"] - result.metrics["eval_loss_before"])
        <= 1e-5 * result.metrics["eval_loss_before"]
    )


def test_gradient_accumulation_counts_optimizer_steps(family_run):
    result, _ = family_run
    rows = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [(r["step"], r["micro_step"]) for r in rows] == [(1, 2), (3, 6), (6, 12)]
    assert int(np.asarray(result.fit_model.optimizer.iterations)) == 6


def test_random_sampling_is_seeded(tiny_run, capsys):
    args = [
        "generate",
        "--run",
        str(tiny_run[0]),
        "--sampler",
        "random",
        "--top-k",
        "5",
        "--temperature",
        "1.5",
        "--max-new-tokens",
        "8",
        "--raw",
        "Zorb",
    ]
    first = run_cli([*args, "--seed", "3"], capsys)
    again = run_cli([*args, "--seed", "3"], capsys)
    assert first[0] == 0 and first[1] == again[1] and first[1].strip()


def test_kft_chat_answers_turn_after_turn_through_stdin(tiny_run):
    import subprocess
    import sys

    run_dir, _ = tiny_run
    lines = "Who founded the city of Velmora?\n/reset\nTranslate to Korean: thank you very much\n/exit\n"
    done = subprocess.run(
        [sys.executable, "-m", "kft.cli", "chat", str(run_dir), "--max-new-tokens", "8"],
        input=lines,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    replies = [part.split("\n")[0] for part in done.stdout.split("model> ")[1:]]
    assert len(replies) == 2 and "(new conversation)" in done.stdout
    assert replies[0].startswith("Velmora was") and replies[1].startswith("정말")


def test_chat_keeps_the_history_until_reset(tiny_run):
    import kft
    from kft.generation.chat import Session

    session = Session(kft.load(run_dir=tiny_run[0]), max_new_tokens=4)
    first = session.reply("Who founded the city of Velmora?")
    second_prompt = session.prompt_for("And when?")
    assert second_prompt.startswith(
        "Instruction:\nWho founded the city of Velmora?\n\nResponse:\n" + first
    )
    assert second_prompt.endswith("Instruction:\nAnd when?\n\nResponse:\n")
    session.reset()
    assert session.prompt_for("And when?") == "Instruction:\nAnd when?\n\nResponse:\n"
