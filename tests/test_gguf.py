"""`kft export --format gguf`: the merged model as one GGUF (llama.cpp's tensor names and layout,
the tokenizer, the run's chat template) and an Ollama Modelfile, read back by transformers' own
GGUF loader and, where llama-cpp-python is installed (kft[llamacpp]), by llama.cpp itself: logits,
greedy tokens and token ids are the tuned Keras model's. `--format gguf-lora`: the adapter over the
base GGUF gives the merged tensors (numpy) and the same logits in llama.cpp.

Gemma (llama.cpp only) and Gemma 2/3 (SentencePiece, norms stored as 1 + w, soft caps), Llama 2 and
Mistral (SentencePiece with llama.cpp's rotary q/k row order), Llama 3 (byte-level BPE), Qwen 2.5
(untied head, q/k/v biases) and Qwen 3 (q/k norms). The slow test compares the real Gemma 3 270M's
export with the llama.cpp-written file it was prepared from."""

import os

import numpy as np
import pytest
from conftest import CONFIGS, run_cli
from test_export import MIXED, keras_greedy, keras_logits, rel, torch_greedy, torch_logits

IDS = np.array([[5, 300, 301, 302, 303, 304, 305, 306, 307, 308]], dtype="int32")


# transformers' GGUF reader takes Gemma 3's query scaling and Qwen 3's head size from its defaults
# (256 and 128, what the real models use), so those two are built with that head size.
HEAD_DIM = {"gemma2": 256, "gemma3": 256, "qwen3": 128}


@pytest.fixture(
    scope="module",
    params=[
        "gemma2",
        "gemma3",
        "llama",
        "qwen3",
        # Llama's arch, SentencePiece and byte-level BPE again (llama and qwen3 hold each case in
        # the default tier): in the slow tier, for the default suite's time
        *(pytest.param(f, marks=pytest.mark.slow) for f in ("llama3", "mistral", "qwen")),
    ],
)
def exported(request, tiny_presets, tmp_path_factory):
    """(family, the tuned task, {quant: GGUF export folder}) for a short chat-template run."""
    import kft
    from kft.export import export
    from kft.models.tiny import build_tiny_preset

    family = request.param
    root = tmp_path_factory.mktemp(f"gguf-{family}")
    preset = (
        str(build_tiny_preset(family, root / "preset", head_dim=HEAD_DIM[family]))
        if family in HEAD_DIM
        else tiny_presets[family]
    )
    result = kft.train(
        os.path.join(CONFIGS, "tiny.yaml"),
        **{
            "model.preset": preset,
            "data.source": "bundled:tiny_chat",
            "data.template": "chat",
            "data.seq_len": 128,
            "train.epochs": 10,
            "train.batch_size": 2,
            "train.lr": 0.02,
            "output.samples": 0,
            "output.tensorboard": False,
            "output.dir": str(root / "run"),
        },
    )
    folders = {
        q: export(str(result.run_dir), "gguf", str(root / q), quant=q) for q in ("f32", "q8_0")
    }
    folders["lora"] = export(
        str(result.run_dir), "gguf-lora", str(root / "lora"), quant="f32", with_base=True
    )
    return family, result, folders


def transformers_reads(family):
    if family == "gemma":
        pytest.skip("transformers' GGUF reader has no Gemma 1: checked in llama.cpp itself")


def read_back(folder):
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), gguf_file="model.gguf", dtype=torch.float32
    ).eval()


def test_the_f32_gguf_read_by_transformers_gives_the_tuned_logits_and_greedy_tokens(exported):
    family, result, folders = exported
    transformers_reads(family)
    model = read_back(folders["f32"])
    assert rel(torch_logits(model, IDS), keras_logits(result.task, IDS)) <= 1e-4
    assert torch_greedy(model, IDS, 16) == keras_greedy(result.task, IDS, 16)


def test_q8_0_stays_within_its_stated_tolerance(exported):
    family, result, folders = exported
    transformers_reads(family)
    # 8-bit blocks of 32 with one scale each: measured 1.2e-2 to 3.6e-2 on these tiny models.
    assert (
        rel(torch_logits(read_back(folders["q8_0"]), IDS), keras_logits(result.task, IDS)) <= 0.05
    )
    assert (folders["q8_0"] / "model.gguf").stat().st_size < (
        folders["f32"] / "model.gguf"
    ).stat().st_size


def test_the_gguf_tokenizer_and_chat_template_are_the_runs(exported):
    import gguf
    import transformers

    from kft import families
    from kft.data import templates

    family, result, folders = exported
    transformers_reads(family)
    keras_tokenizer = result.task.preprocessor.tokenizer
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(folders["f32"]), gguf_file="model.gguf"
    )
    # transformers' GGUF reader ignores tokenizer.ggml.add_space_prefix (false in these tiny
    # SentencePiece files, true in real Llama 2 / Mistral): it always prefixes one. llama.cpp honours
    # it (test_llama_cpp_itself...), so the file is right; here the reader's ids are kft's for " " + text.
    prefixed = families.get(family).gguf_arch == "llama" and family != "llama3"
    assert hf_tokenizer(MIXED, add_special_tokens=False)["input_ids"] == [
        int(i) for i in keras_tokenizer(" " + MIXED if prefixed else MIXED)
    ]
    chat = templates.for_tokenizer(templates.Template("chat", {}), keras_tokenizer).chat
    reader = gguf.GGUFReader(str(folders["f32"] / "model.gguf"))
    field = reader.fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode("utf-8") == chat.jinja
    modelfile = (folders["f32"] / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n")
    assert f'PARAMETER stop "{chat.end}"' in modelfile and "TEMPLATE" in modelfile
    assert "ollama create" in (folders["f32"] / "README.md").read_text()


def test_bf16_and_q4_0_encode_within_their_bounds(exported):
    """bf16 logits within 3e-2 (measured 4.6e-3, 1.5e-2); every q4_0 matrix dequantizes to the f32
    export's within one step of its block (max |w| / 8 per block of 32: half a step from rounding, a whole one
    where +8 clips to 7; plus the f16 scale's rounding, 8 steps x 2^-11). The tiny models' logits
    are no measure of 4-bit quality (0.25 to 0.6 relative: 64-wide, trained at lr 0.02); the 270M
    main job's q4_0 export is (docs/export.md)."""
    import gguf

    from kft.export import export

    family, result, folders = exported
    if family not in ("gemma3", "qwen"):
        pytest.skip("the encodings do not depend on the family; two are enough")
    root = folders["f32"].parent
    bf16 = export(str(result.run_dir), "gguf", str(root / "bf16"), quant="bf16")
    assert rel(torch_logits(read_back(bf16), IDS), keras_logits(result.task, IDS)) <= 3e-2
    q4 = export(str(result.run_dir), "gguf", str(root / "q4_0"), quant="q4_0")
    f32, _ = _tensors(folders["f32"] / "model.gguf")
    quantized = 0
    for tensor in gguf.GGUFReader(str(q4 / "model.gguf")).tensors:
        if tensor.tensor_type != gguf.GGMLQuantizationType.Q4_0:
            continue
        got = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(-1, 32)
        blocks = f32[tensor.name].reshape(-1, 32)
        bound = np.abs(blocks).max(axis=1, keepdims=True) * (1 / 8 + 8 / 2**11 / 8) + 1e-7
        assert (np.abs(got - blocks) <= bound).all(), tensor.name
        quantized += 1
    assert quantized >= 2 * 7  # every layer's projections
    torch_logits(read_back(q4), IDS)  # transformers reads it


def _tensors(path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: np.array(t.data) for t in reader.tensors}, reader


def test_the_adapter_gguf_applied_to_the_base_gguf_gives_the_merged_export(exported):
    """W + B @ A per module (alpha 0: llama.cpp applies B @ A as written) equals the merged f32
    export's tensor; every tensor without a pair is the base's, unchanged."""
    from kft import families

    family, _, folders = exported
    adapter, reader = _tensors(folders["lora"] / "adapter.gguf")
    assert {k: reader.fields[k].contents() for k in reader.fields if not k.startswith("GGUF")} == {
        "general.architecture": families.get(family).gguf_arch,
        "general.type": "adapter",
        "adapter.type": "lora",
        "adapter.lora.alpha": 0.0,
    }
    base, _ = _tensors(folders["lora"] / "base.gguf")
    merged, _ = _tensors(folders["f32"] / "model.gguf")
    pairs = 0
    for name, tensor in merged.items():
        if f"{name}.lora_a" in adapter:
            update = adapter[f"{name}.lora_b"] @ adapter[f"{name}.lora_a"]
            assert np.abs(base[name] + update - tensor).max() <= 1e-5 * np.abs(tensor).max(), name
            assert np.abs(update).max() > 1e-3  # the run did move this module
            pairs += 1
        else:
            assert np.array_equal(base[name], tensor), name
    assert pairs == len(adapter) // 2 == 2 * 7  # two layers, kft's seven projections (tiny.yaml)
    modelfile = (folders["lora"] / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./base.gguf\nADAPTER ./adapter.gguf\n")
    assert "--lora" in (folders["lora"] / "README.md").read_text()


def test_llama_cpp_itself_gives_the_tuned_logits_merged_and_as_base_plus_adapter(exported):
    """llama.cpp (llama-cpp-python, the optional `kft[llamacpp]` extra): the merged f32 export, and
    the base GGUF with the adapter GGUF, give kft's token ids and the tuned Keras model's logits and
    greedy tokens."""
    llama_cpp = pytest.importorskip("llama_cpp")
    family, result, folders = exported
    ids = [int(i) for i in IDS[0]]
    expected = keras_logits(result.task, IDS)[0]
    for files in (
        dict(model_path=str(folders["f32"] / "model.gguf")),
        dict(
            model_path=str(folders["lora"] / "base.gguf"),
            lora_path=str(folders["lora"] / "adapter.gguf"),
        ),
    ):
        model = llama_cpp.Llama(
            **files, logits_all=True, n_ctx=64, type_k=0, type_v=0, verbose=False, seed=0
        )  # an f32 KV cache (type 0), not llama.cpp's default f16
        keras_tokenizer = result.task.preprocessor.tokenizer
        assert model.tokenize(MIXED.encode(), add_bos=False, special=False) == [
            int(i) for i in keras_tokenizer(MIXED)
        ]
        model.eval(ids)
        got = np.array(model.scores[: len(ids)])
        # ggml's CPU GELU reads an f16 table: Gemma measured 3.5e-4; SiLU families 1e-6 to 9e-6.
        assert rel(got, expected) <= (1e-3 if family.startswith("gemma") else 1e-4), files
        model.reset()
        greedy = []
        for token in model.generate(ids, temp=0.0):
            greedy.append(int(token))
            if len(greedy) == 16:
                break
        assert greedy == keras_greedy(result.task, IDS, 16), files


def test_a_family_without_a_gguf_writer_is_refused_in_one_line(tiny_presets, tmp_path, capsys):
    out = tmp_path / "gguf"
    preset = tiny_presets["gemma4"]
    code, _, err = run_cli(
        ["export", "--base", "--preset", preset, "--format", "gguf", "--out", str(out)], capsys
    )
    assert code == 2 and "no GGUF export" in err and "gemma3" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_the_270m_export_matches_the_llama_cpp_written_file_and_reads_back_exactly(tmp_path):
    """`kft export --base --preset gemma3_270m_gguf --format gguf --quant f32`: the metadata keys and
    values of the llama.cpp-written Q4_K_M file it was prepared from (less file type and naming keys),
    the same token strings, the same tensors; transformers reads it back to kft's logits (<= 1e-4)."""
    from pathlib import Path

    import gguf

    from kft.core import backend
    from kft.export import export
    from kft.quant import frozen_base

    out = export(
        None, "gguf", str(tmp_path / "gguf"), preset="gemma3_270m_gguf", base=True, quant="f32"
    )
    work = backend.cache_dir() / "presets" / "gemma3_270m_gguf-work"
    reference = gguf.GGUFReader(str(next(Path(work).glob("*.gguf"))))
    ours = gguf.GGUFReader(str(out / "model.gguf"))
    naming = {"general.basename", "general.size_label", "general.tags", "general.license"}
    quantized = {"general.quantization_version", "general.file_type"}
    assert set(reference.fields) - set(ours.fields) == naming | {"general.quantization_version"}
    assert set(ours.fields) - set(reference.fields) == {"tokenizer.chat_template"}
    differ = {
        k
        for k in set(reference.fields) & set(ours.fields)
        if reference.fields[k].contents() != ours.fields[k].contents()
    }
    # The prepared preset's tokenizer was rebuilt by transformers from the GGUF: same pieces and ids,
    # other scores and no control types (kft's note on #38).
    assert differ <= quantized | {
        "general.name",
        "GGUF.kv_count",
        "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type",
    }
    assert {t.name for t in reference.tensors} == {t.name for t in ours.tensors}
    task = frozen_base.load("gemma3_270m_gguf", "float32")[0]
    ids = np.array([[2, 818, 5279, 529, 7001, 563, 9079, 236761]], dtype="int32")
    assert rel(torch_logits(read_back(out), ids), keras_logits(task, ids)) <= 1e-4
    try:
        import llama_cpp
    except ImportError:
        return
    # The scores and types kft writes are its own tokenizer's: llama.cpp tokenizes as kft does.
    model = llama_cpp.Llama(str(out / "model.gguf"), n_ctx=64, verbose=False, vocab_only=True)
    assert model.tokenize(MIXED.encode(), add_bos=False, special=False) == [
        int(i) for i in task.preprocessor.tokenizer(MIXED)
    ]


def test_a_gguf_export_publishes_to_the_hub_as_a_dry_run(exported, capsys):
    family, _, folders = exported
    if family != "qwen":
        pytest.skip("one family is enough: publishing does not depend on it")
    code, out, err = run_cli(
        ["publish", str(folders["q8_0"]), "--to", "hf://me/tiny-qwen-gguf", "--dry-run"], capsys
    )
    assert code == 0, err
    assert "would upload gguf folder" in out and "model.gguf" in out and "Modelfile" in out
    assert "ollama create" in out  # the model card says how to run it
    code, out, err = run_cli(
        ["publish", str(folders["lora"]), "--to", "hf://me/tiny-qwen-lora-gguf", "--dry-run"],
        capsys,
    )
    assert code == 0, err
    assert "would upload gguf-lora folder" in out and "adapter.gguf" in out and "base.gguf" in out
