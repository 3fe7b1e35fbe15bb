"""Evaluation while training (train.eval_every): eval rows at the right steps in every sink, the
best adapter kept (train.keep_best), early stop (train.early_stop), and exact resume."""

import json
import os
import signal

import numpy as np
import pytest
from conftest import CONFIGS
from safetensors.numpy import load_file
from test_resume import checkpoint_step, finish, start

# Twelve made-up facts learned at a high rate, four held out: the held-out loss falls while the
# answers' shape is learned, then rises as the facts are memorised (an overfitting run on purpose).
OVERFIT = {
    "data.source": "bundled:tiny_facts",
    "data.eval_fraction": 0.25,
    "train.epochs": None,
    "train.max_steps": 24,
    "train.batch_size": 4,
    "train.lr": 0.03,
    "train.eval_every": 2,
    "train.log_every": 4,
    "output.samples": 4,
    "output.metric": "exact",
    "train.eval_samples": 2,
}


def rows(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def evals(run_dir):
    return [r for r in rows(run_dir) if "eval_loss" in r]


@pytest.fixture(scope="module")
def kept(tiny_presets, tmp_path_factory):
    import kft

    root = tmp_path_factory.mktemp("evals")
    result = kft.train(
        os.path.join(CONFIGS, "tiny.yaml"),
        **{
            "model.preset": tiny_presets["gemma3"],
            **OVERFIT,
            "train.keep_best": "eval_loss",
            "output.dir": str(root / "run"),
        },
    )
    return result


def test_eval_rows_come_at_every_nth_step_in_metrics_tensorboard_and_the_plot(kept):
    run_dir = kept.run_dir
    found = evals(run_dir)
    assert [r["step"] for r in found] == list(range(2, 25, 2))
    assert all(r["exact"] is not None and r["eval_loss"] > 0 for r in found)
    assert kept.metrics["evaluations"] == 12 and kept.metrics["eval_seconds"] > 0
    # The evaluations reuse compiled programs: after the first, none are built.
    assert all(r["eval_programs"] == 0 for r in found[1:])
    assert list((run_dir / "tensorboard" / "eval").glob("events.out.tfevents.*"))
    assert (run_dir / "loss.png").stat().st_size > 10_000


def test_keep_best_keeps_the_adapter_of_the_lowest_eval_loss(kept):
    from kft.models import lora

    found = evals(kept.run_dir)
    best = min(found, key=lambda r: r["eval_loss"])
    assert best["step"] < found[-1]["step"], "the run was meant to overfit"
    assert kept.metrics["adapter_step"] == best["step"]
    assert kept.metrics["best"] == {"step": best["step"], "eval_loss": best["eval_loss"]}
    # The run's adapter is that step's: the after-measurement is its eval loss, the saved file its weights.
    assert kept.metrics["eval_loss_after"] == pytest.approx(best["eval_loss"], rel=1e-5)
    saved = load_file(str(kept.run_dir / "adapter.safetensors"))
    best_file = load_file(str(kept.run_dir / "best" / "lora.safetensors"))
    live = lora.lora_variables(kept.task.backbone)
    assert set(saved) and all(np.array_equal(saved[k], best_file[k]) for k in saved)
    assert all(np.array_equal(np.asarray(live[k].numpy()), saved[k]) for k in saved)


def test_early_stop_ends_the_run_and_says_why(tiny_presets, tmp_path, capsys):
    import kft

    result = kft.train(
        os.path.join(CONFIGS, "tiny.yaml"),
        **{
            "model.preset": tiny_presets["gemma3"],
            **OVERFIT,
            "train.early_stop": 2,
            "output.dir": str(tmp_path / "run"),
        },
    )
    found = evals(result.run_dir)
    best = min(range(len(found)), key=lambda i: found[i]["eval_loss"])
    assert len(found) == best + 3 and found[-1]["step"] < 24  # two evaluations without improvement
    assert "no better eval_loss in 2 evaluations" in result.metrics["stopped_early"]
    assert "stopping early at step" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"train.keep_best": "eval_loss"}, "train.keep_best"),
        ({"train.early_stop": 3}, "train.early_stop"),
        ({"train.eval_every": 2, "train.keep_best": "loss"}, "train.keep_best"),
        ({"train.eval_every": 2, "train.keep_best": "metric"}, "train.keep_best"),
    ],
)
def test_bad_evaluation_settings_are_refused_with_the_key(bad, key):
    from kft.config import ConfigError, load

    with pytest.raises(ConfigError, match=key):
        load(os.path.join(CONFIGS, "tiny.yaml"), bad)


def test_sigkill_then_resume_reproduces_the_eval_rows_and_the_best(tmp_path):
    """Killed after a checkpoint, resumed: the same evaluation rows, best step and adapter as an
    uninterrupted run."""
    extra = [
        "--set", "data.eval_fraction=0.25", "--set", "train.eval_every=10",
        "--set", "train.keep_best=eval_loss", "--set", "train.early_stop=0",
    ]  # fmt: skip
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    from test_resume import ARGS

    finish(*ARGS, "--output-dir", str(reference), *extra)
    proc = start(killed, *extra)
    while checkpoint_step(killed) < 40:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finish("--resume", str(killed))

    def strip(found):
        return [
            {k: v for k, v in r.items() if k not in ("eval_seconds", "eval_programs")}
            for r in found
        ]

    assert strip(evals(killed)) == strip(evals(reference))
    summary = [json.loads((d / "summary.json").read_text()) for d in (reference, killed)]
    assert (
        summary[0]["best"] == summary[1]["best"]
        and summary[1]["adapter_step"] == summary[0]["adapter_step"]
    )
    a, b = (load_file(str(d / "adapter.safetensors")) for d in (reference, killed))
    assert all(np.array_equal(a[k], b[k]) for k in a)
