"""Tiny random presets of every family, for smoke runs and tests: `tiny_<variant>` for each variant a
family declares (`Family.tiny`; Gemma 4 has two, dense and MoE: kft/families/gemma4/tiny.py).

Real KerasHub presets (`save_to_preset`) with a SentencePiece tokenizer trained here on the
bundled text, Gemma's special ids (pad 0, eos 1, bos 2, unk 3), the family's symbols (chat-turn
markers among them) as single tokens and byte fallback, so any UTF-8 text (Korean included)
encodes without `<unk>`. The backbone is the family's class at the common sizes below, with the
variant's own arguments.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from kft import families
from kft.core import backend
from kft.data.bundled import FOLDER as BUNDLED

FAMILIES = tuple(
    variant for f in families.FAMILIES.values() for variant in f.tiny
)  # the tiny variants
COMMON = dict(
    num_layers=2,
    num_query_heads=4,
    num_key_value_heads=2,
    hidden_dim=64,
    intermediate_dim=128,
    head_dim=16,
)
EMBEDDING_SCALE = 4.0


def family_of(variant: str) -> families.Family:
    return next(f for f in families.FAMILIES.values() if variant in f.tiny)


def bundled_corpus() -> list[str]:
    """Every text line of the bundled datasets plus the template words."""
    lines = ["Instruction:", "Response:", "Context:", "user", "model"]
    for path in sorted(BUNDLED.glob("*.jsonl")):
        for row in path.read_text(encoding="utf-8").splitlines():
            for value in json.loads(row).values():
                if isinstance(value, list):  # chat messages
                    lines.extend(str(m.get("content", "")) for m in value)
                elif value:
                    lines.append(str(value))
    return lines


def train_sentencepiece(lines: list[str], symbols, vocab_size: int = 640) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=list(symbols),
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",  # keep newlines and spaces, as Gemma's own tokenizer does
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def backbone(variant: str, vocab: int, **overrides):
    """The tiny random backbone of `variant`: the common sizes (any overridden), then the variant's own
    arguments (a Gemma 4 variant has 4 layers whatever `num_layers` says)."""
    import keras_hub

    family = family_of(variant)
    arguments = {**dict(vocabulary_size=vocab, **COMMON), **overrides, **family.tiny[variant]}
    return getattr(keras_hub.models, family.backbone)(**arguments)


def build_tiny_preset(
    family: str, folder: str | Path, seed: int = 0, sequence_length: int = 256, **backbone_overrides
) -> Path:
    """Write a tiny random causal LM of the variant `family` (one of FAMILIES) as a KerasHub preset
    into `folder` (backbone arguments such as num_query_heads may be overridden)."""

    backend.setup()
    import keras
    import keras_hub

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    keras.utils.set_random_seed(seed)
    spec = family_of(family)
    proto = train_sentencepiece(bundled_corpus(), spec.tiny_symbols)
    task_cls = getattr(keras_hub.models, spec.causal_lm)
    tokenizer = getattr(keras_hub.models, spec.tokenizer)(proto=proto)
    preprocessor = task_cls.preprocessor_cls(tokenizer, sequence_length=sequence_length)
    model = backbone(family, tokenizer.vocabulary_size(), **backbone_overrides)
    # Real Gemma embeddings have norms of a few units, so tied output logits can be confident;
    # at KerasHub's default init a 64-wide model could never push its loss far below log(vocab).
    embeddings = model.token_embedding.embeddings
    embeddings.assign(embeddings * EMBEDDING_SCALE)
    task = task_cls(backbone=model, preprocessor=preprocessor)
    folder = Path(folder)
    task.save_to_preset(str(folder))
    return folder
