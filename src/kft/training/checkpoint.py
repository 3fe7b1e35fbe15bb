"""Checkpoints in the run folder, written atomically, and the callback that writes them.

Layout: `RUN/checkpoints/step-000120/` holds `lora.safetensors` (the LoRA factors),
`optimizer.safetensors` (every optimizer variable: moments, iteration count, gradient
accumulators) and `state.json` (micro step, optimizer step, the metrics rows so far), written
last. A checkpoint is written into `.step-000120.tmp` and renamed into place, so a crash while
writing leaves the previous checkpoint as the latest complete one. The last `keep` are kept.
Data position needs no state of its own: batch i is a pure function of (seed, i).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from pathlib import Path

import keras
import numpy as np

from kft.core import files
from kft.core.errors import KftError
from kft.distribute import distribution
from kft.models import lora

DIR = "checkpoints"


class Interrupted(KftError):
    """Training stopped by SIGTERM/SIGINT after writing a checkpoint; `--resume` continues it."""

    exit_code = 3


class Diverged(KftError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""

    exit_code = 4


def _name(micro_step: int) -> str:
    return f"step-{micro_step:07d}"


def latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    folder = Path(run_dir) / DIR
    done = (
        sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file())
        if folder.is_dir()
        else []
    )
    return done[-1] if done else None


def save(
    run_dir: Path, model, micro_step: int, optimizer_step: int, metrics_rows: list[dict], keep: int
) -> Path:
    from safetensors.numpy import save_file

    root = Path(run_dir) / DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / _name(micro_step)
    tmp = root / f".{_name(micro_step)}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(
            {p: np.asarray(v.numpy()) for p, v in lora.lora_variables(model.backbone).items()},
            str(tmp / "lora.safetensors"),
        )
        save_file(
            {f"{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(model.optimizer.variables)},
            str(tmp / "optimizer.safetensors"),
        )
        state = {
            "micro_step": micro_step,
            "optimizer_step": optimizer_step,
            "metrics": metrics_rows,
            "optimizer_variables": [v.path for v in model.optimizer.variables],
        }
        (tmp / "state.json").write_text(json.dumps(state) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _unnamed(path: str) -> str:
    return path.split("/", 1)[-1]


def restore_newest(run_dir: str | Path, model) -> tuple[Path, dict]:
    """(folder, state) of the newest complete checkpoint that reads back whole, restored into
    `model`; a damaged one is passed over, with one line saying so."""
    folder = Path(run_dir) / DIR
    complete = sorted(
        (p for p in folder.glob("step-*") if (p / "state.json").is_file()), reverse=True
    )
    for i, candidate in enumerate(complete):
        try:
            return candidate, restore(candidate, model)
        except files.Damaged as e:
            if i + 1 == len(complete):
                raise
            print(
                f"kft: {e.args[0].split(';')[0]}: resuming from {complete[i + 1].name} instead",
                flush=True,
            )
    raise KftError(
        f"{run_dir} has no complete checkpoint to resume from; start it again with --overwrite"
    )


def restore(folder: Path, model) -> dict:
    """Load a checkpoint's LoRA and optimizer values into `model` (LoRA enabled, optimizer built)."""

    fix = "resume from an earlier checkpoint (delete this one) or start again with --overwrite"
    state = files.read_json(folder / "state.json", fix)
    missing = [
        k
        for k in ("micro_step", "optimizer_step", "metrics", "optimizer_variables")
        if k not in state
    ]
    if missing:
        raise files.damaged(
            folder / "state.json", f"lacks {', '.join(missing)} (not written by kft)", fix
        )
    lora_values = files.read_safetensors(folder / "lora.safetensors", fix)
    variables = lora.lora_variables(model.backbone)
    if set(lora_values) != set(variables):  # the config was compared already: not this run's file
        raise files.damaged(
            folder / "lora.safetensors", "holds other LoRA layers than this run's model", fix
        )
    for path, variable in variables.items():
        variable.assign(lora_values[path])
    optimizer_values = files.read_safetensors(folder / "optimizer.safetensors", fix)
    # Compared without the optimizer's own name: Keras numbers it (adam_w_1, ...) where another
    # optimizer was built before in the same process (a notebook resuming after another run).
    if [_unnamed(v.path) for v in model.optimizer.variables] != [
        _unnamed(p) for p in state["optimizer_variables"]
    ]:
        raise KftError(
            f"checkpoint {folder} was written by a different optimizer setup; was the config changed?"
        )
    if set(optimizer_values) != {f"{i:05d}" for i in range(len(model.optimizer.variables))}:
        raise files.damaged(
            folder / "optimizer.safetensors", "holds other optimizer values than this run's", fix
        )
    for i, variable in enumerate(model.optimizer.variables):
        variable.assign(optimizer_values[f"{i:05d}"])
    return state


class Checkpointer(keras.callbacks.Callback):
    """Checkpoints every `every` optimizer steps and at the end; stops cleanly on SIGTERM/SIGINT and NaN."""

    def __init__(
        self,
        run_dir: Path,
        every: int,
        keep: int,
        accum: int,
        total_micro: int,
        start_micro: int,
        progress,
    ):
        super().__init__()
        self.run_dir, self.every, self.keep, self.accum = Path(run_dir), every, keep, accum
        self.total, self.start, self.progress = total_micro, start_micro, progress
        self.signal_received: str | None = None
        self.diverged_at: int | None = None
        self._previous = {}

    def _on_signal(self, signum, frame):
        self.signal_received = signal.Signals(signum).name

    def on_train_begin(self, logs=None):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread (some notebook runners): no signal handling
                pass

    def on_train_end(self, logs=None):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _save(self, micro: int) -> None:

        self.model.jax_state_sync()
        save(self.run_dir, self.model, micro, micro // self.accum, self.progress.records, self.keep)
        distribution.barrier(
            f"checkpoint {micro}"
        )  # process 0's checkpoint is complete before any process goes on

    def on_train_batch_end(self, batch, logs=None):
        micro = self.start + batch + 1
        if not math.isfinite(float(logs["loss"])):
            self.diverged_at = micro // self.accum
            self.model.stop_training = True
            return

        # Every process must stop after the same step, wherever the signal arrived first.
        if distribution.anywhere(self.signal_received is not None):
            self.signal_received = self.signal_received or "a signal to another process"
            self._save(micro)
            self.model.stop_training = True
        elif (
            micro == self.total
            or (micro % self.accum == 0 and (micro // self.accum) % self.every == 0)
            or self.model.stop_training  # an early stop (train.early_stop) ends the run here
        ):
            self._save(micro)
