"""Publishing: a dry run shows the card and files; no credentials fail cleanly; secrets are never written."""

import os
from pathlib import Path

from conftest import CONFIGS, run_cli

SECRETS = {
    "KAGGLE_USERNAME": "kft-test-user-7f3a",
    "KAGGLE_KEY": "kaggle-secret-5c1e9b2d",
    "HF_TOKEN": "hf_testSecretToken0123456789",
}


def test_dry_run_prints_the_model_card_and_files_and_uploads_nothing(family_run, capsys):
    result, _ = family_run
    code, out, err = run_cli(
        ["publish", str(result.run_dir), "--to", "kaggle://someone/my-gemma/keras/v1", "--dry-run"],
        capsys,
    )
    assert code == 0, err
    assert "would upload keras folder" in out and "model.weights.h5" in out and "MB" in out
    assert (
        "## Training procedure" in out
        and "LoRA: rank 2, alpha 4.0" in out
        and "Gemma Terms of Use" in out
    )
    assert "nothing uploaded" in out


def test_publish_without_credentials_fails_in_one_line(tiny_presets, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run_cli(
        ["publish", tiny_presets["gemma"], "--to", "kaggle://a/b/keras/c"], capsys
    )
    assert code == 2 and "no Kaggle credentials" in err and "Traceback" not in err
    code, _, err = run_cli(["publish", tiny_presets["gemma"], "--to", "hf://a/b"], capsys)
    assert code == 2 and "no Hugging Face token" in err


def test_bad_destination_is_refused(tiny_presets, capsys):
    code, _, err = run_cli(["publish", tiny_presets["gemma"], "--to", "s3://bucket/x"], capsys)
    assert code == 2 and "kaggle://OWNER/MODEL/keras/VARIANT" in err


def test_no_credential_value_is_ever_written_by_train_export_or_publish(
    tmp_path, capsys, monkeypatch
):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    run = tmp_path / "run"
    code, out1, err1 = run_cli(
        [
            "train",
            "--config",
            os.path.join(CONFIGS, "tiny.yaml"),
            "--max-steps",
            "2",
            "--output-dir",
            str(run),
            "--set",
            "output.samples=1",
        ],
        capsys,
    )
    assert code == 0, err1
    for fmt in ("keras", "hf", "peft"):
        code, _, err = run_cli(
            ["export", str(run), "--format", fmt, "--out", str(tmp_path / fmt)], capsys
        )
        assert code == 0, err
    code, out2, err2 = run_cli(
        ["publish", str(run), "--to", "hf://someone/repo", "--dry-run"], capsys
    )
    assert code == 0, err2
    written = [p for p in Path(tmp_path).rglob("*") if p.is_file()]
    assert len(written) > 15
    for path in written:
        data = path.read_bytes()
        assert not any(value.encode() in data for value in SECRETS.values()), path
    assert not any(value in out1 + err1 + out2 + err2 for value in SECRETS.values())
