"""Writing a KerasHub model as a transformers checkpoint: config.json, model.safetensors,
generation_config.json and the tokenizer files. What differs by family (the config, the weight
names and layout, the tokenizer class) is the family's (kft.families.Family.hf_config, hf_weights,
hf_tokenizer_class; Gemma 1-3's in kft/families/gemma/hf.py, Gemma 4's in kft/families/gemma4/hf.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from kft import families
from kft.core.errors import KftError


def _exporting(family: str) -> families.Family:
    f = families.get(family)
    if f.hf_config is None or f.hf_weights is None:
        raise KftError(f"kft has no transformers export for {family} models; use --format keras")
    return f


def hf_config(backbone, family: str, tokenizer) -> dict:
    """transformers config.json for `backbone`."""
    f = _exporting(family)
    return {
        "architectures": [f.hf_architecture],
        "model_type": f.hf_model_type,
        **f.hf_config(backbone, tokenizer),
    }


def hf_weights(backbone, family: str) -> dict[str, np.ndarray]:
    """{transformers parameter name: float32 array} for `backbone` (LoRA must be merged first)."""
    return _exporting(family).hf_weights(backbone)


def write_tokenizer(tokenizer, folder: Path, tokenizer_class: str, chat_template: str = "") -> None:
    """tokenizer.model (the SentencePiece proto itself) plus transformers' tokenizer files."""
    proto = tokenizer.proto
    (folder / "tokenizer.model").write_bytes(
        proto if isinstance(proto, bytes) else Path(proto).read_bytes()
    )
    pieces = {"bos_token": tokenizer.start_token, "eos_token": tokenizer.end_token}
    pieces["pad_token"] = tokenizer.id_to_token(tokenizer.pad_token_id)
    unk = getattr(tokenizer, "unk_token", None) or "<unk>"
    pieces["unk_token"] = unk
    specials = {k: v for k, v in pieces.items() if v}
    vocabulary = set(tokenizer.get_vocabulary())
    extra = [t for t in families.turn_markers() if t in vocabulary and t not in specials.values()]
    extra = list(dict.fromkeys(extra))
    config = {
        "tokenizer_class": tokenizer_class,
        **specials,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "additional_special_tokens": extra,
        "model_max_length": 1_000_000,
    }
    if chat_template:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({**specials, "additional_special_tokens": extra}, indent=2) + "\n"
    )


def write(backbone, tokenizer, family: str, folder: str | os.PathLike) -> None:
    """config.json, model.safetensors, generation_config.json and tokenizer files into `folder`."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps(hf_config(backbone, family, tokenizer), indent=2) + "\n"
    )
    # safetensors writes an array's memory as it lies: transposed views must be made contiguous first.
    weights = {
        name: np.ascontiguousarray(array) for name, array in hf_weights(backbone, family).items()
    }
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    from kft.generation.sampling import stop_token_ids

    stops = list(stop_token_ids(tokenizer))
    generation = {
        "bos_token_id": tokenizer.start_token_id,
        "eos_token_id": stops,
        "pad_token_id": tokenizer.pad_token_id,
    }
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    f = families.get(family)
    if f.hf_write_tokenizer is not None:
        f.hf_write_tokenizer(tokenizer, folder, chat_jinja(tokenizer, f))
    else:
        write_tokenizer(tokenizer, folder, f.hf_tokenizer_class, chat_jinja(tokenizer, f))


def chat_jinja(tokenizer, family: families.Family) -> str:
    """The Jinja template of the chat format `data.template: chat` gives this tokenizer ("" if none)."""
    return families.chat_for(family, set(tokenizer.get_vocabulary())).jinja
