"""`output.wandb`: config, metrics rows and the samples table reach a W&B run (offline, read back from its files)."""

import json
import os
import struct
import time

import pytest
from conftest import CONFIGS


def wandb_records(path):
    """The protobuf records of an offline .wandb file (a LevelDB-style log: 32 KiB blocks of chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, pos, parts, block = open(path, "rb").read(), 7, b"", 32768  # 7: the ':W&B' header
    while pos + 7 <= len(raw):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", raw[pos + 4 : pos + 7])
        parts, pos = parts + raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


def items(updates):
    return {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in updates}


def test_wandb_run_gets_config_metrics_and_samples_offline(tiny_presets, tmp_path, monkeypatch):
    import kft

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    result = kft.train(
        os.path.join(CONFIGS, "tiny.yaml"),
        **{
            "model.preset": tiny_presets["gemma3"],
            "train.epochs": None,
            "train.max_steps": 4,
            "train.log_every": 2,
            "output.samples": 2,
            "output.tensorboard": False,
            "output.wandb": "kft-test",
            "output.dir": str(run_dir),
        },
    )
    [log] = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    # wandb's service process may still be writing the file when `finish` returns (seen once with the
    # suite's two workers busy: no run record yet); the run's last record is its exit.
    for _ in range(60):
        records = list(wandb_records(log))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.5)
    config = next(
        items(r.run.config.update) for r in records if r.WhichOneof("record_type") == "run"
    )
    assert config["lora"]["rank"] == 8 and config["output"]["wandb"] == "kft-test"
    history = [items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    logged = {h["_step"]: h["loss"] for h in history if "loss" in h}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == {r["step"]: pytest.approx(r["loss"]) for r in rows}
    [table_path] = list(log.parent.glob("files/media/table/samples_*.table.json"))
    table = json.loads(table_path.read_text())
    assert (
        table["columns"] == ["prompt", "reference", "before", "after"] and len(table["data"]) == 2
    )
    summaries = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summaries.update(items(r.summary.update))
    assert summaries["final_loss"] == pytest.approx(result.metrics["final_loss"])
