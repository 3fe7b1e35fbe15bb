"""Model loading: Keras presets, Hugging Face folders, families, precision, and clear failures."""

import json
import os
import sys
import warnings

import numpy as np
import pytest
from conftest import run_cli

from kft.core.errors import KftError
from kft.models import model
from kft.quant import frozen_base


def test_tensorflow_never_sees_an_accelerator():
    from kft.core import backend

    backend.setup()
    import tensorflow as tf

    assert tf.config.get_visible_devices("GPU") == [] and tf.config.get_visible_devices("TPU") == []


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_family_is_read_from_the_preset_config_before_loading(tiny_presets, family):
    assert model.family_of_config(tiny_presets[family]) == family


def test_float16_is_refused_on_cpu_and_warned_about_on_gpus(monkeypatch):
    with pytest.raises(KftError, match="not supported on CPU"):
        model.resolve_precision("mixed_float16")
    monkeypatch.setattr(model.backend, "accelerator", lambda: "gpu")
    monkeypatch.setattr(model.backend, "bf16_capable", lambda: False)  # a T4 or P100
    with pytest.warns(UserWarning, match="overflow"):
        assert model.resolve_precision("mixed_float16") == "mixed_float16"
    assert model.resolve_precision("auto") == "float32"
    monkeypatch.setattr(model.backend, "bf16_capable", lambda: True)
    assert model.resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.resolve_precision("auto") == "float32"  # this CPU machine


def test_a_folder_of_an_unsupported_family_is_refused_before_loading(tmp_path, capsys):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "phi3", "architectures": ["Phi3ForCausalLM"]})
    )
    code, _, err = run_cli(
        [
            "train",
            "--preset",
            str(tmp_path),
            "--data",
            "bundled:tiny_facts",
            "--output-dir",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 2 and "'phi3' model" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started


def test_a_missing_preset_folder_is_one_clear_line(tmp_path, capsys):
    code, _, err = run_cli(
        ["train", "--preset", str(tmp_path / "nope"), "--data", "bundled:tiny_facts"], capsys
    )
    assert code == 2 and "is not a preset folder" in err


def test_an_unreachable_kaggle_handle_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "nobody")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    code, _, err = run_cli(
        [
            "train",
            "--preset",
            "kaggle://keras/gemma/keras/gemma_2b_en/2",
            "--data",
            "bundled:tiny_facts",
            "--output-dir",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 2 and "cannot load preset" in err and "Traceback" not in err


def _hf_folder(tmp_path, tiny_presets, family):
    """A Hugging Face-format Gemma folder made by transformers, with the tiny SentencePiece model."""
    import shutil

    import torch
    import transformers

    torch.manual_seed(0)
    common = dict(
        vocab_size=640,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    if family == "gemma":
        hf = transformers.GemmaForCausalLM(transformers.GemmaConfig(**common))
    else:
        hf = transformers.Gemma3ForCausalLM(
            transformers.Gemma3TextConfig(**common, sliding_window=32, query_pre_attn_scalar=16)
        )
    folder = tmp_path / f"hf_{family}"
    hf.save_pretrained(folder)
    shutil.copy(
        f"{tiny_presets[family]}/assets/tokenizer/vocabulary.spm", folder / "tokenizer.model"
    )
    return folder, hf.eval()


@pytest.mark.parametrize("family", ["gemma", "gemma3"])
def test_hugging_face_folders_load_through_the_same_path_with_matching_logits(
    tmp_path, tiny_presets, family
):
    import torch

    folder, hf = _hf_folder(tmp_path, tiny_presets, family)
    assert model.family_of_config(str(folder)) == family
    task, loaded_family, _ = frozen_base.load(str(folder), "float32")
    assert loaded_family == family
    ids = np.array([[2, 300, 301, 302, 303, 304]], dtype="int32")
    keras_logits = np.asarray(
        task({"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)})
    )
    with torch.no_grad():
        hf_logits = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    assert np.abs(keras_logits - hf_logits).max() <= 1e-4 * np.abs(hf_logits).max()


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_loading_skips_random_init_but_every_weight_is_the_preset_s(tiny_presets, family):
    import keras_hub

    task, _, _ = frozen_base.load(tiny_presets[family], "float32")
    plain = keras_hub.models.CausalLM.from_preset(
        tiny_presets[family], dtype="float32"
    )  # Keras' own path
    assert len(task.variables) == len(plain.variables) > 0
    for ours, theirs in zip(task.variables, plain.variables):
        assert ours._value is not None, ours.path
        np.testing.assert_array_equal(
            np.asarray(ours.value), np.asarray(theirs.value), err_msg=ours.path
        )


def test_the_tokenizer_s_vocabulary_is_stored_untracked_and_tokenizes_as_keras_hub_s(tiny_presets):
    import keras_hub
    from keras.src.utils.tracking import TrackedDict, TrackedList

    from kft.models.model import _vocabulary_untracked

    ours = frozen_base.load(tiny_presets["gemma3"], "float32")[0].preprocessor.tokenizer
    theirs = keras_hub.models.CausalLM.from_preset(tiny_presets["gemma3"]).preprocessor.tokenizer
    assert type(ours._vocabulary) is list and type(ours._token_to_id_map) is dict
    assert isinstance(theirs._vocabulary, TrackedList) and isinstance(
        theirs._token_to_id_map, TrackedDict
    )
    text = ["The capital of France is Paris.", "Gemma <start_of_turn>user\nhi<end_of_turn>"]
    assert ours.tokenize(text) == theirs.tokenize(text)
    assert ours._vocabulary == list(theirs._vocabulary) and ours.id_to_token(
        7
    ) == theirs.id_to_token(7)
    before = keras_hub.tokenizers.SentencePieceTokenizer.set_proto
    with _vocabulary_untracked():
        pass
    assert (
        keras_hub.tokenizers.SentencePieceTokenizer.set_proto is before
    )  # the class is left as it was


def test_a_variable_the_preset_does_not_fill_is_initialised_after_loading():
    import keras

    with model.weights_from_preset_only():
        layer = keras.layers.Dense(3, kernel_initializer="ones")
        layer.build((None, 2))
    assert layer.kernel._value is None  # deferred: nothing allocated yet
    model.initialise_unfilled(layer)
    np.testing.assert_array_equal(np.asarray(layer.kernel.value), np.ones((2, 3)))
    outside = keras.layers.Dense(1)
    outside.build((None, 1))
    assert outside.kernel._value is not None  # outside the context, Keras initialises as usual


def test_two_processes_preparing_the_same_preset_build_it_once(tmp_path):
    # Two notebooks, two `kft` commands or two test workers asking for a kft-prepared preset at once:
    # one builds it while the other waits on the lock, then finds it ready (no half-written folder).
    import subprocess

    env = {**os.environ, "KFT_CACHE": str(tmp_path)}
    code = "from kft.models import presets; print(presets.prepare('tiny_gemma3'))"
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sum("preparing preset 'tiny_gemma3'" in err for _, err in outputs) == 1
    folder = tmp_path / "presets" / "tiny_gemma3"
    assert {out.strip() for out, _ in outputs} == {str(folder)} and (
        folder / "config.json"
    ).is_file()
    assert not (tmp_path / "presets" / "tiny_gemma3.partial").exists()


@pytest.mark.parametrize("family", ["gemma3", "gemma4"])
def test_lora_layers_add_their_update_factorized_with_the_same_values(family):
    """Keras merges A @ B into the kernel, so its backward pass forms a kernel-sized gradient; kft's
    adapted layers compute (x @ A) @ B: the same output, and no kernel-sized product in the gradient."""
    import jax
    import keras
    from quantize_helpers import tiny_backbone

    from kft.models import lora

    backbone = tiny_backbone(family)
    layers = lora.enable(backbone, 2, 4.0, ["query", "value"])
    assert all(type(layer).__mro__[1] is keras.layers.EinsumDense for layer in layers)
    assert keras.saving.serialize_keras_object(layers[0])["class_name"] == "EinsumDense"
    layer = layers[0]
    rng = np.random.default_rng(0)
    layer.lora_kernel_b.assign(rng.normal(0, 0.1, layer.lora_kernel_b.shape).astype("float32"))
    x = rng.normal(0, 1, (2, 5, backbone.hidden_dim)).astype("float32")
    merged = np.einsum(layer.equation, x, np.asarray(layer.kernel))
    np.testing.assert_allclose(np.asarray(layer(x)), merged, rtol=1e-5, atol=1e-5)

    def kernel_sized_products(cls):
        layer.__class__ = cls
        frozen = [v.value for v in layer.non_trainable_variables]

        def loss(trainable):
            return layer.stateless_call(trainable, frozen, x)[0].sum()

        jaxpr = jax.make_jaxpr(jax.grad(loss))([v.value for v in layer.trainable_variables])
        return [
            e
            for e in _equations(jaxpr.jaxpr)
            if e.primitive.name == "dot_general"
            and tuple(e.outvars[0].aval.shape) == tuple(layer.kernel.shape)
        ]

    factorized = type(layer)
    assert kernel_sized_products(
        keras.layers.EinsumDense
    )  # Keras' merged forward: x.T @ dy, kernel-sized
    assert not kernel_sized_products(factorized)


def _equations(jaxpr):
    for equation in jaxpr.eqns:
        yield equation
        for value in equation.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                yield from _equations(inner)
