"""One YAML file <-> one tree of dataclasses.

Every key has a default here, and its `help` text is the single documentation of the key
(`kft config` prints it; docs/config.md is generated from it). Loading checks
keys, types and values before anything heavy is imported, so mistakes cost a second, not a
model load.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from kft import families
from kft.core.errors import ConfigError, KftError

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16", "bfloat16", "float16")
TEMPLATES = ("dolly", "chat", *families.CHAT_TEMPLATES, "text", "custom")
SCHEDULES = ("constant", "linear", "cosine")
ALL_LINEAR = "all-linear"
LORA_LAYER_NAMES = families.LORA_LAYERS


# model.quantize: what kft trains LoRA on (kft.quant does the work; these are its choices).
QUANTIZE_MODES = ("none", "int8", "int4")
# Keras has these too; none of them trains LoRA correctly (see `check_quantize`).
QUANTIZE_REFUSED = {
    "float8": "Keras' float8 layers raise in the forward pass once LoRA is enabled",
    "gptq": "Keras' GPTQ layers refuse enable_lora (kft's int4 can round by GPTQ: model.int4_rounding gptq)",
    "awq": "Keras' AWQ layers silently ignore the LoRA factors",
}
INT4_BLOCK_SIZE = 64  # rows per int4 group (QLoRA's block size); config key model.int4_block_size
# How the int4 groups' scales and zero points are chosen: "least-squares" (kft.quant.int4_groups) or
# "full" (Keras' own full range; what adapters saved before kft chose them record by saying nothing).
INT4_RANGES = ("least-squares", "full")
# How int4 codes are chosen on that grid: the nearest code, or GPTQ's (kft.quant.gptq), which needs
# calibration examples (config keys model.int4_rounding, model.calibration_examples).
INT4_ROUNDINGS = ("least-squares", "gptq")
# The config's default: gptq where `kft plan` says its work at load fits (kft.plan.int4_rounding).
AUTO = "auto"


def check_quantize(mode: str, policy: str | None = None) -> None:
    """Refuse a quantization kft cannot train under LoRA, in one line."""
    if mode in QUANTIZE_REFUSED:
        raise KftError(
            f"model.quantize {mode} is not supported: {QUANTIZE_REFUSED[mode]}; use int8 or int4"
        )
    if mode not in QUANTIZE_MODES:
        raise KftError(f"model.quantize must be one of {', '.join(QUANTIZE_MODES)}, got '{mode}'")
    if mode == "int8" and policy is not None and "float16" in policy and "bfloat16" not in policy:
        raise KftError(
            "model.quantize int8 with float16 compute is not supported (int8 kernels scaled into "
            "float16 overflow); use model.precision float32 or mixed_bfloat16, or model.quantize int4"
        )


def quantized_bytes_per_param(mode: str, int4_block_size: int) -> float:
    return {"int8": 1.0, "int4": 0.5 + 5.0 / int4_block_size}[
        mode
    ]  # int4: float32 scale + int8 zero per group


def check_rounding(mode: str, int4_rounding: str, choices=(AUTO, *INT4_ROUNDINGS)) -> None:
    if int4_rounding not in choices:
        raise KftError(
            f"model.int4_rounding must be one of {', '.join(choices)}, got '{int4_rounding}'"
        )
    if int4_rounding == "gptq" and mode != "int4":
        raise KftError(f"model.int4_rounding gptq applies to model.quantize int4, not {mode}")


def _key(default, help, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    preset: str = _key(
        "gemma2_2b_en",
        "KerasHub preset: a preset name or kaggle:// handle, a local Keras preset folder, a "
        "Hugging Face-format folder, or a kft-prepared name (tiny_gemma, tiny_gemma2, tiny_gemma3, "
        "tiny_gemma4, tiny_gemma4_moe).",
    )
    precision: str = _key(
        "auto",
        "Dtype policy: auto (mixed_bfloat16 on TPU and bf16-capable GPUs, float32 otherwise), "
        "float32, mixed_bfloat16, bfloat16, mixed_float16, float16 (Gemma overflows in float16).",
    )
    quantize: str = _key(
        "none",
        "Quantize the frozen base (QLoRA): none, int8 or int4 (weights only; the decoder's projections, "
        "the token embedding stays float). LoRA factors stay float; exports merge into the float base.",
    )
    int4_block_size: int = _key(
        64,
        "int4 only: rows per group sharing a scale and zero point (5 bytes per group and column): "
        "32 stays closer to the float model, 128 takes less memory (>= 8).",
    )
    int4_rounding: str = _key(
        "auto",
        "int4 only: how codes are chosen on each group's grid: least-squares (the nearest code), gptq "
        "(GPTQ's error feedback through each layer's inputs on model.calibration_examples training "
        "examples: closer to the float model's outputs, one extra forward pass of the float model at load), "
        "or auto: gptq where kft plan says its work at load fits, else least-squares.",
    )
    calibration_examples: int = _key(
        64,
        "int4_rounding gptq (or auto) only: how many of the first training examples calibrate it "
        "(saved with the adapter; >= 1).",
    )
    init_adapter: str = _key(
        "",
        "A run folder to start from (preference tuning after SFT): on a float base its LoRA is "
        "merged into the base and a new LoRA trains on top (exports merge both); on an int8/int4 "
        "base (the run's own quantize mode) the base is rebuilt as that run's was and its LoRA goes "
        "on training. The run keeps a copy ('' = none).",
    )


@dataclass
class LoraConfig:
    rank: int = _key(8, "LoRA rank (> 0).")
    alpha: Optional[float] = _key(
        None, "LoRA alpha; the update is scaled by alpha/rank (> 0). null = 2 x rank."
    )
    targets: list = _key(
        ["all-linear"],
        "Layers to adapt: any of query, key, value, attention_output, ffw_gating, ffw_gating_2, "
        "ffw_linear, or [all-linear] for all seven (the default; KerasHub's is query+value).",
    )
    rslora: bool = _key(
        False,
        "Rank-stabilized LoRA: scale the update by alpha/sqrt(rank) instead of alpha/rank "
        "(exported as PEFT use_rslora; merges use the same scale).",
    )
    plus_ratio: Optional[float] = _key(
        None,
        "LoRA+: the B factors' learning rate is this times train.lr (e.g. 16), a real per-variable "
        "learning rate in AdamW (null = off; > 0).",
    )


@dataclass
class DataConfig:
    source: str = _key(
        "databricks/databricks-dolly-15k",
        "A Hugging Face datasets name, or a local .jsonl/.json/.csv/.parquet file.",
    )
    split: str = _key("train", "Split to read from a hub dataset.")
    template: str = _key(
        "dolly",
        "dolly (Instruction/Response), chat (the model family's chat turns from a messages column, "
        "or prompt/response: gemma-chat for Gemma 1-3, gemma4-chat, llama3-chat, llama2-chat, "
        "mistral-chat, qwen-chat, qwen3-chat, chatml; each also by name), text (a pre-formatted "
        "`text` column trained as is, every token), or custom (prompt_format + response_format).",
    )
    prompt_format: str = _key(
        "", "custom template: Python format string for the prompt, e.g. 'Q: {question}\\nA: '."
    )
    response_format: str = _key(
        "", "custom template: format string for the trained response, e.g. '{answer}'."
    )
    columns: dict = _key(
        {},
        "Map template fields to dataset columns, e.g. {instruction: question, response: answer}. "
        "Fields: dolly uses instruction/context/response, chat uses messages.",
    )
    drop_with_context: bool = _key(
        False, "dolly: drop records with a non-empty context (as the Keras tutorial does)."
    )
    seq_len: int = _key(256, "Tokens per training example (>= 8).")
    overlong: str = _key("truncate", "Examples longer than seq_len: truncate or drop.")
    max_examples: Optional[int] = _key(
        None, "Use at most this many examples, after shuffling (> 0). null = all."
    )
    eval_fraction: float = _key(0.0, "Fraction of examples held out for evaluation (0 <= x < 1).")
    max_record_bytes: int = _key(
        1_000_000,
        "Longest line (one record) of a .jsonl or .csv file kft reads, in bytes (> 0); a longer one "
        "is refused with its line number before anything loads. Text past seq_len is cut anyway.",
    )
    eval_source: str = _key(
        "",
        "A separate held-out dataset (same forms as source) to evaluate on; replaces eval_fraction.",
    )
    loss_on: str = _key(
        "response", "response (prompt tokens get loss weight 0) or all (full-sequence loss)."
    )
    shuffle: bool = _key(
        True, "Shuffle examples (with train.seed) before max_examples and the eval split."
    )
    packing: bool = _key(
        False,
        "Pack several training examples into each seq_len row; each attends only to itself "
        "(block-diagonal mask, positions restarting), so the loss is unchanged and little "
        "padding is computed. Needs train.logits_on: trained. Preference pairs are packed whole "
        "into rows of 2 x seq_len.",
    )


@dataclass
class TrainConfig:
    objective: str = _key(
        "sft",
        "sft (learn the responses), dpo (prefer each record's chosen answer over its rejected one, "
        "against the model before training) or orpo (SFT on the chosen answer + an odds-ratio "
        "preference term, no reference). dpo/orpo read prompt + chosen + rejected records.",
    )
    beta: float = _key(
        0.1, "dpo: how far from the reference the policy may move (higher = closer; > 0)."
    )
    orpo_lambda: float = _key(
        0.1, "orpo: weight of the odds-ratio term next to the chosen answer's loss (> 0)."
    )
    epochs: Optional[int] = _key(
        None, "Passes over the training examples (>= 1; null = 1 unless max_steps is set)."
    )
    max_steps: Optional[int] = _key(
        None, "Train for exactly this many optimizer steps instead of epochs (> 0, or null)."
    )
    batch_size: int = _key(
        1, "Examples per micro-batch (>= 1); with a preference objective, pairs (two answers each)."
    )
    grad_accum: int = _key(1, "Micro-batches per optimizer step (gradient accumulation; >= 1).")
    lr: float = _key(1e-3, "Peak learning rate (AdamW; > 0). The tutorial's is 5e-5.")
    weight_decay: float = _key(
        0.0, "AdamW decoupled weight decay (>= 0); bias and scale are excluded."
    )
    schedule: str = _key(
        "cosine", "Learning-rate schedule after warmup: constant, linear or cosine."
    )
    warmup_steps: int = _key(0, "Linear warmup, in optimizer steps (>= 0).")
    clip_norm: Optional[float] = _key(
        None, "Clip gradients to this global norm (> 0). null = no clipping."
    )
    seed: int = _key(0, "Seed for shuffling, LoRA initialisation and sampling (any whole number).")
    log_every: int = _key(10, "Print and record metrics every N optimizer steps (>= 1).")
    eval_every: int = _key(
        0,
        "Measure the held-out loss (and output.metric on train.eval_samples held-out prompts) every "
        "N optimizer steps while training; needs an eval split (>= 0; 0 = only before and after).",
    )
    eval_samples: int = _key(
        16,
        "Held-out prompts answered and scored at each evaluation when output.metric is set (>= 1).",
    )
    keep_best: str = _key(
        "",
        "Keep the adapter of the best evaluation as the run's adapter: eval_loss or metric "
        "('' = the last step's; the last one stays in the checkpoint). Needs train.eval_every.",
    )
    early_stop: int = _key(
        0,
        "Stop after N evaluations without improvement (of keep_best's measure, else the eval loss; "
        ">= 0, 0 = never). Needs train.eval_every.",
    )
    logits_on: str = _key(
        "trained",
        "Loss from vocabulary logits at trained positions only, 32 positions at a "
        "time (trained: same loss, less compute and memory) or from full logits at "
        "every position (all: KerasHub's plain path).",
    )
    pad_to_multiple: int = _key(
        64,
        "Cut each batch to its longest example rounded up to this multiple "
        "(a few compiled shapes, little padding; a shape that saves the run less than "
        "3 batches' work runs at the next longer one); 0 = always pad to data.seq_len (>= 0).",
    )
    group_by_length: bool = _key(
        True, "Batch examples of similar length together (seeded), so little padding is computed."
    )
    checkpoint_every: int = _key(
        50, "Write a resumable checkpoint every N optimizer steps, and at the end (>= 1)."
    )
    checkpoint_keep: int = _key(2, "How many of the newest checkpoints to keep (>= 1).")
    memory_check: bool = _key(
        True,
        "Before loading, estimate the peak memory per device (as `kft plan` prints) and "
        "stop with advice if it does not fit; false = try anyway.",
    )
    distribution: str = _key(
        "auto",
        "Devices to train on: auto (one device: single; several: data parallel if the "
        "model fits one device, else model parallel with the smallest model axis that "
        "fits), single, data (model replicated, batch split) or model (weights sharded "
        "by kft's layouts on the mesh).",
    )
    mesh: str = _key(
        "",
        "Device mesh BATCHxMODEL, e.g. 1x8 or 2x4, on the first BATCH*MODEL devices (all of them "
        "on several hosts); empty = chosen by train.distribution. train.batch_size must divide by BATCH.",
    )


@dataclass
class OutputConfig:
    dir: str = _key("runs/{preset}-{time}", "Run folder; {preset} and {time} are filled in.")
    samples: int = _key(
        3, "Eval prompts to generate from before and after training (>= 0; 0 = none)."
    )
    sample_max_new_tokens: int = _key(64, "New tokens per sample generation (>= 1).")
    measure_before: bool = _key(
        True,
        "Measure the base model before training (held-out loss, samples, metric) for the before -> "
        "after report; false skips it (sweeps that measure the same base many times).",
    )
    tensorboard: bool = _key(True, "Write TensorBoard logs to RUN/tensorboard.")
    wandb: str = _key(
        "",
        "Weights & Biases project to log config, metrics and the samples table to ('' = off; "
        "pip install 'kft[wandb]'; WANDB_MODE=offline keeps it local).",
    )
    metric: str = _key(
        "none",
        "Score the before/after samples: none, exact (string match) or json (parsed JSON equal).",
    )
    overwrite: bool = _key(False, "Allow writing into a run folder that already holds files.")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def section_classes() -> dict:
    """{section name: its dataclass}, in config order."""
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


def all_keys() -> list[str]:
    """Every valid dotted key, e.g. 'lora.rank'."""
    return [
        f"{s}.{f.name}" for s, cls in section_classes().items() for f in dataclasses.fields(cls)
    ]


def _suggest(bad: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(bad, candidates, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(candidates)}"


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the field's type; allow int for float and a comma string for a list."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    expected = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "a mapping",
    }[hint]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 5e-5 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
    if hint is list and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"config key '{key}' must be {expected}, got {value!r}")
    return value


def from_dict(raw: dict | None) -> Config:
    """Build a Config from a nested mapping, rejecting unknown keys and wrong types."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(
            "the config file must be a mapping of sections (model, lora, data, train, output)"
        )
    classes = section_classes()
    sections = {}
    for name, values in raw.items():
        if name not in classes:
            if isinstance(values, dict) and values:
                dotted = f"{name}.{next(iter(values))}"
                raise ConfigError(f"unknown config key '{dotted}'{_suggest(dotted, all_keys())}")
            raise ConfigError(
                f"unknown config section '{name}'{_suggest(str(name), list(classes))}"
            )
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{name}' must be a mapping of keys, got {values!r}")
        cls = classes[name]
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            dotted = f"{name}.{key}"
            if key not in hints:
                raise ConfigError(f"unknown config key '{dotted}'{_suggest(dotted, all_keys())}")
            kwargs[key] = _coerce(dotted, value, hints[key])
        sections[name] = cls(**kwargs)
    config = Config(**sections)
    validate(config)
    return config


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """Return `raw` with dotted-key overrides ('lora.rank': 8) merged in."""
    merged = {k: dict(v or {}) if isinstance(v, dict) else v for k, v in (raw or {}).items()}
    for dotted, value in overrides.items():
        if "." not in dotted:
            raise ConfigError(
                f"override '{dotted}' must be section.key=value{_suggest(dotted, all_keys())}"
            )
        section, key = dotted.split(".", 1)
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            target = merged[section] = {}
        target[key] = value
    return merged


def parse_set(assignment: str) -> tuple[str, Any]:
    """Parse one `--set section.key=value`; the value is read as YAML (so 8 is an int, null is None)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects section.key=value, got '{assignment}'")
    key, text = assignment.split("=", 1)
    key = key.strip()
    if _field_type(key) is str:  # text stays text: "Q: {question}" is a format string, not YAML
        return key, text
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def _field_type(dotted: str):
    section, _, name = dotted.partition(".")
    cls = section_classes().get(section)
    return typing.get_type_hints(cls).get(name) if cls else None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a second `model:` section would silently replace the first."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"the key '{key}' appears twice in the config (lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1}); keep one"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' not found")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.load(f, Loader=_UniqueKeyLoader) or {}
    except ConfigError as e:
        raise ConfigError(f"config file '{path}': {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"config file '{path}' is not valid YAML{where}: {getattr(e, 'problem', e)}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file '{path}' must be a mapping of sections (model, lora, data, train, output)"
        )
    return raw


def load(path: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config (or defaults), apply dotted overrides, validate."""
    raw = read_yaml(path) if path else {}
    return from_dict(apply_overrides(raw, overrides or {}))


# Keys a resumed run may change: they shape logs and outputs, not the trained weights.
# train.distribution and train.mesh: any mesh gives the same result up to float reduction order.
RESUMABLE_CHANGES = (
    "output.dir",
    "output.overwrite",
    "output.tensorboard",
    "output.wandb",
    "train.log_every",
    "train.checkpoint_every",
    "train.checkpoint_keep",
    "train.memory_check",
    "train.distribution",
    "train.mesh",
)


def differences(old: Config, new: Config) -> list[str]:
    """'key: old -> new' for every key that differs, except those a resume may change."""
    a, b = old.to_dict(), new.to_dict()
    return [
        f"{s}.{k}: {a[s][k]!r} -> {b[s][k]!r}"
        for s in a
        for k in a[s]
        if a[s][k] != b[s][k] and f"{s}.{k}" not in RESUMABLE_CHANGES
    ]


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)


def _fail(key: str, message: str):
    raise ConfigError(f"config key '{key}' {message}")


def validate(c: Config) -> None:
    """Reject values kft cannot run with, naming the key and the fix."""
    if c.model.precision not in PRECISIONS:
        _fail(
            "model.precision", f"must be one of {', '.join(PRECISIONS)}, got '{c.model.precision}'"
        )
    check_quantize(c.model.quantize, c.model.precision)
    if not isinstance(c.model.int4_block_size, int) or c.model.int4_block_size < 8:
        _fail(
            "model.int4_block_size",
            f"must be a whole number >= 8, got {c.model.int4_block_size!r}; try 64",
        )
    check_rounding(c.model.quantize, c.model.int4_rounding)
    if not isinstance(c.model.calibration_examples, int) or c.model.calibration_examples < 1:
        _fail(
            "model.calibration_examples",
            f"must be a whole number >= 1, got {c.model.calibration_examples!r}; try 64",
        )
    if not c.model.preset:
        _fail("model.preset", "is empty; name a preset or a local preset folder")
    if c.lora.rank <= 0:
        _fail("lora.rank", f"must be > 0, got {c.lora.rank}; try 4 or 8")
    if c.lora.alpha is not None and c.lora.alpha <= 0:
        _fail("lora.alpha", f"must be > 0 (or null for alpha = 2 x rank), got {c.lora.alpha}")
    if c.lora.plus_ratio is not None and c.lora.plus_ratio <= 0:
        _fail("lora.plus_ratio", f"must be > 0 (or null for off), got {c.lora.plus_ratio}; try 16")
    targets = c.lora.targets
    if not targets:
        _fail("lora.targets", "is empty; use [query, value] or [all-linear]")
    for t in targets:
        if t != ALL_LINEAR and t not in LORA_LAYER_NAMES:
            _fail(
                "lora.targets",
                f"has unknown layer '{t}'{_suggest(t, [*LORA_LAYER_NAMES, ALL_LINEAR])}",
            )
    d = c.data
    if d.template not in TEMPLATES:
        _fail("data.template", f"must be one of {', '.join(TEMPLATES)}, got '{d.template}'")
    if d.template == "custom" and not (d.prompt_format and d.response_format):
        _fail(
            "data.prompt_format",
            "and data.response_format must both be set when data.template is custom",
        )
    if d.seq_len < 8:
        _fail("data.seq_len", f"must be >= 8, got {d.seq_len}; Gemma prompts need room (try 256)")
    if d.overlong not in ("truncate", "drop"):
        _fail("data.overlong", f"must be truncate or drop, got '{d.overlong}'")
    if d.loss_on not in ("response", "all"):
        _fail("data.loss_on", f"must be response or all, got '{d.loss_on}'")
    if not isinstance(d.max_record_bytes, int) or d.max_record_bytes < 1:
        _fail("data.max_record_bytes", f"must be a whole number > 0, got {d.max_record_bytes!r}")
    if d.max_examples is not None and d.max_examples <= 0:
        _fail("data.max_examples", f"must be > 0 or null, got {d.max_examples}")
    if not 0.0 <= d.eval_fraction < 1.0:
        _fail("data.eval_fraction", f"must be in [0, 1), got {d.eval_fraction}")
    for key, source in (("data.source", d.source), ("data.eval_source", d.eval_source)):
        if source and os.path.isdir(os.path.expanduser(source)):
            _fail(
                key,
                f"points to the folder '{source}', not a file; give a .jsonl, .json, .csv or .parquet file",
            )
        if (
            source
            and os.path.isfile(os.path.expanduser(source))
            and not source.lower().endswith(DATA_SUFFIXES)
        ):
            suffix = os.path.splitext(source)[1] or "(no extension)"
            _fail(
                key,
                f"points to '{source}': {suffix} files are not supported; use one of "
                f"{', '.join(DATA_SUFFIXES)} (e.g. one JSON object per line in a .jsonl file)",
            )
        if source and _looks_like_file(source) and not os.path.isfile(os.path.expanduser(source)):
            _fail(
                key,
                f"points to '{source}', which does not exist; give an existing file or a datasets name",
            )
    if d.eval_source and d.eval_fraction:
        _fail("data.eval_fraction", "must be 0 when data.eval_source names a held-out dataset")
    t = c.train
    if t.epochs is not None and t.max_steps is not None:
        _fail(
            "train.epochs",
            f"({t.epochs}) and train.max_steps ({t.max_steps}) are both set; keep one of them",
        )
    for key, value, low in (
        ("epochs", 1 if t.epochs is None else t.epochs, 1),
        ("batch_size", t.batch_size, 1),
        ("grad_accum", t.grad_accum, 1),
        ("log_every", t.log_every, 1),
        ("warmup_steps", t.warmup_steps, 0),
        ("checkpoint_every", t.checkpoint_every, 1),
        ("checkpoint_keep", t.checkpoint_keep, 1),
        ("pad_to_multiple", t.pad_to_multiple, 0),
        ("eval_every", t.eval_every, 0),
        ("eval_samples", t.eval_samples, 1),
        ("early_stop", t.early_stop, 0),
    ):
        if value < low:
            _fail(f"train.{key}", f"must be >= {low}, got {value}")
    if t.max_steps is not None and t.max_steps <= 0:
        _fail("train.max_steps", f"must be > 0 or null, got {t.max_steps}")
    if t.keep_best not in ("", "eval_loss", "metric"):
        _fail("train.keep_best", f"must be eval_loss, metric or '' (off), got '{t.keep_best}'")
    for key, value in (("keep_best", t.keep_best), ("early_stop", t.early_stop)):
        if value and not t.eval_every:
            _fail(
                f"train.{key}", "needs evaluations while training: set train.eval_every (e.g. 10)"
            )
    if t.keep_best == "metric" and c.output.metric == "none":
        _fail(
            "train.keep_best",
            "is metric but output.metric is none: set output.metric (exact or json)",
        )
    if t.lr <= 0:
        _fail("train.lr", f"must be > 0, got {t.lr}; the tutorial uses 5e-5")
    if t.weight_decay < 0:
        _fail("train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    if t.schedule not in SCHEDULES:
        _fail("train.schedule", f"must be one of {', '.join(SCHEDULES)}, got '{t.schedule}'")
    if t.logits_on not in ("trained", "all"):
        _fail("train.logits_on", f"must be trained or all, got '{t.logits_on}'")
    if t.objective not in OBJECTIVES:
        _fail("train.objective", f"must be one of {', '.join(OBJECTIVES)}, got '{t.objective}'")
    for key, value in (("beta", t.beta), ("orpo_lambda", t.orpo_lambda)):
        if not value > 0:
            _fail(f"train.{key}", f"must be > 0, got {value}; try 0.1")
    if t.objective != "sft":
        for bad, why in (
            (
                t.logits_on != "trained",
                "train.logits_on: trained (answers' log-probs are summed there)",
            ),
            (d.loss_on != "response", "data.loss_on: response (the answer is what is compared)"),
        ):
            if bad:
                _fail("train.objective", f"{t.objective} needs {why}")
    if (
        c.model.init_adapter
        and c.model.quantize == "none"
        and c.model.precision in ("bfloat16", "float16")
    ):
        _fail(
            "model.init_adapter",
            f"merges into the base's kernels, which model.precision {c.model.precision} stores in 16 "
            "bits (the merged update would be rounded); use float32, auto or mixed_bfloat16",
        )
    if d.packing and t.logits_on != "trained":
        _fail(
            "data.packing",
            "needs train.logits_on: trained (the packed mask goes through kft's loss path); "
            "set train.logits_on: trained or data.packing: false",
        )
    if t.distribution not in ("auto", "single", "data", "model"):
        _fail("train.distribution", f"must be auto, single, data or model, got '{t.distribution}'")
    if t.mesh and not re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", t.mesh):
        _fail("train.mesh", f"must be BATCHxMODEL such as 1x8 or 2x4 (or empty), got '{t.mesh}'")
    if t.mesh and t.batch_size % int(t.mesh.split("x")[0]):
        _fail(
            "train.batch_size",
            f"{t.batch_size} does not divide by the mesh's batch axis {t.mesh.split('x')[0]} "
            f"(train.mesh {t.mesh}); use a multiple of {t.mesh.split('x')[0]}",
        )
    if t.clip_norm is not None and t.clip_norm <= 0:
        _fail("train.clip_norm", f"must be > 0 or null, got {t.clip_norm}")
    o = c.output
    if o.metric not in ("none", "exact", "json"):
        _fail("output.metric", f"must be none, exact or json, got '{o.metric}'")
    if o.samples < 0 or o.sample_max_new_tokens < 1:
        _fail("output.samples", "must be >= 0 and output.sample_max_new_tokens >= 1")


DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
OBJECTIVES = ("sft", "dpo", "orpo")


def _looks_like_file(source: str) -> bool:
    """A data source naming a local file (by suffix or path form) rather than a hub dataset."""
    return source.lower().endswith(DATA_SUFFIXES) or source.startswith((".", "/", "~"))


def reference_markdown() -> str:
    """The config reference (docs/config.md), generated from the dataclasses."""
    lines = []
    for section, cls in section_classes().items():
        lines.append(f"**{section}**\n")
        lines.append("| key | default | meaning |\n|---|---|---|")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            shown = (
                yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            )
            meaning = f.metadata["help"].replace("|", "\\|")  # a chat marker's bar is not a column
            lines.append(f"| `{section}.{f.name}` | `{shown}` | {meaning} |")
        lines.append("")
    return "\n".join(lines)
