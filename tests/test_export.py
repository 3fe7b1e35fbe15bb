"""Exports users can trust: transformers and PEFT reproduce the tuned Keras model numerically."""

import json

import numpy as np
import pytest
from conftest import run_cli

IDS = np.array([[2, 300, 301, 302, 303, 304, 305, 306, 307, 308]], dtype="int32")
MIXED = "Velmora was founded by Queen Ildra. 벨모라는 일드라 여왕이 세웠습니다!"


@pytest.fixture(scope="session")
def exports(family_run, tmp_path_factory):
    from kft.export import export

    result, _ = family_run
    root = tmp_path_factory.mktemp("exports")
    return {
        fmt: export(str(result.run_dir), fmt, str(root / fmt)) for fmt in ("hf", "peft", "keras")
    } | {"base": export(str(result.run_dir), "hf", str(root / "base"), base=True)}


def keras_logits(task, ids=IDS):
    return np.asarray(task({"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)}))


def torch_logits(model, ids=IDS):
    import torch

    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.numpy()


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def hf_model(folder):
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32
    ).eval()


def keras_greedy(task, ids, n):
    """Keras' own compiled generation (the run compiled the task with a greedy sampler)."""
    token_ids = np.zeros((1, ids.shape[1] + n), dtype="int32")
    token_ids[:, : ids.shape[1]] = ids
    mask = np.zeros_like(token_ids, dtype=bool)
    mask[:, : ids.shape[1]] = True
    out = task.make_generate_function()(
        {"token_ids": token_ids, "padding_mask": mask}, stop_token_ids=None
    )
    return np.asarray(out["token_ids"])[0, ids.shape[1] :].tolist()


def torch_greedy(model, ids, n):
    import torch

    tokens = torch.tensor(ids, dtype=torch.long)
    with torch.no_grad():
        for _ in range(n):
            next_id = model(tokens).logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, next_id], dim=1)
    return tokens[0, ids.shape[1] :].tolist()


def test_hf_export_reproduces_the_tuned_model_logits_and_greedy_tokens(family_run, exports):
    result, _ = family_run
    model = hf_model(exports["hf"])
    config = json.loads((exports["hf"] / "config.json").read_text())
    assert (
        config["model_type"]
        == {"gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text"}[result.metrics["family"]]
    )
    assert rel(torch_logits(model), keras_logits(result.task)) <= 1e-4
    assert torch_greedy(model, IDS, 16) == keras_greedy(result.task, IDS, 16)


def test_hf_export_is_the_fine_tune_not_the_base(exports):
    assert (
        rel(torch_logits(hf_model(exports["hf"])), torch_logits(hf_model(exports["base"]))) > 1e-3
    )


def test_peft_adapter_on_the_base_export_matches_and_merges_to_the_hf_export(family_run, exports):
    from peft import PeftModel

    result, _ = family_run
    tuned = PeftModel.from_pretrained(hf_model(exports["base"]), str(exports["peft"])).eval()
    assert rel(torch_logits(tuned), keras_logits(result.task)) <= 1e-4
    merged = tuned.merge_and_unload()
    assert rel(torch_logits(merged), torch_logits(hf_model(exports["hf"]))) <= 1e-5


def test_hf_tokenizer_encodes_mixed_english_korean_like_keras(family_run, exports):
    import transformers

    result, _ = family_run
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(exports["hf"]))
    keras_tokenizer = result.task.preprocessor.tokenizer
    assert hf_tokenizer(MIXED, add_special_tokens=False)["input_ids"] == list(
        keras_tokenizer(MIXED)
    )
    assert hf_tokenizer(MIXED)["input_ids"][0] == keras_tokenizer.start_token_id


def test_keras_export_reloads_as_the_merged_tuned_model(family_run, exports):
    import keras_hub

    result, _ = family_run
    reloaded = keras_hub.models.CausalLM.from_preset(str(exports["keras"]), dtype="float32")
    assert rel(keras_logits(reloaded), keras_logits(result.task)) <= 1e-5
    assert not any("lora" in v.path for v in reloaded.weights)


def test_exporting_onto_another_base_fails_cleanly_and_writes_nothing(
    family_run, tiny_presets, tmp_path, capsys
):
    result, preset = family_run
    other = next(p for p in tiny_presets.values() if p != preset)
    out = tmp_path / "export"
    code, _, err = run_cli(
        ["export", str(result.run_dir), "--format", "hf", "--out", str(out), "--preset", other],
        capsys,
    )
    assert code == 2 and "does not fit this base model" in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_peft_export_with_base_loads_with_auto_peft_model_alone(family_run, tmp_path):
    from peft import AutoPeftModelForCausalLM

    from kft.export import export

    result, _ = family_run
    if result.metrics["family"] != "gemma3":
        pytest.skip("one family is enough: the naming does not depend on it")
    out = export(str(result.run_dir), "peft", str(tmp_path / "peft"), with_base=True)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out / "base").absolute())
    model = AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()
    assert rel(torch_logits(model), keras_logits(result.task)) <= 1e-4


def test_peft_adapters_name_the_hugging_face_twin_of_their_base(tmp_path):
    from kft.models.presets import hf_twin

    assert hf_twin("gemma2_2b_en") == "google/gemma-2-2b"
    assert hf_twin("kaggle://keras/gemma/keras/gemma_instruct_2b_en/3") == "google/gemma-2b-it"
    assert hf_twin("gemma4_instruct_2b") == "google/gemma-4-E2B-it"
    (tmp_path / "config.json").write_text('{"model_type": "gemma2"}')
    assert hf_twin(str(tmp_path)) == str(tmp_path.absolute())
    assert hf_twin("tiny_gemma3") is None and hf_twin("my_own_preset") is None
