"""Every file kft reads, damaged in each usual way, gives one line naming it, exit code 2, no
traceback, and nothing written or removed; resume passes over a damaged newest checkpoint.

The whole grid (file x damage) runs in the default tier: tiny presets, no training where none
is needed.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, run_cli

TINY = os.path.join(CONFIGS, "tiny.yaml")
DAMAGES = ("empty", "truncated", "random bytes", "another's")


def damage(path, how: str, other: bytes) -> None:
    """Damage `path` as `how` says; `other` is a valid file of the same kind from elsewhere."""
    data = path.read_bytes()
    path.write_bytes(
        {
            "empty": b"",
            "truncated": data[: len(data) // 2 + 3],  # not on a line end: a cut JSONL line
            "random bytes": np.random.default_rng(0).bytes(max(len(data), 64)),
            "another's": other,
        }[how]
    )


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_naming(code, err, name):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("kft: error: ") and name in lines[-1], err
    assert "Traceback" not in err


def _other_safetensors():
    from safetensors.numpy import save

    return save({"decoder_block_9/attention/query/lora_kernel_a": np.zeros((2, 2), "float32")})


def _other_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    return path.read_bytes()


@pytest.fixture(scope="module")
def run_with_checkpoints(tiny_presets, tmp_path_factory):
    """A finished run with two checkpoints (steps 2 and 4)."""
    import kft

    return kft.train(
        TINY,
        **{
            "model.preset": tiny_presets["gemma3"],
            "train.epochs": None,
            "train.max_steps": 4,
            "train.checkpoint_every": 2,
            "train.checkpoint_keep": 2,
            "output.samples": 0,
            "output.tensorboard": False,
            "output.dir": str(tmp_path_factory.mktemp("damaged") / "run"),
        },
    ).run_dir


# file in the run folder -> (the command reading it, a valid file of its kind from elsewhere)
RUN_FILES = {
    "adapter_config.json": (
        ["generate", "--run", "{run}", "--max-new-tokens", "1", "hi"],
        b'{"kft_version": "0.0.1", "rank": 2}',
    ),
    "adapter.safetensors": (
        ["generate", "--run", "{run}", "--max-new-tokens", "1", "hi"],
        None,  # _other_safetensors()
    ),
    "config.yaml": (
        ["generate", "--run", "{run}", "--max-new-tokens", "1", "hi"],
        b"model:\n  preset: x\ndata:\n  prompt_template: '{q}'\n",
    ),
    "summary.json": (["report", "{run}"], b"[1, 2, 3]"),
    "metrics.jsonl": (["report", "{run}"], b'{"step": 1}\n[1, 2]\n'),
}


def grid(files):
    return [(f, d) for f in files for d in DAMAGES]


@pytest.mark.parametrize("name, how", grid(RUN_FILES))
def test_a_damaged_run_folder_file_is_one_line_naming_it(
    name, how, run_with_checkpoints, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(run_with_checkpoints, run)
    args, other = RUN_FILES[name]
    if how == "empty" and name == "metrics.jsonl":
        pytest.skip("an empty metrics.jsonl is a run with no rows yet")  # not damage
    damage(run / name, how, other if other is not None else _other_safetensors())
    before = snapshot(tmp_path)
    code, _, err = run_cli([a.replace("{run}", str(run)) for a in args], capsys)
    assert_one_line_naming(code, err, name)
    assert snapshot(tmp_path) == before


CHECKPOINT_FILES = ("state.json", "lora.safetensors", "optimizer.safetensors")


@pytest.mark.parametrize(
    "name, how",
    grid(CHECKPOINT_FILES),
)
def test_resume_with_every_checkpoint_damaged_is_one_line_naming_the_file(
    name, how, run_with_checkpoints, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(run_with_checkpoints, run)
    other = b'{"micro_step": 1}' if name == "state.json" else _other_safetensors()
    for checkpoint in sorted((run / "checkpoints").glob("step-*")):
        damage(checkpoint / name, how, other)
    before = snapshot(tmp_path)
    code, _, err = run_cli(["train", "--resume", str(run)], capsys)
    assert_one_line_naming(code, err, name)
    assert snapshot(tmp_path) == before


def test_resume_passes_over_a_damaged_newest_checkpoint_and_says_so(
    run_with_checkpoints, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(run_with_checkpoints, run)
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    damage(newest / "lora.safetensors", "truncated", b"")
    code, out, err = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 0, err
    earlier = sorted((run_with_checkpoints / "checkpoints").glob("step-*"))[-2].name
    assert f"{newest / 'lora.safetensors'} is not a readable safetensors file" in out
    assert f"resuming from {earlier} instead" in out
    assert json.loads((run / "summary.json").read_text())["optimizer_steps"] == 4


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_gptq_calibration_is_one_line_naming_it(how, tmp_path):
    from kft.core.errors import KftError
    from kft.quant import quantize

    path = tmp_path / "calibration.npz"
    tokens = np.ones((2, 8), "int32")
    np.savez(path, token_ids=tokens, padding_mask=tokens.astype(bool))
    damage(path, how, _other_npz(tmp_path))
    with pytest.raises(KftError, match="calibration.npz"):
        quantize.load_calibration(tmp_path, {"calibration": "calibration.npz"})


# data file -> {damage: content}; what a data file can be damaged into (a cut CSV is still a CSV)
DATA = {
    "d.jsonl": {
        "empty": b"",
        "random bytes": np.random.default_rng(1).bytes(256),
        "wrong encoding": '{"instruction": "caf\u00e9", "response": "x"}\n'.encode("utf-16"),
        "not what its name says": b"instruction,response\nWhat?,That.\n",
    },
    "d.csv": {
        "empty": b"",
        "random bytes": np.random.default_rng(2).bytes(256),
        "wrong encoding": "instruction,response\ncaf\u00e9,x\n".encode("latin-1"),
        "not what its name says": b"PAR1\x00\x01binary",
    },
    "d.parquet": {
        "empty": b"",
        "random bytes": np.random.default_rng(3).bytes(256),
        "not what its name says": b'{"instruction": "What?", "response": "That."}\n',
    },
}


@pytest.mark.parametrize(
    "name, how",
    [(f, d) for f, damages in DATA.items() for d in damages],
)
def test_a_damaged_data_file_is_one_line_naming_it(name, how, tmp_path, capsys):
    (tmp_path / name).write_bytes(DATA[name][how])
    before = snapshot(tmp_path)
    code, _, err = run_cli(
        [
            "train",
            "--config",
            TINY,
            "--data",
            str(tmp_path / name),
            "--output-dir",
            str(tmp_path / "r"),
        ],
        capsys,
    )
    assert_one_line_naming(code, err, name)
    assert snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def hf_folder(tiny_presets, tmp_path_factory):
    """Tiny Gemma 3 and Gemma 2 as Hugging Face folders (kft's own export of the bases)."""
    from kft.export import export

    root = tmp_path_factory.mktemp("hf")
    return {
        family: export(None, "hf", str(root / family), preset=tiny_presets[family], base=True)
        for family in ("gemma3", "gemma2")
    }


# preset folder kind -> {file: the other model's file to swap in}
PRESET_FILES = {
    "keras": {"model.weights.h5": "gemma2", "config.json": "gemma2"},
    "hf": {"model.safetensors": "gemma2", "config.json": None},
}


@pytest.mark.parametrize(
    "kind, name, how",
    [(k, f, d) for k, names in PRESET_FILES.items() for f in names for d in DAMAGES],
)
def test_a_damaged_preset_folder_is_one_line(
    kind, name, how, tiny_presets, hf_folder, tmp_path, capsys
):
    source = {"keras": tiny_presets["gemma3"], "hf": hf_folder["gemma3"]}[kind]
    folder = tmp_path / "preset"
    shutil.copytree(source, folder)
    donor = PRESET_FILES[kind][name]
    if donor is None:  # config.json that says Gemma 4 over Gemma 3's weights
        config = json.loads((folder / name).read_text())
        other = json.dumps({**config, "model_type": "gemma4_text"}).encode()
    else:
        donor_folder = {"keras": tiny_presets[donor], "hf": hf_folder[donor]}[kind]
        other = (Path(donor_folder) / name).read_bytes()
    damage(folder / name, how, other)
    before = snapshot(tmp_path)
    code, _, err = run_cli(
        ["train", "--config", TINY, "--preset", str(folder), "--output-dir", str(tmp_path / "r")],
        capsys,
    )
    assert_one_line_naming(code, err, str(folder))
    assert snapshot(tmp_path) == before


def test_a_half_written_prepared_preset_is_built_again(tmp_path, monkeypatch, capsys):
    from kft.models import presets

    monkeypatch.setenv("KFT_CACHE", str(tmp_path))
    folder = tmp_path / "presets" / "tiny_gemma"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"class_name": "GemmaBackbone", "con')  # cut short
    assert presets.prepare("tiny_gemma") == folder
    assert "preparing preset 'tiny_gemma'" in capsys.readouterr().err
    assert presets.is_complete(folder) and (folder / "model.weights.h5").is_file()
    (folder / "model.weights.h5").write_bytes(b"")  # damaged after it was built
    assert not presets.is_complete(folder)


PEAK = (
    "import atexit, sys\n"
    "def peak():\n"
    "    kb = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]\n"
    "    print(f'PEAK_KB {kb}', file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "from kft.cli import main\n"
    "main(sys.argv[1:])\n"
)
BIG_LINE_MB = 50
# Over the same run's peak on a one-record file: with the limit raised the line is read (the
# file, then its column) and cut to seq_len's share before tokenizing. Refused, it stops before
# the model loads. Measured: docs/runs.md, "What kft checks".
CUT_BOUND_MB = 4 * BIG_LINE_MB


def _peak_mb(args, tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", PEAK, *args], capture_output=True, text=True, cwd=tmp_path
    )
    kb = [line for line in done.stderr.splitlines() if line.startswith("PEAK_KB ")][-1]
    return done.returncode, done.stderr, int(kb.split()[1]) / 1024


def test_a_record_of_50_mb_is_refused_or_cut_with_memory_bounded(tmp_path):
    record = {
        "instruction": "Summarise: " + "lorem ipsum " * (BIG_LINE_MB * 2**20 // 12),
        "response": "x",
    }
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    small.write_text(json.dumps({"instruction": "What?", "response": "That."}) + "\n")
    big.write_text(small.read_text() + json.dumps(record) + "\n")
    train = ["train", "--config", TINY, "--output-dir", str(tmp_path / "run"), "--overwrite"]
    quick = ["--max-steps", "1", "--batch-size", "1", "--set", "output.samples=0"]

    code, err, baseline = _peak_mb([*train, *quick, "--data", str(small)], tmp_path)
    assert code == 0, err[-2000:]
    code, err, refused = _peak_mb([*train, *quick, "--data", str(big)], tmp_path)
    assert code == 2 and "big.jsonl line 2 is longer than data.max_record_bytes" in err, err[-2000:]
    assert refused < baseline, (refused, baseline)
    limit = ["--set", f"data.max_record_bytes={(BIG_LINE_MB + 1) * 2**20}"]
    code, err, cut = _peak_mb([*train, *quick, *limit, "--data", str(big)], tmp_path)
    assert code == 0, err[-2000:]
    assert cut < baseline + CUT_BOUND_MB, (cut, baseline)
    print(
        f"peak RSS: one-record run {baseline:.0f} MB, 50 MB line refused {refused:.0f} MB, cut {cut:.0f} MB"
    )
