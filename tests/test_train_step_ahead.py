"""The first train step compiled on a second thread during the before-measurement, and used by fit."""

import json
import logging
import os

from conftest import CONFIGS


def _train(preset, out):
    import kft

    return kft.train(
        os.path.join(CONFIGS, "tiny.yaml"),
        **{
            "model.preset": preset,
            "train.epochs": None,
            "train.max_steps": 3,
            "train.log_every": 1,
            "output.samples": 2,
            "output.tensorboard": False,
            "output.dir": str(out),
        },
    )


def test_fit_runs_the_step_compiled_ahead_and_trains_the_same(
    tiny_presets, tmp_path, caplog, monkeypatch
):
    import jax

    from kft.training import step_ahead

    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING, logger="jax"):
            ahead = _train(tiny_presets["gemma3"], tmp_path / "ahead")
    finally:
        jax.config.update("jax_log_compiles", False)
    messages = [(r.getMessage(), r.threadName) for r in caplog.records]
    traced = [m for m, _ in messages if m.startswith("Finished tracing train_step")]
    compiled = [
        thread
        for m, thread in messages
        if m.startswith("Finished XLA compilation of jit(train_step)")
    ]
    # seq_len 64 and pad_to_multiple 64: one batch shape, so one program, compiled on kft's thread, never again.
    assert len(traced) == 1 and compiled == ["kft-train-step-compile"], messages

    monkeypatch.setattr(step_ahead, "start", lambda fit_model, batches: None)
    inline = _train(tiny_presets["gemma3"], tmp_path / "inline")

    def losses(result):
        return [
            json.loads(line)["loss"]
            for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
        ]

    assert losses(ahead) == losses(inline) and len(losses(ahead)) == 3
