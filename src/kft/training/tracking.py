"""Experiment tracking with Weights & Biases (`output.wandb: PROJECT`), next to TensorBoard.

The run's config, every logged metrics row, the before/after summary and the samples table go to
one W&B run whose files live in RUN/wandb. `WANDB_MODE=offline` keeps everything local (sync it
later with `wandb sync RUN/wandb/offline-run-*`). A resumed kft run continues its W&B run.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import keras

from kft.core.errors import KftError

SAMPLE_COLUMNS = ["prompt", "reference", "before", "after"]


def start(project: str, run_dir: Path, config: dict, resuming: bool):
    """A wandb run for `project` (None when `project` is empty)."""
    if not project:
        return None
    try:
        import wandb
    except ImportError:
        raise KftError("output.wandb needs the wandb package: pip install 'kft[wandb]'") from None
    id_file = run_dir / "wandb_run_id"
    run_id = (
        id_file.read_text().strip() if resuming and id_file.is_file() else uuid.uuid4().hex[:12]
    )
    id_file.write_text(run_id + "\n")
    try:
        return wandb.init(
            project=project,
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config,
        )
    except (
        Exception
    ) as e:  # wandb raises its own types for auth/network/usage errors; all are the user's to fix
        raise KftError(
            f"cannot start a W&B run in project '{project}' ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160]}); log in with `wandb login`, or set WANDB_MODE=offline"
        ) from None


class MetricsToWandb(keras.callbacks.Callback):
    """Sends each metrics row the Progress callback records (it runs first) to W&B."""

    def __init__(self, run, progress):
        super().__init__()
        self.run, self.progress, self.sent = run, progress, len(progress.records)

    def on_train_batch_end(self, batch, logs=None):
        for row in self.progress.records[self.sent :]:
            self.run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        self.sent = len(self.progress.records)


def callbacks(run, progress) -> list:
    return [MetricsToWandb(run, progress)] if run is not None else []


def finish(run, summary: dict, samples: list[dict]) -> None:
    """The run's before/after figures as W&B summary, the samples as a table; close the run."""
    if run is None:
        return
    import wandb

    run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
    run.log(
        {
            "samples": wandb.Table(
                columns=SAMPLE_COLUMNS, data=[[s[c] for c in SAMPLE_COLUMNS] for s in samples]
            )
        }
    )
    run.finish()
