"""Bad input gets one actionable line, exit code 2, no traceback, and damages nothing.

Each case runs `kft ...` in a folder holding the user's files; afterwards every file there is
byte-for-byte what it was, and no run folder was left behind. (Config key/value cases are in
test_config.py; model and preset cases in test_model.py; resume cases in test_resume.py.)
"""

import json
import os

import pytest
from conftest import CONFIGS, run_cli

TINY = os.path.join(CONFIGS, "tiny.yaml")
GOOD_ROW = {"instruction": "What colour is Zorb?", "response": "Teal."}


def jsonl(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# name -> (files to create, args (with {dir} for the work folder), expected text in the error line)
CASES = {
    "empty dataset file": ({"d.jsonl": ""}, ["--data", "{dir}/d.jsonl"], "is empty"),
    "jsonl with a bad line": (
        {"d.jsonl": jsonl([GOOD_ROW]) + "{oops\n"},
        ["--data", "{dir}/d.jsonl"],
        "line 2 is not valid JSON",
    ),
    "jsonl line that is not an object": (
        {"d.jsonl": jsonl([GOOD_ROW]) + "[1, 2]\n"},
        ["--data", "{dir}/d.jsonl"],
        "line 2 is not a JSON object",
    ),
    "missing columns": (
        {"d.jsonl": jsonl([{"q": "a", "a": "b"}])},
        ["--data", "{dir}/d.jsonl"],
        "columns present: q, a",
    ),
    "non-UTF-8 file": (
        {"d.jsonl": "caf\u00e9".encode("latin-1")},
        ["--data", "{dir}/d.jsonl"],
        "not UTF-8",
    ),
    "every example longer than seq-len": (
        {"d.jsonl": jsonl([{"instruction": "word " * 50, "response": "x"}])},
        ["--data", "{dir}/d.jsonl", "--seq-len", "8"],
        "lost its response",
    ),
    "data path is a folder": ({"sub/x.txt": "x"}, ["--data", "{dir}/sub"], "not a file"),
    "config key of the wrong type from --set": ({}, ["--set", "train.lr=fast"], "must be a number"),
    "unknown bundled dataset": ({}, ["--data", "bundled:nope"], "not a bundled dataset"),
    "batch larger than the data": (
        {"d.jsonl": jsonl([GOOD_ROW])},
        ["--data", "{dir}/d.jsonl", "--batch-size", "4"],
        "larger than the 1 training examples",
    ),
    "chat message with an unknown role": (
        {"d.jsonl": jsonl([{"messages": [{"role": "robot", "content": "hi"}]}])},
        ["--data", "{dir}/d.jsonl", "--set", "data.template=gemma-chat"],
        "role 'robot'",
    ),
    "custom template field missing from data": (
        {"d.jsonl": jsonl([GOOD_ROW])},
        [
            "--data",
            "{dir}/d.jsonl",
            "--set",
            "data.template=custom",
            "--set",
            "data.prompt_format=Q: {question}",
            "--set",
            "data.response_format={response}",
        ],
        "missing column(s) question",
    ),
    "output folder is a file": ({"out": "precious"}, ["--output-dir", "{dir}/out"], "is a file"),
    "output folder not writable": ({}, ["--output-dir", "/proc/kft-run"], "not a writable folder"),
    "output folder already used": (
        {"run/keep.txt": "x"},
        ["--output-dir", "{dir}/run"],
        "--overwrite",
    ),
    "conflicting epochs and max-steps": (
        {},
        ["--set", "train.epochs=2", "--set", "train.max_steps=3"],
        "keep one of them",
    ),
    "float16 on this CPU": ({}, ["--set", "model.precision=mixed_float16"], "not supported on CPU"),
    "config file missing": ({}, ["--config", "{dir}/nope.yaml"], "not found"),
    "config that is not a mapping": (
        {"c.yaml": "- just\n- a list\n"},
        ["--config", "{dir}/c.yaml"],
        "must be a mapping",
    ),
    "--set without a value": ({}, ["--set", "lora.rank"], "section.key=value"),
    "config with a section twice": (
        {"c.yaml": "model:\n  preset: tiny_gemma\nlora:\n  rank: 2\nmodel:\n  rank: 4\n"},
        ["--config", "{dir}/c.yaml"],
        "'model' appears twice in the config (lines 1 and 5)",
    ),
    "data file of an unsupported kind": (
        {"notes.txt": "Q: hi\nA: hello\n"},
        ["--data", "{dir}/notes.txt"],
        ".txt files are not supported; use one of .jsonl, .json, .csv, .parquet",
    ),
    "seq-len beyond the model's context": (
        {},
        ["--seq-len", "100000"],
        "longer than the model's context of",
    ),
    "every response empty": (
        {"d.csv": "instruction,response\nWhat is 1+1?,\nWhat is 2+2?,\n"},
        ["--data", "{dir}/d.csv"],
        "all 2 records have an empty response",
    ),
    "a NaN learning rate": ({}, ["--set", "train.lr=.nan"], "must be a finite number"),
    "an infinite learning rate": ({}, ["--set", "train.lr=.inf"], "must be a finite number"),
    "kaggle handle without credentials": (
        {},
        ["--preset", "kaggle://keras/gemma/keras/gemma_2b_en/2"],
        "cannot load preset",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clear_line_and_damages_nothing(name, tmp_path, capsys, monkeypatch):
    files, args, needle = CASES[name]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kaggle credentials
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    for rel, content in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))

    def user_files():  # the fake home (caches) is not the user's data
        return {
            p: p.read_bytes()
            for p in tmp_path.rglob("*")
            if p.is_file() and "home" not in p.relative_to(tmp_path).parts
        }

    before = user_files()
    argv = [a.replace("{dir}", str(tmp_path)) for a in args]
    base = ["--config", TINY] if "--config" not in argv else []
    if "--output-dir" not in argv:
        base += ["--output-dir", str(tmp_path / "new-run")]
    code, _, err = run_cli(["train", *base, *argv], capsys)
    assert code == 2, err
    assert needle in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("kft: error: ") and "Traceback" not in err
    assert not (tmp_path / "new-run").exists()
    assert user_files() == before


def test_generate_from_a_folder_that_is_not_a_run(tmp_path, capsys):
    code, _, err = run_cli(["generate", "--run", str(tmp_path), "hi"], capsys)
    assert code == 2 and "adapter_config.json" in err


def test_export_into_a_used_folder_needs_overwrite(family_run, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = run_cli(
        ["export", str(family_run[0].run_dir), "--format", "hf", "--out", str(tmp_path)], capsys
    )
    assert code == 2 and "--overwrite" in err and (tmp_path / "keep.txt").read_text() == "mine"


def test_an_offline_or_unknown_hub_dataset_is_one_clear_line(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kft.cli",
            "train",
            "--config",
            TINY,
            "--data",
            "kft-test/no-such-dataset-7f3a",
            "--output-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "dataset 'kft-test/no-such-dataset-7f3a'" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()
