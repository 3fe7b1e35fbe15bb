"""Evaluation while training: the held-out loss (and the run's metric on a fixed set of held-out
prompts) every `train.eval_every` steps, the best adapter kept (`train.keep_best`), and an early
stop after `train.early_stop` evaluations without improvement.

Each evaluation is a row of the run's metrics (metrics.jsonl, the checkpoint's rows, W&B,
TensorBoard, loss.png), so a resumed run knows the evaluations before its checkpoint, the best so
far and how long it has not improved, and reproduces the rest. The best adapter is written to
RUN/best/ when it improves; the run's adapter becomes it at the end (`restore_best`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from kft.core import files
from kft.core.compiles import Compiles
from kft.models import lora

BEST = "best"
WEIGHTS = "lora.safetensors"


def measure_key(keep_best: str, metric: str) -> tuple[str, bool]:
    """(the row key an improvement is judged on, whether higher is better)."""
    if keep_best == "metric":
        return metric, True
    return "eval_loss", False


class PeriodicEval(keras.callbacks.Callback):
    """Runs `evaluate()` ({"eval_loss", metric?}) after every `every`-th optimizer step; runs after
    Progress (whose records it appends to) and before the Checkpointer (which saves them)."""

    def __init__(
        self,
        evaluate,
        every: int,
        accum: int,
        start_micro: int,
        total_micro: int,
        progress,
        out: Path,
        judged_on: str,
        higher_is_better: bool,
        early_stop: int,
        keep_best: bool,
        scalars=None,
    ):
        super().__init__()
        self.evaluate, self.every, self.accum = evaluate, every, accum
        self.start, self.total = start_micro, total_micro
        self.progress, self.out, self.key, self.higher = (
            progress,
            Path(out),
            judged_on,
            higher_is_better,
        )
        self.early_stop, self.keep_best, self.scalars = early_stop, keep_best, scalars
        self.stopped: str | None = None
        # What the rows before a resumed run's checkpoint say.
        self.best_step, self.best, self.stale, self.seconds = None, None, 0, 0.0
        for row in self.rows():
            self._judge(row)
            self.seconds += row.get("eval_seconds", 0.0)

    def rows(self) -> list[dict]:
        return [r for r in self.progress.records if "eval_loss" in r]

    def _judge(self, row: dict) -> bool:
        value = row.get(self.key)
        better = value is not None and (
            self.best is None or (value > self.best if self.higher else value < self.best)
        )
        if better:
            self.best, self.best_step, self.stale = value, row["step"], 0
        else:
            self.stale += 1
        return better

    def on_train_batch_end(self, batch, logs=None):
        micro = self.start + batch + 1
        # Every `every` steps, and the last step (keep_best then weighs the last adapter too).
        if micro != self.total and (micro % self.accum or (micro // self.accum) % self.every):
            return
        step = micro // self.accum
        self.model.jax_state_sync()  # the variables as of this step (fit holds them apart)
        started = time.perf_counter()
        with Compiles() as compiles:  # programs built: none after the first evaluation
            result = self.evaluate()
        row = {
            "step": step,
            **result,
            "eval_seconds": round(time.perf_counter() - started, 2),
            "eval_programs": compiles.programs,
        }
        self.seconds += row["eval_seconds"]
        self.progress.records.append(row)
        with open(self.progress.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.scalars is not None:
            self.scalars(step, result)
        improved = self._judge(row)
        if improved and self.keep_best:
            self._save_best()
        shown = ", ".join(  # eval_*: losses and pair figures; the others: the metric (%)
            f"{k} {v:.4f}" if k.startswith("eval_") else f"{k} {v:.1f}%"
            for k, v in result.items()
            if v is not None
        )
        print(
            f"eval step {step}: {shown}  ({row['eval_seconds']:.1f} s; best {self.key} "
            f"{self.best:.4f} at step {self.best_step})",
            flush=True,
        )
        if self.early_stop and self.stale >= self.early_stop:
            self.stopped = (
                f"no better {self.key} in {self.stale} evaluations (best {self.best:.4f} at "
                f"step {self.best_step}; train.early_stop {self.early_stop})"
            )
            print(f"kft: stopping early at step {step}: {self.stopped}", flush=True)
            self.model.stop_training = True

    def _save_best(self) -> None:
        from safetensors.numpy import save_file

        folder = self.out / BEST
        partial = self.out / f".{BEST}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_file(
            {p: np.asarray(v.numpy()) for p, v in lora.lora_variables(self.model.backbone).items()},
            str(partial / WEIGHTS),
            metadata={"step": str(self.best_step)},
        )
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(partial, folder)

    def summary(self) -> dict:
        summary = {
            "evaluations": len(self.rows()),
            "eval_seconds": round(self.seconds, 2),
            "best": {"step": self.best_step, self.key: self.best},
        }
        if self.stopped:
            summary["stopped_early"] = self.stopped
        return summary


def tensorboard_scalars(folder: Path):
    """step, {name: value} -> TensorBoard scalars in `folder` (RUN/tensorboard/eval)."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(folder))

    def log(step: int, values: dict) -> None:
        with writer.as_default():
            for name, value in values.items():
                if value is not None:
                    tf.summary.scalar(name, value, step=step)
        writer.flush()

    return log


def restore_best(out: Path, backbone) -> int | None:
    """Load RUN/best/'s adapter weights into `backbone`; return their step (None: no best saved)."""
    path = Path(out) / BEST / WEIGHTS
    if not path.is_file():
        return None
    from safetensors import safe_open

    tensors = files.read_safetensors(path, "train the run again")
    for name, variable in lora.lora_variables(backbone).items():
        variable.assign(tensors[name])
    with safe_open(str(path), "np") as f:
        return int(f.metadata()["step"])
