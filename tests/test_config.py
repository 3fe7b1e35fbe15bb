"""Config: YAML <-> dataclasses, overrides, and one-line errors before any model loads."""

import glob
import os

import pytest
import yaml
from conftest import CONFIGS, run_cli

from kft import config as config_lib
from kft.core.errors import ConfigError


def test_defaults_are_the_measured_recipe_on_the_tutorials_data():
    """Dolly on Gemma 2 2B as the tutorial, with the LoRA recipe benchmarks/quality.py chose."""
    c = config_lib.load()
    assert c.data.source == "databricks/databricks-dolly-15k" and c.data.template == "dolly"
    assert (c.lora.rank, c.lora.alpha, c.lora.targets) == (8, None, ["all-linear"])
    assert (c.train.lr, c.train.schedule, c.train.weight_decay) == (1e-3, "cosine", 0.0)
    assert c.data.seq_len == 256


def test_the_tutorial_config_keeps_the_tutorials_exact_settings():
    c = config_lib.load(os.path.join(CONFIGS, "gemma2_2b_dolly.yaml"))
    assert (c.lora.rank, c.lora.alpha, c.lora.targets) == (4, 4, ["query", "value"])
    assert (c.train.lr, c.train.schedule, c.train.weight_decay) == (5e-5, "constant", 0.01)
    assert c.train.warmup_steps == 0


def test_kft_train_rank_4_keeps_rank_4_and_the_other_defaults():
    c = config_lib.load(None, {"lora.rank": 4})
    from kft.models import lora

    assert c.lora.rank == 4 and lora.alpha_of(4, c.lora.alpha) == 8.0
    assert c.lora.targets == ["all-linear"] and c.train.lr == 1e-3


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "*.yaml"))))
def test_every_shipped_config_validates_and_says_how_to_run_it(path):
    first_line = open(path, encoding="utf-8").readline()
    assert first_line.startswith("# Run: kft train --config configs/" + os.path.basename(path))
    config_lib.load(path)


def test_required_configs_are_shipped():
    names = {os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, "*.yaml"))}
    assert {"gemma2_2b_dolly.yaml", "tiny.yaml", "gemma_chat_custom.yaml"} <= names


def test_flags_and_set_override_yaml_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora: {rank: 8}\ntrain: {lr: 0.001}\n")
    c = config_lib.load(str(path), {"lora.rank": 16, "data.columns": {"instruction": "q"}})
    assert c.lora.rank == 16 and c.train.lr == 0.001 and c.data.columns == {"instruction": "q"}
    assert config_lib.parse_set("train.max_steps=null") == ("train.max_steps", None)
    assert config_lib.parse_set("lora.targets=query,value,key") == (
        "lora.targets",
        "query,value,key",
    )
    assert config_lib.load(None, {"lora.targets": "query,key"}).lora.targets == ["query", "key"]


def test_resolved_config_round_trips_through_yaml():
    c = config_lib.load(
        None,
        {
            "lora.alpha": 32,
            "data.prompt_format": "질문: {q}\n",
            "data.template": "custom",
            "data.response_format": "{a}",
        },
    )
    again = config_lib.from_dict(yaml.safe_load(config_lib.to_yaml(c)))
    assert again == c


def test_reference_lists_every_key():
    reference = config_lib.reference_markdown()
    for key in config_lib.all_keys():
        assert f"`{key}`" in reference


BAD = [
    (["--rank", "0"], "lora.rank"),
    (["--alpha", "-1"], "lora.alpha"),
    (["--seq-len", "4"], "data.seq_len"),
    (["--lr", "0"], "train.lr"),
    (["--batch-size", "0"], "train.batch_size"),
    (["--data", "missing/file.jsonl"], "data.source"),
    (["--set", "lora.rnak=4"], "did you mean 'lora.rank'"),
    (["--set", "trian.lr=1"], "did you mean 'train.lr'"),
    (["--set", "train.epochs=two"], "train.epochs"),
    (["--set", "lora.targets=[qury]"], "did you mean 'query'"),
    (["--set", "model.precision=fp8"], "model.precision"),
    (["--set", "data.template=alpaca"], "data.template"),
    (["--set", "data.eval_fraction=1.5"], "data.eval_fraction"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_config_values_exit_2_with_one_line_naming_the_key(args, needle, capsys):
    code, out, err = run_cli(["train", *args], capsys)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_malformed_yaml_is_reported_with_its_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("lora:\n  rank: 4\n train: [\n")
    code, _, err = run_cli(["train", "--config", str(path)], capsys)
    assert code == 2 and "not valid YAML at line" in err and "Traceback" not in err


def test_errors_are_config_errors_not_crashes():
    with pytest.raises(ConfigError, match="lora.rank"):
        config_lib.from_dict({"lora": {"rank": True}})


def test_an_int4_group_size_below_8_is_refused_with_the_key_and_a_fix(capsys):
    code, _, err = run_cli(
        ["plan", "--set", "model.quantize=int4", "--set", "model.int4_block_size=4"], capsys
    )
    assert (
        code == 2 and "model.int4_block_size" in err and "try 64" in err and "Traceback" not in err
    )


# One value outside each numeric key's range (the range its help text states).
OUT_OF_RANGE = {
    "model.int4_block_size": 4,
    "model.calibration_examples": 0,
    "lora.rank": 0,
    "lora.alpha": 0.0,
    "lora.plus_ratio": 0.0,
    "data.seq_len": 4,
    "data.max_examples": 0,
    "data.eval_fraction": 1.0,
    "data.max_record_bytes": 0,
    "train.epochs": 0,
    "train.max_steps": 0,
    "train.batch_size": 0,
    "train.grad_accum": 0,
    "train.lr": -1e-4,
    "train.weight_decay": -0.1,
    "train.warmup_steps": -1,
    "train.clip_norm": 0.0,
    "train.log_every": 0,
    "train.eval_every": -1,
    "train.eval_samples": 0,
    "train.early_stop": -1,
    "train.pad_to_multiple": -8,
    "train.checkpoint_every": 0,
    "train.checkpoint_keep": 0,
    "train.beta": 0.0,
    "train.orpo_lambda": -0.1,
    "output.samples": -1,
    "output.sample_max_new_tokens": 0,
}


def numeric_keys() -> dict:
    """{key: (int or float, its help text)} for every numeric config key."""
    import dataclasses
    import typing

    found = {}
    for section, cls in config_lib.section_classes().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kinds = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
            kind = (kinds or [hints[f.name]])[0]
            if kind in (int, float):
                found[f"{section}.{f.name}"] = (kind, f.metadata["help"])
    return found


def test_every_numeric_key_states_its_range_and_refuses_values_outside_it():
    import re

    keys = numeric_keys()
    assert sorted(set(keys) - {"train.seed"}) == sorted(OUT_OF_RANGE)  # a new key needs a line here
    stated = re.compile(r"\((?:[^()]*[<>]=?|any )[^()]*\)")
    assert [k for k, (_, text) in keys.items() if not stated.search(text)] == []
    for key, value in OUT_OF_RANGE.items():
        section, name = key.split(".")
        with pytest.raises(ConfigError, match=re.escape(key)):
            config_lib.from_dict({section: {name: value}})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_key_refuses_nan_and_infinity(value):
    floats = [k for k, (kind, _) in numeric_keys().items() if kind is float]
    assert "train.lr" in floats and "data.eval_fraction" in floats
    for key in floats:
        section, name = key.split(".")
        with pytest.raises(ConfigError, match=f"'{key}' must be a finite number"):
            config_lib.from_dict({section: {name: value}})


def test_a_float_written_without_a_dot_is_a_number_in_yaml_and_in_set(tmp_path):
    # YAML 1.1 (PyYAML) reads 5e-5 as the string "5e-5"; kft reads it as the number it means.
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 5e-5\n")
    assert config_lib.load(str(path)).train.lr == 5e-5
    assert config_lib.load(None, {"train.lr": "2e-4"}).train.lr == 2e-4
    with pytest.raises(ConfigError, match="'train.lr' must be a number, got 'fast'"):
        config_lib.load(None, {"train.lr": "fast"})
