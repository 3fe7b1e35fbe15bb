"""Gemma 4 end to end on the tiny presets: train, reload, LoRA scope, chat turns, text-only loading."""

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import CONFIGS, assert_base_weights_untouched

TINY = os.path.join(CONFIGS, "tiny.yaml")
OVERRIDES = {
    "data.source": "bundled:tiny_chat",
    "data.template": "chat",
    "train.epochs": None,
    "train.max_steps": 30,
    "train.batch_size": 2,
    "train.lr": 0.02,
    "train.log_every": 10,
    "output.samples": 2,
    "output.tensorboard": False,
    "data.eval_fraction": 0.34,
    "train.logits_on": "trained",
}
ALL = ["query", "key", "value", "attention_output", "ffw_gating", "ffw_gating_2", "ffw_linear"]
NO_KV = [
    "query",
    "attention_output",
    "ffw_gating",
    "ffw_gating_2",
    "ffw_linear",
]  # K/V reused from an earlier layer
NO_V = [
    "query",
    "key",
    "attention_output",
    "ffw_gating",
    "ffw_gating_2",
    "ffw_linear",
]  # V is K (26B-A4B global)
ADAPTED = {
    "gemma4": {0: ALL, 1: ALL, 2: NO_KV, 3: NO_KV},
    "gemma4_moe": {0: ALL, 1: NO_V, 2: ALL, 3: NO_V},
}


@pytest.fixture(
    scope="module", params=["gemma4", pytest.param("gemma4_moe", marks=pytest.mark.slow)]
)
def gemma4_run(request, tiny_presets, tmp_path_factory):
    """(TrainResult, preset folder, stdout) of a short chat run on a tiny Gemma 4 preset."""
    import kft

    preset = tiny_presets[request.param]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = kft.train(
            TINY,
            **OVERRIDES,
            **{
                "model.preset": preset,
                "output.dir": str(tmp_path_factory.mktemp("runs") / request.param),
            },
        )
    return result, preset, out.getvalue(), request.param


def _inputs(ids):
    return {
        "token_ids": ids,
        "padding_mask": np.ones_like(ids, dtype=bool),
        "position_ids": np.arange(ids.shape[1], dtype="int32")[None].repeat(len(ids), 0),
    }


def test_kft_train_on_a_tiny_gemma4_memorises_the_chat_set(gemma4_run):
    result, _, out, _ = gemma4_run
    rows = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows[0]["step"] == 1 and rows[-1]["step"] == 30
    assert rows[-1]["loss"] < 0.3 * rows[0]["loss"]
    assert "gemma4 model" in out
    # Held-out turns, measured through the trained-positions loss before and after.
    assert result.metrics["data"]["eval_examples"] == 2
    assert result.metrics["eval_loss_after"] < result.metrics["eval_loss_before"]


def test_gemma4_run_folder_is_complete_and_its_answers_stop_at_the_turn_end(gemma4_run):
    result, _, _, _ = gemma4_run
    for name in (
        "config.yaml",
        "adapter.safetensors",
        "adapter_config.json",
        "metrics.jsonl",
        "samples.jsonl",
        "summary.json",
        "before.json",
    ):
        assert (result.run_dir / name).is_file(), name
    meta = json.loads((result.run_dir / "adapter_config.json").read_text())
    assert meta["family"] == "gemma4" and meta["template"] == "chat"
    samples = [
        json.loads(line)
        for line in (result.run_dir / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert all(s["prompt"].startswith(("<|turn>user\n", "<|turn>system\n")) for s in samples)
    assert all(s["prompt"].endswith("<|turn>model\n") for s in samples)
    # Answers cut at <turn|> (a stop token): the marker never shows up in the text.
    assert all("<turn|>" not in s["after"] and s["before"] != s["after"] for s in samples)


def test_kft_generate_answers_a_memorised_turn_and_stops_at_the_turn_end(gemma4_run):
    from kft.data.dataset import BUNDLED
    from kft.generation import loading

    records = [
        json.loads(line)
        for line in (BUNDLED / "tiny_chat.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    firsts = [[m for m in r["messages"] if m["role"] != "system"][:2] for r in records]
    task = loading.load_tuned(run_dir=gemma4_run[0].run_dir)
    answers = loading.generate_text(
        task, [user["content"] for user, _ in firsts], max_new_tokens=24, template="auto"
    )
    # The training turns come back exactly: the answer, then <turn|> ends generation (no run-on text).
    assert sum(answer == model["content"] for answer, (_, model) in zip(answers, firsts)) >= 2


def test_gemma4_adapter_reloads_onto_a_fresh_base_and_reproduces_the_logits(gemma4_run):
    import kft

    result, preset, _, _ = gemma4_run
    ids = np.array([[2, 300, 301, 302, 303, 304, 305, 306, 307, 308]], dtype="int32")
    trained = np.asarray(result.task(_inputs(ids)))
    reloaded = np.asarray(kft.load(result.run_dir)(_inputs(ids)))
    np.testing.assert_allclose(reloaded, trained, rtol=1e-5, atol=1e-5 * np.abs(trained).max())
    base = np.asarray(kft.quant.frozen_base.load(preset, "float32")[0](_inputs(ids)))
    assert np.abs(base - trained).max() > 1e-3
    assert np.abs(trained).max() <= 30.0  # the final logit soft cap holds


def test_a_gemma4_adapter_on_another_gemma4_base_is_refused(gemma4_run, tiny_presets):
    from kft.core.errors import KftError
    from kft.generation import loading

    other = tiny_presets["gemma4_moe" if gemma4_run[3] == "gemma4" else "gemma4"]
    with pytest.raises(KftError, match="does not fit this base model"):
        loading.load_tuned(run_dir=gemma4_run[0].run_dir, preset=other)


def test_gemma4_base_weights_are_bit_identical_after_training(gemma4_run):
    result, preset, _, _ = gemma4_run
    assert_base_weights_untouched(result.task, preset)


def test_lora_adapts_attention_and_dense_mlp_of_the_text_decoder_only(gemma4_run):
    from kft.models import lora

    result, _, out, family = gemma4_run
    paths = list(lora.lora_variables(result.task.backbone))
    adapted = {}
    for path in paths:
        block, *inner, _ = path.split("/")
        adapted.setdefault(int(block.removeprefix("decoder_block_")), []).append(inner[-1])
    assert {b: sorted(set(names)) for b, names in adapted.items()} == {
        b: sorted(n) for b, n in ADAPTED[family].items()
    }
    assert not [p for p in paths if re.search(r"moe_|per_layer_|vision|audio", p)]
    # Printed trainable count == the LoRA factors' sizes == every trainable variable.
    expected = sum(
        int(np.prod(v.shape)) for v in lora.lora_variables(result.task.backbone).values()
    )
    printed = int(re.search(r"([\d,]+) trainable", out).group(1).replace(",", ""))
    assert printed == expected == lora.parameter_counts(result.task)[1]


def test_gemma4_chat_turns_are_the_documented_format():
    from kft.config import DataConfig
    from kft.data import templates

    template = templates.Template(name="gemma4-chat", columns={})
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "안녕?"},
        {"role": "model", "content": "네."},
    ]
    segments = template.render({"messages": messages})
    assert "".join(text for text, _ in segments) == (
        "<|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\nHello.<turn|>\n"
        "<|turn>user\n안녕?<turn|>\n<|turn>model\n네.<turn|>"
    )
    assert [text for text, trained in segments if trained] == ["Hello.<turn|>", "네.<turn|>"]
    assert templates.split_for_generation(segments)[1] == "네."
    assert template.wrap_prompt("Q") == "<|turn>user\nQ<turn|>\n<|turn>model\n"
    assert not template.ends_with_eos
    assert templates.from_config(DataConfig(template="chat")).name == "chat"


def test_chat_means_the_family_s_own_turns_and_gemma_turns_are_refused_on_gemma4(
    tiny_presets, tokenizers
):
    import keras_hub

    from kft.core.errors import KftError
    from kft.data import templates
    from kft.generation import sampling

    gemma4 = keras_hub.models.Gemma4CausalLM.from_preset(
        tiny_presets["gemma4"]
    ).preprocessor.tokenizer
    chat = templates.Template(name="chat", columns={})
    assert templates.for_tokenizer(chat, gemma4).name == "gemma4-chat"
    assert templates.for_tokenizer(chat, tokenizers["gemma3"]).name == "gemma-chat"
    with pytest.raises(KftError, match="data.template: chat"):
        templates.for_tokenizer(templates.Template(name="gemma-chat", columns={}), gemma4)
    assert gemma4.token_to_id("<turn|>") in sampling.stop_token_ids(gemma4)
    ids = [int(t) for t in np.asarray(gemma4("<|turn>user\nhi<turn|>"))]
    assert ids[0] == gemma4.token_to_id("<|turn>") and ids[-1] == gemma4.token_to_id(
        "<turn|>"
    )  # single tokens


def _tiny_multimodal_backbone():
    import keras_hub

    vision = keras_hub.models.Gemma4VisionEncoder(
        image_size=16,
        patch_size=4,
        num_heads=2,
        hidden_dim=16,
        num_layers=1,
        intermediate_dim=32,
        head_dim=8,
        output_dim=64,
        pool_size=2,
        position_embedding_size=16,
    )
    return keras_hub.models.Gemma4Backbone(
        vocabulary_size=640,
        image_size=16,
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=64,
        intermediate_dim=128,
        head_dim=16,
        sliding_window_size=32,
        sliding_window_pattern=2,
        vision_encoder=vision,
    )


def test_a_multimodal_gemma4_preset_loads_without_its_vision_encoder(
    tiny_presets, tmp_path, capsys
):
    import keras_hub

    from kft.models import lora
    from kft.quant import frozen_base

    text_only = keras_hub.models.Gemma4CausalLM.from_preset(tiny_presets["gemma4"])  # its tokenizer
    full = _tiny_multimodal_backbone()
    vision = {id(v) for v in full.vision_encoder.weights}
    assert any(
        "attention/query" in v.path for v in full.vision_encoder.weights
    )  # the trap: the decoder's layer names
    preprocessor = keras_hub.models.Gemma4CausalLMPreprocessor(
        text_only.preprocessor.tokenizer, sequence_length=64
    )
    keras_hub.models.Gemma4CausalLM(backbone=full, preprocessor=preprocessor).save_to_preset(
        str(tmp_path / "mm")
    )
    task, family, _ = frozen_base.load(str(tmp_path / "mm"), "float32")
    assert "left out the vision encoder" in capsys.readouterr().err
    assert family == "gemma4" and task.backbone.vision_encoder is None
    loaded = {v.path: v.numpy() for v in task.backbone.weights}
    original = {v.path: v.numpy() for v in full.weights if id(v) not in vision}
    assert loaded.keys() == original.keys() and all(
        np.array_equal(loaded[p], original[p]) for p in original
    )
    # And LoRA on the full multimodal backbone (vision encoder built) still touches only the decoder.
    lora.enable(full, 2, 4.0, ["all-linear"])
    assert all(p.startswith("decoder_block_") for p in lora.lora_variables(full))
    assert not [v.path for v in full.trainable_weights if id(v) in vision]


@pytest.mark.slow
def test_a_gemma4_run_killed_with_sigkill_resumes_bit_identically(tiny_presets, tmp_path):
    from safetensors.numpy import load_file

    from kft.training.checkpoint import latest

    args = [
        "train",
        "--config",
        TINY,
        "--max-steps",
        "60",
        "--set",
        "train.checkpoint_every=10",
        "--set",
        f"model.preset={tiny_presets['gemma4']}",
        "--set",
        "data.source=bundled:tiny_chat",
        "--set",
        "data.template=chat",
        "--set",
        "train.batch_size=2",
        "--set",
        "output.samples=1",
        "--set",
        "output.tensorboard=false",
    ]
    kft = [sys.executable, "-m", "kft.cli"]
    subprocess.run(
        [*kft, *args, "--output-dir", str(tmp_path / "ref")], check=True, capture_output=True
    )
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [*kft, *args, "--output-dir", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while not (latest(run) and int(latest(run).name.split("-")[1]) >= 20):
        assert proc.poll() is None, "training ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run([*kft, "train", "--resume", str(run)], capture_output=True, text=True)
    assert done.returncode == 0 and "resuming from step-" in done.stdout, done.stderr[-2000:]
    a, b = (
        load_file(str(run / "adapter.safetensors")),
        load_file(str(tmp_path / "ref" / "adapter.safetensors")),
    )
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def gemma4_exports(gemma4_run, tmp_path_factory):
    from kft.export import export

    result = gemma4_run[0]
    root = tmp_path_factory.mktemp("exports")
    return {
        fmt: export(str(result.run_dir), fmt, str(root / fmt)) for fmt in ("hf", "peft", "keras")
    } | {"base": export(str(result.run_dir), "hf", str(root / "base"), base=True)}


IDS = np.array([[2, 300, 301, 302, 303, 304, 305, 306, 307, 308]], dtype="int32")
MIXED_CHAT = "<|turn>user\nWho founded Velmora?<turn|>\n<|turn>model\n벨모라는 일드라 여왕이 세웠습니다!<turn|>"


def test_gemma4_hf_export_is_a_transformers_gemma4_text_model_with_the_fine_tune(
    gemma4_run, gemma4_exports
):
    from test_export import hf_model, keras_greedy, rel, torch_greedy, torch_logits

    result = gemma4_run[0]
    config = json.loads((gemma4_exports["hf"] / "config.json").read_text())
    assert config["model_type"] == "gemma4_text" and config["architectures"] == [
        "Gemma4ForCausalLM"
    ]
    model = hf_model(gemma4_exports["hf"])
    assert type(model).__name__ == "Gemma4ForCausalLM"
    keras = np.asarray(result.task(_inputs(IDS)))
    assert rel(torch_logits(model), keras) <= 1e-4
    assert torch_greedy(model, IDS, 16) == keras_greedy(result.task, IDS, 16)
    assert (
        rel(torch_logits(model), torch_logits(hf_model(gemma4_exports["base"]))) > 1e-3
    )  # not the base


def test_gemma4_peft_adapter_on_the_base_export_matches_and_merges_to_the_hf_export(
    gemma4_run, gemma4_exports
):
    from peft import PeftModel
    from test_export import hf_model, rel, torch_logits

    tuned = PeftModel.from_pretrained(
        hf_model(gemma4_exports["base"]), str(gemma4_exports["peft"])
    ).eval()
    assert rel(torch_logits(tuned), np.asarray(gemma4_run[0].task(_inputs(IDS)))) <= 1e-4
    assert (
        rel(torch_logits(tuned.merge_and_unload()), torch_logits(hf_model(gemma4_exports["hf"])))
        <= 1e-5
    )


def test_gemma4_hf_tokenizer_encodes_a_mixed_english_korean_chat_like_keras(
    gemma4_run, gemma4_exports
):
    import transformers

    keras_tokenizer = gemma4_run[0].task.preprocessor.tokenizer
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(gemma4_exports["hf"]))
    assert hf_tokenizer(MIXED_CHAT, add_special_tokens=False)["input_ids"] == [
        int(t) for t in keras_tokenizer(MIXED_CHAT)
    ]
    generation = json.loads((gemma4_exports["hf"] / "generation_config.json").read_text())
    assert keras_tokenizer.token_to_id("<turn|>") in generation["eos_token_id"]


def test_gemma4_keras_export_reloads_as_the_merged_tuned_model(gemma4_run, gemma4_exports):
    from test_export import rel

    from kft.quant import frozen_base

    reloaded, family, _ = frozen_base.load(str(gemma4_exports["keras"]), "float32")
    assert family == "gemma4" and not any("lora" in v.path for v in reloaded.weights)
    assert (
        rel(np.asarray(reloaded(_inputs(IDS))), np.asarray(gemma4_run[0].task(_inputs(IDS))))
        <= 1e-5
    )


def _hf_folder(hf_export, folder):
    """A Hugging Face Gemma 4 folder as published (tokenizer.json, processor_config.json) from kft's export."""
    import shutil

    import transformers

    shutil.copytree(hf_export, folder)
    transformers.AutoTokenizer.from_pretrained(str(folder)).save_pretrained(
        str(folder)
    )  # writes tokenizer.json
    (folder / "processor_config.json").write_text("{}")
    return folder


def test_gemma4_loads_from_hf_folders_text_and_multimodal_using_the_text_part(
    gemma4_run, gemma4_exports, tmp_path, capsys
):
    from safetensors.numpy import load_file, save_file
    from test_export import rel

    from kft.quant import frozen_base

    tuned = np.asarray(gemma4_run[0].task(_inputs(IDS)))
    text = _hf_folder(gemma4_exports["hf"], tmp_path / "text")
    task, family, _ = frozen_base.load(str(text), "float32")
    # 1e-5: the tuned model adds its LoRA update factorized, the export merged it into the kernels.
    assert family == "gemma4" and rel(np.asarray(task(_inputs(IDS))), tuned) <= 1e-5
    # The multimodal layout: text weights under model.language_model, a vision tower beside it.
    multimodal = _hf_folder(gemma4_exports["hf"], tmp_path / "multimodal")
    text_config = json.loads((text / "config.json").read_text())
    (multimodal / "config.json").write_text(
        json.dumps(
            {
                "model_type": "gemma4",
                "architectures": ["Gemma4ForConditionalGeneration"],
                "text_config": text_config,
                "vision_config": {
                    "model_type": "gemma4_vision",
                    "patch_size": 4,
                    "num_attention_heads": 2,
                    "hidden_size": 16,
                    "num_hidden_layers": 1,
                    "intermediate_size": 32,
                    "head_dim": 8,
                    "pooling_kernel_size": 2,
                },
            }
        )
    )
    (multimodal / "processor_config.json").write_text(
        json.dumps(
            {
                "image_processor": {
                    "do_rescale": True,
                    "do_normalize": False,
                    "do_resize": True,
                    "rescale_factor": 1 / 255,
                    "image_mean": [0.5] * 3,
                    "image_std": [0.5] * 3,
                    "max_soft_tokens": 16,
                }
            }
        )
    )
    weights = load_file(str(text / "model.safetensors"))
    save_file(
        {k.replace("model.", "model.language_model.", 1): v for k, v in weights.items()},
        str(multimodal / "model.safetensors"),
    )
    capsys.readouterr()
    task, family, _ = frozen_base.load(str(multimodal), "float32")
    assert "left out the vision encoder" in capsys.readouterr().err
    assert family == "gemma4" and task.backbone.vision_encoder is None
    assert rel(np.asarray(task(_inputs(IDS))), tuned) <= 1e-5
