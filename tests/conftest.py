"""Shared fixtures: tiny Gemma, Gemma 2, Gemma 3 (and, on first use, Gemma 4) presets, built once per test session.

Each is a real KerasHub preset folder (`save_to_preset`) with a SentencePiece tokenizer trained
here, loaded through the same `from_preset` path users hit.
"""

import os
import sys
import tempfile

import pytest

# Before kft or keras is imported anywhere: JAX backend, and kft's cache (prepared presets) in a
# throwaway folder so tests never touch or depend on the user's ~/.cache/kft.
os.environ.setdefault("KERAS_BACKEND", "jax")
USER_KFT_CACHE = os.environ.get("KFT_CACHE")  # slow tests reuse the user's prepared real model
os.environ["KFT_CACHE"] = tempfile.mkdtemp(prefix="kft-test-cache-")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The default tier's tiny models take longer to compile than to run: LLVM at optimisation level 0
# cut the suite from 10 min 32 s to 7 min 52 s on 2 cores. The slow tier (the real 270M) keeps XLA's default.
FAST_COMPILES = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    # Greedy decoding's screened argmax runs on every machine the tests run on, not only where it
    # is faster (kft.generation.screened_argmax): every family's same-ids tests check its tokens.
    os.environ.setdefault("KFT_SCREENED_ARGMAX", "1")
    # Before any test initialises JAX's backend (fixtures do, lazily); kft subprocesses inherit it.
    if (config.option.markexpr or "").strip() == "not slow" and FAST_COMPILES not in os.environ.get(
        "XLA_FLAGS", ""
    ):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILES}".strip()


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


DEFAULT_FAMILIES = ("gemma", "gemma2", "gemma3")  # built up front; others on first use


class TinyPresets(dict):
    """{family: preset folder}: gemma, gemma2 and gemma3 built up front (iteration covers these);
    gemma4 and gemma4_moe built on first lookup, so only tests that use them pay for them."""

    def __init__(self, root):
        from kft.models.tiny import build_tiny_preset

        self._root, self._build = root, build_tiny_preset
        super().__init__(
            {family: str(build_tiny_preset(family, root / family)) for family in DEFAULT_FAMILIES}
        )

    def __missing__(self, family):
        self[family] = folder = str(self._build(family, self._root / family))
        return folder

    def items(self):
        return [(f, self[f]) for f in DEFAULT_FAMILIES]

    def __iter__(self):
        return iter(DEFAULT_FAMILIES)


@pytest.fixture(scope="session")
def tiny_presets(tmp_path_factory):
    """{family: preset folder} (see TinyPresets)."""
    return TinyPresets(tmp_path_factory.mktemp("presets"))


@pytest.fixture(scope="session")
def tokenizers(tiny_presets):
    import keras_hub

    return {
        f: keras_hub.models.CausalLM.from_preset(p).preprocessor.tokenizer
        for f, p in tiny_presets.items()
    }


@pytest.fixture(scope="session", params=["gemma", "gemma2", "gemma3"])
def family_run(request, tiny_presets, tmp_path_factory):
    """A short Python-API run per family; returns (result, preset folder)."""
    import kft

    preset = tiny_presets[request.param]
    result = kft.train(
        os.path.join(CONFIGS, "tiny.yaml"),
        **{
            "model.preset": preset,
            "train.epochs": None,
            "train.max_steps": 6,
            "train.lr": 0.02,
            "lora.rank": 2,
            "lora.alpha": 4.0,
            "train.grad_accum": 2,
            "train.schedule": "cosine",
            "train.warmup_steps": 2,
            "train.clip_norm": 1.0,
            "train.log_every": 3,
            "output.samples": 0,
            "output.tensorboard": False,
            "data.eval_fraction": 0.25,
            "output.dir": str(tmp_path_factory.mktemp("runs") / request.param),
        },
    )
    return result, preset


def assert_base_weights_untouched(task, preset):
    """Every non-LoRA weight of the trained `task` is bit-identical to a fresh load of `preset`."""
    import numpy as np

    from kft.models import lora
    from kft.quant import frozen_base

    fresh = frozen_base.load(preset, "float32")[0]
    lora_paths = set(lora.lora_variables(task.backbone))
    trained = {v.path: v.numpy() for v in task.backbone.weights if v.path not in lora_paths}
    original = {v.path: v.numpy() for v in fresh.backbone.weights}
    assert {p: a.shape for p, a in trained.items()} == {p: a.shape for p, a in original.items()}
    assert all(np.array_equal(trained[p], original[p]) for p in original)


def run_cli(args, capsys):
    """Run `kft ARGS` in-process; return (exit code, stdout, stderr)."""
    from kft.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


sys.path.insert(0, os.path.dirname(__file__))
