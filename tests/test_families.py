"""Llama 2/3, Mistral, Qwen 2/2.5 and Qwen 3 on tiny presets of their own (real KerasHub classes,
trained tokenizers with the family's special tokens): train with the family's chat turns, reload,
export to transformers and PEFT, and the chat text equals the model's own Jinja template.

Every family in the default tier (about 8 s each): Llama 2 (untied, SentencePiece), Llama 3 (tied,
byte-level BPE), Mistral (untied, SentencePiece), Qwen 2.5 (untied, q/k/v biases, ChatML with a
default system turn) and Qwen 3 (q/k norms, an empty think block)."""

import json

import numpy as np
import pytest
from conftest import CONFIGS, run_cli
from test_export import MIXED, hf_model, keras_greedy, keras_logits, rel, torch_greedy, torch_logits

FAMILIES = ("llama", "llama3", "mistral", "qwen", "qwen3")
IDS = np.array([[5, 300, 301, 302, 303, 304, 305, 306, 307, 308]], dtype="int32")
HF_MODEL_TYPE = {
    "llama": "llama",
    "llama3": "llama",
    "mistral": "mistral",
    "qwen": "qwen2",
    "qwen3": "qwen3",
}
CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Which river crosses Velmora?"},
    {"role": "assistant", "content": "The Sallow."},
    {"role": "user", "content": "벨모라의 수도는 어디인가요?"},
    {"role": "assistant", "content": "오르바스입니다."},
]


@pytest.fixture(scope="session", params=FAMILIES)
def run(request, tiny_presets, tmp_path_factory):
    """(family, train result, {format: export folder}) for a short chat-template run."""
    import os

    import kft
    from kft.export import export

    family = request.param
    result = kft.train(
        os.path.join(CONFIGS, "tiny.yaml"),
        **{
            "model.preset": tiny_presets[family],
            "data.source": "bundled:tiny_chat",
            "data.template": "chat",
            "data.seq_len": 128,
            "train.epochs": 30,
            "train.batch_size": 2,
            "train.lr": 0.02,
            "output.samples": 0,
            "output.tensorboard": False,
            "output.dir": str(tmp_path_factory.mktemp("runs") / family),
        },
    )
    root = tmp_path_factory.mktemp(f"exports-{family}")
    exports = {f: export(str(result.run_dir), f, str(root / f)) for f in ("hf", "peft", "keras")}
    exports["base"] = export(str(result.run_dir), "hf", str(root / "base"), base=True)
    return family, result, exports


def test_trains_on_the_family_chat_turns_and_the_loss_falls(run):
    family, result, _ = run
    rows = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in rows if "loss" in r and "step" in r]
    assert result.metrics["family"] == family
    assert losses[-1] < 0.3 * losses[0]


def test_the_adapter_reloads_as_the_trained_model(run):
    import kft

    _, result, _ = run
    reloaded = kft.load(str(result.run_dir))
    assert rel(keras_logits(reloaded, IDS), keras_logits(result.task, IDS)) <= 1e-5


def test_hf_export_gives_the_tuned_logits_and_greedy_tokens_in_transformers_own_class(run):
    family, result, exports = run
    config = json.loads((exports["hf"] / "config.json").read_text())
    assert config["model_type"] == HF_MODEL_TYPE[family]
    model = hf_model(exports["hf"])
    assert rel(torch_logits(model, IDS), keras_logits(result.task, IDS)) <= 1e-4
    assert torch_greedy(model, IDS, 16) == keras_greedy(result.task, IDS, 16)
    base = hf_model(exports["base"])
    assert rel(torch_logits(base, IDS), torch_logits(model, IDS)) > 1e-3  # the tune, not the base


def test_keras_export_reloads_as_the_merged_tuned_model(run):
    import keras_hub

    _, result, exports = run
    reloaded = keras_hub.models.CausalLM.from_preset(str(exports["keras"]), dtype="float32")
    assert rel(keras_logits(reloaded, IDS), keras_logits(result.task, IDS)) <= 1e-5
    assert not any("lora" in v.path for v in reloaded.weights)


def test_peft_on_the_base_export_matches_and_merges_to_the_hf_export(run):
    from peft import PeftModel

    _, result, exports = run
    tuned = PeftModel.from_pretrained(hf_model(exports["base"]), str(exports["peft"])).eval()
    assert rel(torch_logits(tuned, IDS), keras_logits(result.task, IDS)) <= 1e-4
    merged = tuned.merge_and_unload()
    assert rel(torch_logits(merged, IDS), torch_logits(hf_model(exports["hf"]), IDS)) <= 1e-5


def test_chat_text_equals_the_models_own_jinja_template_and_tokenizes_alike(run):
    import transformers

    from kft.data import templates

    family, result, exports = run
    keras_tokenizer = result.task.preprocessor.tokenizer
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(exports["hf"]))
    chat = templates.for_tokenizer(templates.Template("chat", {}), keras_tokenizer).chat
    assert (
        chat.name
        == {
            "llama": "llama2-chat",
            "llama3": "llama3-chat",
            "mistral": "mistral-chat",
            "qwen": "qwen-chat",
            "qwen3": "qwen3-chat",
        }[family]
    )
    # Mistral's template refuses a system turn; Qwen 3's renders the last reply's think block only.
    messages = CONVERSATION[1:] if family == "mistral" else CONVERSATION
    ours = "".join(text for text, _ in chat.segments(messages))
    theirs = hf_tokenizer.apply_chat_template(messages, tokenize=False, enable_thinking=False)
    start = keras_tokenizer.start_token or ""
    assert theirs.removeprefix(start).removesuffix(chat.between) == ours
    if family in ("llama3", "qwen", "qwen3"):  # byte-level BPE: transformers' own tokenizer
        assert hf_tokenizer(MIXED, add_special_tokens=False)["input_ids"] == [
            int(i) for i in keras_tokenizer(MIXED)
        ]


def test_chat_turn_markers_are_trained_so_tuned_models_stop(tiny_presets):
    import keras_hub

    from kft.data import templates

    tokenizer = keras_hub.models.CausalLM.from_preset(tiny_presets["qwen"]).preprocessor.tokenizer
    chat = templates.for_tokenizer(templates.Template("chat", {}), tokenizer).chat
    segments = chat.segments(CONVERSATION)
    trained = [text for text, trainable in segments if trainable]
    assert trained == ["The Sallow.<|im_end|>", "오르바스입니다.<|im_end|>"]
    assert tokenizer.token_to_id("<|im_end|>") in [int(i) for i in tokenizer(trained[0])]


def test_an_unknown_family_is_refused_in_one_line_naming_the_supported_ones(tmp_path, capsys):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 50257}))
    code, _, err = run_cli(["plan", "--preset", str(folder)], capsys)
    assert code == 2 and "gpt2" in err and "Llama" in err and "Qwen" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("preset", ["llama3.2_3b", "llama3.1_8b", "mistral_7b_en", "qwen2.5_7b_en"])
def test_kft_plan_knows_the_new_families_kaggle_presets_offline(preset, capsys):
    code, out, err = run_cli(
        ["plan", "--preset", preset, "--device", "gpu", "--device-memory", "16GB"], capsys
    )
    assert code == 0, err
    assert "B parameters" in out


def test_a_hugging_face_llama_2_folder_is_refused_not_misread_as_llama_3(tmp_path, capsys):
    folder = tmp_path / "llama-2-7b-hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 32000}))
    (folder / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "BPE", "byte_fallback": True}})
    )
    code, _, err = run_cli(
        [
            "train",
            "--preset",
            str(folder),
            "--data",
            "bundled:tiny_facts",
            "--output-dir",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 2 and "SentencePiece" in err and "llama2_7b_en" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_kft_fixes_keras_hub_llama_configs_it_would_otherwise_lose():
    """KerasHub 0.32: its HF Llama converter drops rms_norm_eps (SmolLM2 and Llama 3 use 1e-5, the
    backbone's default is 1e-6), LlamaBackbone's config drops tie_word_embeddings and Llama3Tokenizer's
    drops its special tokens; kft.families.llama.fixes restores each."""
    import keras_hub
    from keras_hub.src.utils.transformers import convert_llama3

    from kft import families

    families.fix_keras_hub()
    hf = {
        "vocab_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_key_value_heads": 1,
        "tie_word_embeddings": True,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
    }
    config = convert_llama3.convert_backbone_config(hf)
    assert config["layer_norm_epsilon"] == 1e-5
    backbone = keras_hub.models.Llama3Backbone(**config)
    assert keras_hub.models.Llama3Backbone.from_config(backbone.get_config()).tie_word_embeddings
    vocabulary = {t: i for i, t in enumerate(["a", "b", "ab", "<|im_start|>", "<|im_end|>"])}
    tokenizer = keras_hub.models.Llama3Tokenizer(
        vocabulary=vocabulary,
        merges=["a b"],
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        misc_special_tokens=set(),
    )
    again = keras_hub.models.Llama3Tokenizer.from_config(tokenizer.get_config())
    again.set_vocabulary_and_merges(vocabulary, ["a b"])
    assert again.end_token == "<|im_end|>" and again.start_token == "<|im_start|>"
