"""Training progress: a printed line and a `metrics.jsonl` row every `log_every` optimizer steps."""

from __future__ import annotations

import json
import sys
import time

import keras

from kft.core.arithmetic import ceil_div


def in_notebook() -> bool:
    """True inside a Jupyter/Kaggle/Colab kernel, where progress is one updating bar, not lines."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ in ("ZMQInteractiveShell", "Shell")


class Counter:
    """Progress through a counted piece of work: `kft: LABEL: 32/64 UNIT` lines on a terminal, one
    updating tqdm bar in a notebook. `timed` adds the elapsed time and an estimate of what is left
    to each line; `stream` is where the lines go (stdout, or stderr where stdout carries results)."""

    def __init__(self, label: str, total: int, unit: str, timed: bool = False, stream=None):
        self.label, self.total, self.unit, self.done = label, total, unit, 0
        self.timed, self.stream, self.start = timed, stream, time.perf_counter()
        self.bar = None
        if in_notebook():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=label, unit=f" {unit}", leave=False)

    def advance(self, n: int = 1) -> None:
        before, self.done = self.done, min(self.total, self.done + n)
        every = max(1, ceil_div(self.total, 4))  # a terminal gets about four lines per counter
        if self.bar is not None:
            self.bar.update(n)
        elif self.done == self.total or self.done // every > before // every:
            line = f"kft: {self.label}: {self.done}/{self.total} {self.unit}"
            if self.timed:
                elapsed = time.perf_counter() - self.start
                left = (
                    ""
                    if self.done == self.total
                    else f", ~{_duration(elapsed * (self.total / self.done - 1))} left"
                )
                line += f" ({_duration(elapsed)}{left})"
            print(line, file=self.stream or sys.stdout, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


# Figures of a preference run's steps (kft.models.preference.METRICS) recorded beside the loss, and
# the short names the progress line shows two of them by.
WINDOWED = ("reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected")
SHOWN = {"reward_accuracy": "reward acc", "reward_margin": "margin"}


class Progress(keras.callbacks.Callback):
    """Prints `step, loss, lr, tokens/s, ETA` as plain lines on a terminal; in a notebook one tqdm bar
    moves every step and shows the same figures.

    Keras reports the running mean of the loss since `fit` began; the loss of a logging window is
    recovered from two running means, so each line shows the loss of its own steps. A resumed run
    starts at `start_micro` with the rows its checkpoint recorded.
    """

    def __init__(
        self,
        batches,
        total_micro_steps: int,
        accum: int,
        log_every: int,
        schedule,
        metrics_path,
        start_micro: int = 0,
        records: list[dict] | None = None,
    ):
        super().__init__()
        self.batches, self.total, self.accum = batches, total_micro_steps, accum
        self.log_every, self.schedule, self.metrics_path = log_every, schedule, metrics_path
        self.start_micro, self.records = start_micro, list(records or [])
        # metrics.jsonl holds exactly the rows of the state we continue from.
        with open(metrics_path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.records)
        timed = [r for r in self.records if "elapsed_s" in r]  # not evaluation rows
        self.elapsed_before = timed[-1]["elapsed_s"] if timed else 0.0

    def on_train_begin(self, logs=None):
        self.start = self.window_start = time.perf_counter()
        self.window_first, self.prev_means, self.window_tokens = 0, {}, 0
        self.bar = None
        if in_notebook():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.total // self.accum,
                initial=self.start_micro // self.accum,
                desc="training",
                unit=" step",
            )

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()

    def on_train_batch_end(self, batch, logs=None):
        local = batch + 1  # steps since this fit began
        micro = self.start_micro + local
        self.window_tokens += self.batches.tokens(batch)
        step = micro // self.accum
        if self.bar is not None and micro % self.accum == 0:
            self.bar.update(1)
        due = micro % self.accum == 0 and (step == 1 or step % self.log_every == 0)
        if not (due or micro == self.total):
            return
        now = time.perf_counter()
        means = {k: float(v) for k, v in logs.items() if k == "loss" or k in WINDOWED}
        window = {  # each figure over this window's steps, from two running means
            k: (mean * local - self.prev_means.get(k, 0.0) * self.window_first)
            / (local - self.window_first)
            for k, mean in means.items()
        }
        loss = window.pop("loss")
        elapsed = now - self.window_start
        record = {
            "step": step,
            "micro_step": micro,
            "loss": round(loss, 6),
            **{k: round(v, 6) for k, v in window.items()},
            "lr": float(self.schedule(max(micro - 1, 0))),
            "tokens_per_s": round(self.window_tokens / elapsed, 1) if elapsed > 0 else None,
            "elapsed_s": round(self.elapsed_before + now - self.start, 2),
        }
        self.records.append(record)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        rate = (now - self.start) / local
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{loss:.4f}",
                **{k: f"{v:.3f}" for k, v in window.items() if k in SHOWN},
                lr=f"{record['lr']:.2e}",
                tok_s=f"{record['tokens_per_s'] or 0:.0f}",
            )
        else:
            shown = "".join(
                f"  {SHOWN[k]} {v:.3f}" for k, v in window.items() if k in SHOWN
            )  # preference runs
            print(
                f"step {step}/{self.total // self.accum}  loss {loss:.4f}{shown}  lr {record['lr']:.2e}  "
                f"{record['tokens_per_s'] or 0:.0f} tok/s  elapsed {_duration(record['elapsed_s'])}  "
                f"eta {_duration(rate * (self.total - micro))}",
                flush=True,
            )
        self.window_first, self.prev_means, self.window_tokens, self.window_start = (
            local,
            means,
            0,
            now,
        )
