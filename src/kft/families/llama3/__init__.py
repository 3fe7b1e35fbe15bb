"""Llama 3, 3.1 and 3.2 (KerasHub's Llama3Backbone; byte-level BPE, header turns ending <|eot_id|>),
and SmolLM2 (the same architecture speaking ChatML), prepared offline as `smollm2_135m_gguf`."""

from kft.families import chat
from kft.families.family import Family
from kft.families.llama import blocks, hf
from kft.families.llama3 import presets, tiny

LICENSE = (
    "This model is a derivative of Llama 3 and is subject to the Llama 3.x Community License "
    "(https://www.llama.com/llama3_2/license/) and its Acceptable Use Policy; SmolLM2 weights are "
    "Apache-2.0."
)


def _sentencepiece_folder(folder) -> str | None:
    """KerasHub reads every HF `model_type: llama` folder as Llama 3 (byte-level BPE); a Llama 2 folder's
    tokenizer is SentencePiece (byte fallback, a `tokenizer.model`) and would load as wrong ids."""
    import json
    from pathlib import Path

    folder = Path(folder)
    document = folder / "tokenizer.json"
    sentencepiece = (folder / "tokenizer.model").is_file()
    if document.is_file():
        try:
            model = json.loads(document.read_text(encoding="utf-8")).get("model", {})
        except (OSError, ValueError):
            return None  # the loader reports a damaged file itself
        sentencepiece = bool(model.get("byte_fallback")) or model.get("type") == "Unigram"
    if not sentencepiece:
        return None
    return (
        "this Hugging Face Llama folder has a SentencePiece tokenizer (Llama 2), which KerasHub 0.32 "
        "would read as Llama 3's byte-level BPE; use the Kaggle preset llama2_7b_en or "
        "llama2_instruct_7b_en (or a Keras preset folder) instead"
    )


FAMILY = Family(
    "llama3",
    "Llama3Backbone",
    "Llama3CausalLM",
    "Llama3Tokenizer",
    ("llama",),
    "LlamaForCausalLM",
    "llama",
    chat=chat.LLAMA3,
    max_position_embeddings=131072,
    license=LICENSE,
    preset_sizes=presets.SIZES,
    preset_aliases=presets.ALIASES,
    hf_twins=presets.HF_TWINS,
    tiny=tiny.BACKBONES,
    tiny_symbols=tiny.SYMBOLS,
    tiny_specials=tiny.SPECIALS,
    tokenizer_kind="bpe",
    gguf_arch="llama",
    gguf_pre_tokenizer="llama-bpe",
    gguf_metadata=hf.gguf_metadata,
    gguf_adds_bos=True,
    gguf_tensor=hf.gguf_rotary_rows,
    hf_write_tokenizer=hf.write_tokenizer,
    gguf_presets=presets.GGUF,
    hf_folder_problem=_sentencepiece_folder,
    **blocks.hooks(**hf.hooks(hf.Layout(max_position_embeddings=131072))),
)
