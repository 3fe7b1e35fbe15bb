"""Tiny random presets of every family, for smoke runs and tests: `tiny_<variant>` for each variant a
family declares (`Family.tiny`; Gemma 4 has two, dense and MoE: kft/families/gemma4/tiny.py).

Real KerasHub presets (`save_to_preset`) with a SentencePiece tokenizer trained here on the
bundled text, Gemma's special ids (pad 0, eos 1, bos 2, unk 3), the family's symbols (chat-turn
markers among them) as single tokens and byte fallback, so any UTF-8 text (Korean included)
encodes without `<unk>`. The backbone is the family's class at the common sizes below, with the
variant's own arguments.
"""

from __future__ import annotations

import inspect
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


GEMMA_SPECIALS = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}


def train_sentencepiece(
    lines: list[str], symbols, vocab_size: int = 640, specials: dict = GEMMA_SPECIALS
) -> bytes:
    """A SentencePiece BPE model with `specials` ({pad, eos, bos, unk: piece or None}) at ids in that
    order (Gemma: pad 0, eos 1, bos 2, unk 3; Llama: unk 0, <s> 1, </s> 2, no pad)."""
    import sentencepiece as spm

    ids = {}
    for role in specials:
        ids[role] = len(ids) if specials[role] else -1
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        **{f"{role}_id": i for role, i in ids.items()},
        **{f"{role}_piece": piece for role, piece in specials.items() if piece},
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


def train_bpe(lines: list[str], specials, vocab_size: int = 640) -> tuple[dict, list[str]]:
    """A byte-level BPE vocabulary and merges as KerasHub's BytePairTokenizer reads them, `specials`
    (start, end, chat markers) appended as whole tokens (as the real Llama 3 and Qwen vocabularies
    keep theirs after the merged ones)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer)
    state = json.loads(tokenizer.to_str())["model"]
    vocabulary = dict(state["vocab"])
    for token in specials:
        vocabulary.setdefault(token, len(vocabulary))
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    return vocabulary, merges


def tokenizer(spec: families.Family):
    """The family's KerasHub tokenizer, trained here on the bundled text."""
    import keras_hub

    cls = getattr(keras_hub.models, spec.tokenizer)
    if spec.tokenizer_kind == "bpe":
        specials = [t for t in spec.tiny_specials.values() if t] + list(spec.tiny_symbols)
        specials = list(dict.fromkeys(specials))
        vocabulary, merges = train_bpe(bundled_corpus(), specials)
        return cls(vocabulary=vocabulary, merges=merges, unsplittable_tokens=specials)
    proto = train_sentencepiece(bundled_corpus(), spec.tiny_symbols, specials=spec.tiny_specials)
    return cls(proto=proto)


def backbone(variant: str, vocab: int, **overrides):
    """The tiny random backbone of `variant`: the common sizes (any overridden), then the variant's own
    arguments (a Gemma 4 variant has 4 layers whatever `num_layers` says)."""
    import keras_hub

    family = family_of(variant)
    arguments = {**dict(vocabulary_size=vocab, **COMMON), **overrides, **family.tiny[variant]}
    cls = getattr(keras_hub.models, family.backbone)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in arguments.items() if k in accepted})


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
    # Built and saved on the host: a distribution a run left set (kft.train keeps its own) must not lay it out.
    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        keras.utils.set_random_seed(seed)
        families.fix_keras_hub()
        spec = family_of(family)
        task_cls = getattr(keras_hub.models, spec.causal_lm)
        words = tokenizer(spec)
        preprocessor = task_cls.preprocessor_cls(words, sequence_length=sequence_length)
        model = backbone(family, words.vocabulary_size(), **backbone_overrides)
        # Real Gemma embeddings have norms of a few units, so tied output logits can be confident;
        # at KerasHub's default init a 64-wide model could never push its loss far below log(vocab).
        embeddings = model.token_embedding.embeddings
        # KerasHub's Llama-style embeddings and head start small too (std 0.01): the same scale.
        embeddings.assign(embeddings * EMBEDDING_SCALE * spec.tiny_kernel_scale)
        head = getattr(model.token_embedding, "reverse_embeddings", None)
        if head is not None:  # an untied head
            head.assign(head * EMBEDDING_SCALE * spec.tiny_kernel_scale)
        if spec.tiny_kernel_scale != 1.0:
            for block in families.decoder_blocks(model):
                for variable in block.weights:
                    if variable.path.endswith("/kernel"):
                        variable.assign(variable * spec.tiny_kernel_scale)
        task = task_cls(backbone=model, preprocessor=preprocessor)
        folder = Path(folder)
        task.save_to_preset(str(folder))
    finally:
        keras.distribution.set_distribution(current)
    return folder
