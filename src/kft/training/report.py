"""Pictures and tables of finished runs: `loss.png` in every run folder, and `kft report`.

Drawn with matplotlib's Agg canvas directly (no pyplot), so a notebook's own plotting backend is
never switched.
"""

from __future__ import annotations

from pathlib import Path

from kft.core import files
from kft.core.errors import KftError

LOSS_PNG = "loss.png"
RUN_FIX = "copy the run folder again, or train it again"


def _read_run(run_dir: Path) -> tuple[list[dict], dict]:
    run_dir = Path(run_dir)
    metrics, summary = run_dir / "metrics.jsonl", run_dir / "summary.json"
    if not metrics.is_file():
        raise KftError(f"'{run_dir}' is not a kft run folder (no metrics.jsonl)")
    rows = files.read_jsonl(metrics, RUN_FIX)
    return rows, files.read_json(summary, RUN_FIX) if summary.is_file() else {}


def _figure(width: float = 7.0, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def plot_run(run_dir: str | Path) -> Path:
    """Write RUN/loss.png: training loss per logged step, eval loss before/after, learning rate."""
    run_dir = Path(run_dir)
    rows, summary = _read_run(run_dir)
    evals = [r for r in rows if "eval_loss" in r]  # train.eval_every's rows
    rows = [r for r in rows if "loss" in r]
    preference = bool(rows) and "reward_accuracy" in rows[0]  # a dpo/orpo run: a second panel
    figure = _figure(height=6.4 if preference else 4.2)
    ax = figure.add_subplot(211) if preference else figure.add_subplot()
    steps = [r["step"] for r in rows]
    ax.plot(
        steps,
        [r["loss"] for r in rows],
        marker="o",
        markersize=3,
        color="tab:blue",
        label="training loss",
    )
    if evals:
        before = [(0, summary["eval_loss_before"])] if "eval_loss_before" in summary else []
        points = before + [(r["step"], r["eval_loss"]) for r in evals]
        ax.plot(
            [s for s, _ in points],
            [v for _, v in points],
            marker="s",
            markersize=4,
            color="tab:orange",
            label="eval loss",
        )
        if summary.get("adapter_step") is not None:
            ax.axvline(
                summary["adapter_step"], color="tab:green", linestyle=":", label="kept adapter"
            )
    elif "eval_loss_before" in summary and steps:
        ends = [0, steps[-1]]
        ax.plot(
            ends,
            [summary["eval_loss_before"], summary["eval_loss_after"]],
            linestyle="--",
            marker="s",
            color="tab:orange",
            label="eval loss (before, after)",
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    lr_axis = ax.twinx()
    lr_axis.plot(
        steps, [r["lr"] for r in rows], color="tab:gray", linestyle=":", label="learning rate"
    )
    lr_axis.set_ylabel("learning rate")
    lr_axis.set_ylim(bottom=0)
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    handles = ax.get_legend_handles_labels()[0] + lr_axis.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=8)
    ax.set_title(f"{run_dir.name}: {summary.get('family', '')} LoRA", fontsize=10)
    if preference:
        _plot_rewards(figure.add_subplot(212), steps, rows)
    figure.tight_layout()
    path = run_dir / LOSS_PNG
    figure.savefig(path)
    return path


def _plot_rewards(ax, steps: list, rows: list[dict]) -> None:
    """A preference run's reward accuracy (left axis) and reward margin (right) per logged step."""
    ax.plot(
        steps,
        [r["reward_accuracy"] for r in rows],
        marker="o",
        markersize=3,
        color="tab:green",
        label="reward accuracy",
    )
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward accuracy")
    ax.grid(alpha=0.3)
    margin = ax.twinx()
    margin.plot(
        steps,
        [r["reward_margin"] for r in rows],
        color="tab:purple",
        linestyle="--",
        label="reward margin",
    )
    margin.set_ylabel("reward margin")
    handles = ax.get_legend_handles_labels()[0] + margin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize=8)


def plot_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Draw the training loss of several runs on one plot (`kft report A B --out compare.png`)."""
    figure = _figure()
    ax = figure.add_subplot()
    for run_dir in run_dirs:
        rows, _ = _read_run(Path(run_dir))
        rows = [r for r in rows if "loss" in r]
        ax.plot(
            [r["step"] for r in rows],
            [r["loss"] for r in rows],
            marker="o",
            markersize=3,
            label=Path(run_dir).name,
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out


COLUMNS = ("run", "family", "steps", "train loss", "eval loss", "metric", "train s")


def summary_row(run_dir: str | Path) -> dict:
    """One run's figures as table cells: first -> final where there is a before and an after."""
    rows, s = _read_run(Path(run_dir))
    metric = s.get("metric", "none")
    cells = {
        "run": Path(run_dir).name,
        "family": s.get("family", "?"),
        "steps": str(rows[-1]["step"] if rows else 0),
        "train loss": f"{s['first_loss']:.4f} -> {s['final_loss']:.4f}"
        if "final_loss" in s
        else "-",
        "eval loss": f"{s['eval_loss_before']:.4f} -> {s['eval_loss_after']:.4f}"
        if "eval_loss_before" in s
        else f"{s['eval_loss_after']:.4f}"
        if "eval_loss_after" in s
        else "-",
        "metric": (
            f"{metric} {s[f'{metric}_before']:.1f}% -> {s[f'{metric}_after']:.1f}%"
            if f"{metric}_before" in s
            else f"{metric} {s[f'{metric}_after']:.1f}%"
            if f"{metric}_after" in s
            else "-"
        ),
        "train s": str(s.get("train_seconds", "-")),
    }
    return cells


def table(run_dirs: list[str | Path]) -> str:
    """A plain-text table of the runs' summaries, columns aligned."""
    rows = [summary_row(r) for r in run_dirs]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    line = lambda cells: "  ".join(cells[c].ljust(widths[c]) for c in COLUMNS).rstrip()  # noqa: E731
    return "\n".join([line({c: c for c in COLUMNS}), *map(line, rows)])
