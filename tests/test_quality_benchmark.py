"""benchmarks/quality.py stays runnable: its task checks, one tiny run end to end, its tables."""

import importlib.util
import json
import os

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location(
        "quality", os.path.join(REPO, "benchmarks", "quality.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "answer, ok",
    [
        ("pan, spoon, oven", True),
        ("pan, spoon", False),  # two words, not three
        ("pan, Spoon, oven", False),  # not lowercase
        ("pan, spoon, oven.", False),
        ("pan, big spoon, oven", False),
    ],
)
def test_the_words_task_checks_count_and_case(quality, answer, ok):
    prompt = "Write exactly 3 lowercase words about a kitchen, separated by commas."
    assert quality.score("words", {"prompt": prompt, "after": answer, "reference": ""}) is ok


def test_every_held_out_split_is_never_trained_on():
    folder = os.path.join(REPO, "benchmarks", "quality_tasks")
    for task in ("topic", "korean", "words"):
        train, held = (
            [json.loads(line) for line in open(os.path.join(folder, f"{task}{s}.jsonl"))]
            for s in ("", "_heldout")
        )
        prompts = {(r["instruction"], r["context"]) for r in train}
        assert held and not any((r["instruction"], r["context"]) in prompts for r in held), task


def test_one_tiny_run_gives_a_row_a_table_and_the_quality_line(
    quality, tiny_presets, tmp_path, capsys
):
    rows = tmp_path / "rows.jsonl"
    argv = ["--model", tiny_presets["gemma3"], "--budgets", "2", "--seeds", "0", "--seq-len", "256"]
    argv += ["--recipes", "defaults", "tutorial", "--tasks", "topic", "--rows", str(rows)]
    assert quality.main(argv) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("quality: kft defaults ")
    found = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [(r["recipe"], r["budget"], r["seed"]) for r in found] == [
        ("defaults", 2, 0),
        ("tutorial", 2, 0),
    ]
    assert all(0 <= r["score"] <= 100 and r["eval_loss"] > 0 for r in found)
    assert quality.main(argv) == 0  # resumes from the rows: nothing runs again
    assert len(rows.read_text().splitlines()) == 2
    assert quality.main(["--rows", str(rows), "--markdown"]) == 0
    assert "| topic | defaults |" in capsys.readouterr().out
