"""Pictures of runs: every run folder has a loss.png; `kft report` prints summaries and compares runs."""

import json

import numpy as np
from conftest import run_cli
from PIL import Image


def _drawn(path):
    """(width, height, distinct colours, share of non-white pixels) of a PNG."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    return pixels.shape[1], pixels.shape[0], colours, float((pixels.sum(axis=2) < 750).mean())


def test_every_run_folder_has_a_drawn_loss_plot(family_run):
    path = family_run[0].run_dir / "loss.png"
    width, height, colours, ink = _drawn(path)
    assert (width, height) == (770, 462)
    assert colours > 20 and 0.02 < ink < 0.5  # axes, lines and labels, not a blank or solid image


def test_kft_report_prints_the_summary_and_compares_runs(family_run, tmp_path, capsys):
    run = family_run[0].run_dir
    summary = json.loads((run / "summary.json").read_text())
    code, out, err = run_cli(["report", str(run)], capsys)
    assert code == 0, err
    assert f"{summary['first_loss']:.4f} -> {summary['final_loss']:.4f}" in out
    assert f"{summary['eval_loss_before']:.4f} -> {summary['eval_loss_after']:.4f}" in out
    assert out.strip().splitlines()[-1] == str(run / "loss.png")

    compare = tmp_path / "compare.png"
    code, out, err = run_cli(["report", str(run), str(run), "--out", str(compare)], capsys)
    assert code == 0 and out.strip().splitlines()[-1] == str(compare), err
    assert _drawn(compare)[2] > 20


def test_report_on_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["report", str(tmp_path)], capsys)
    assert code == 2 and "not a kft run folder" in err
