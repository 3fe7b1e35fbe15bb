"""Data: load records with `datasets`, render them with a template, tokenize with a loss mask.

An example is `[bos] + tokens(segment) for each segment (+ [eos] for plain templates)`, cut to
`seq_len + 1` and shifted by one into inputs and targets. The loss weight of a target is 1 on
response tokens (and the end marker) and 0 elsewhere, so the model learns to answer and stop,
not to repeat prompts. Sequences are padded on the right.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kft import families
from kft.config import DataConfig
from kft.core import network
from kft.core.arithmetic import ceil_div, round_up
from kft.core.errors import KftError
from kft.data import encoding, packing, templates
from kft.data.bundled import FOLDER as BUNDLED  # noqa: E402

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def gather_trained(loss_weights: np.ndarray, targets: np.ndarray):
    """(positions, targets, weights), each shaped like `loss_weights` (B, L): the batch's weighted
    positions as flat indices into its B * L positions, in order, then -1 at weight 0."""
    flat = loss_weights.reshape(-1)
    where = np.flatnonzero(flat > 0)
    positions = np.full(flat.shape, -1, dtype="int32")
    picked_targets = np.zeros(flat.shape, dtype="int32")
    weights = np.zeros(flat.shape, dtype="float32")
    positions[: len(where)] = where
    picked_targets[: len(where)] = targets.reshape(-1)[where]
    weights[: len(where)] = flat[where]
    return (
        positions.reshape(loss_weights.shape),
        picked_targets.reshape(loss_weights.shape),
        weights.reshape(loss_weights.shape),
    )


@dataclass
class Split:
    """Tokenized examples as fixed-shape arrays (N, seq_len)."""

    token_ids: np.ndarray
    padding_mask: np.ndarray
    targets: np.ndarray
    loss_weights: np.ndarray
    prompts: list[str] = field(
        default_factory=list
    )  # for generation: everything before the last response
    references: list[str] = field(default_factory=list)
    # Gemma 4's backbone takes positions as an input (0..L-1: right padding)
    with_position_ids: bool = False
    # Packed rows (data.packing): which example each position belongs to (0 = padding), and its
    # position within that example (see packing.py).
    segment_ids: np.ndarray | None = None
    token_positions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    def tokens(self, index) -> int:
        """Input tokens (not padding) of the examples at `index`."""
        return int(self.padding_mask[index].sum())

    def select(self, index) -> "Split":
        """The examples at `index`, without sample prompts."""

        def pick(a):
            return None if a is None else a[index]

        return Split(
            self.token_ids[index],
            self.padding_mask[index],
            self.targets[index],
            self.loss_weights[index],
            with_position_ids=self.with_position_ids,
            segment_ids=pick(self.segment_ids),
            token_positions=pick(self.token_positions),
        )

    def inputs(self, index=slice(None)) -> dict:
        x = {"token_ids": self.token_ids[index], "padding_mask": self.padding_mask[index]}
        if self.segment_ids is not None:
            x["segment_ids"], x["token_positions"] = (
                self.segment_ids[index],
                self.token_positions[index],
            )
        if self.with_position_ids:
            x["position_ids"] = (
                x["token_positions"]
                if self.segment_ids is not None
                else np.broadcast_to(
                    np.arange(self.token_ids.shape[1], dtype="int32"), x["token_ids"].shape
                ).copy()
            )
        return x

    def batch(
        self, index, trained_only: bool = False, pad_to_multiple: int = 0, length: int | None = None
    ) -> tuple[dict, np.ndarray, np.ndarray]:
        """(inputs, targets, weights) for the examples at `index`. With `pad_to_multiple`, cut to
        the longest example rounded up to that multiple (padding is on the right, so the cut
        removes only padding); `length` cuts to that length instead (at least the longest example).
        With `trained_only`, targets and weights are the batch's trained positions, which the
        inputs name (see trained_logits)."""
        x, y, w = self.inputs(index), self.targets[index], self.loss_weights[index]
        if pad_to_multiple and length is None:
            longest = int(x["padding_mask"].sum(axis=1).max())
            length = min(round_up(longest, pad_to_multiple), self.token_ids.shape[1])
        if length is not None:
            x = {k: v[:, :length] for k, v in x.items()}
            y, w = y[:, :length], w[:, :length]
        if trained_only:
            positions, y, w = gather_trained(w, y)
            x = {**x, "positions": positions, "targets": y}
        return x, y, w


@dataclass
class Dataset:
    train: Split
    eval: Split | None
    stats: dict


def local_path(source: str) -> Path | None:
    """The file behind `source` (a path or `bundled:NAME`), or None for a hub dataset name."""
    if source.startswith("bundled:"):
        name = source.split(":", 1)[1]
        path = BUNDLED / f"{name}.jsonl"
        if not path.is_file():
            names = ", ".join(sorted(f"bundled:{p.stem}" for p in BUNDLED.glob("*.jsonl")))
            raise KftError(f"data.source '{source}' is not a bundled dataset; bundled: {names}")
        return path
    path = Path(source).expanduser()
    if path.suffix.lower() in FILE_BUILDERS or path.exists():
        if not path.is_file():
            raise KftError(f"data.source '{source}' does not exist or is not a file")
        return path
    return None


def _check_line_lengths(path: Path, limit: int) -> None:
    """Refuse a line longer than `limit` bytes with its number, reading at most `limit` + 2 bytes
    at a time: a record of hundreds of MB is never held whole."""
    with open(path, "rb") as f:
        number = 0
        while True:
            line = f.readline(limit + 2)  # the content, and a line end of up to 2 bytes
            if not line:
                return
            number += 1
            if len(line.rstrip(b"\r\n")) > limit:
                raise KftError(
                    f"{path} line {number} is longer than data.max_record_bytes ({limit:,} bytes); "
                    "shorten that record, drop it, or raise data.max_record_bytes"
                )


def _check_text_file(path: Path, max_record_bytes: int) -> None:
    """Fail with a line number on a too-long line, non-UTF-8 text or a bad JSON Lines row (datasets
    only says 'error')."""
    import json

    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        return
    if path.suffix.lower() != ".json":  # a .json array may be one line
        _check_line_lengths(path, max_record_bytes)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise KftError(
            f"{path} is not UTF-8 (first bad byte on line {line}); re-save it as UTF-8"
        ) from None
    if not text.strip():
        raise KftError(f"{path} is empty; it needs at least one example")
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise KftError(
                    f"{path} line {number} is not valid JSON ({e.msg}); fix or remove that line"
                ) from None
            if not isinstance(row, dict):
                raise KftError(
                    f"{path} line {number} is not a JSON object; each line must be one record"
                )


def load_records(config: DataConfig):
    """A `datasets.Dataset` of raw records from a local file, a bundled dataset or the Hub."""
    path = local_path(config.source)
    if path is None and not network.reachable("huggingface.co"):
        # use the local cache if it has the dataset; fail fast if not
        os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets

    datasets.disable_progress_bars()
    if path is not None:
        _check_text_file(path, config.max_record_bytes)
        try:
            return datasets.load_dataset(
                FILE_BUILDERS.get(path.suffix.lower(), "json"), data_files=str(path), split="train"
            )
        except Exception as e:  # datasets wraps parser errors in several types
            raise KftError(f"could not read {path}: {str(e).splitlines()[0][:200]}") from None
    try:
        return datasets.load_dataset(config.source, split=config.split)
    except (ConnectionError, OSError) as e:
        raise KftError(
            f"cannot reach the Hugging Face Hub for dataset '{config.source}' and it is not cached "
            f"({type(e).__name__}); use a local file (--data my.jsonl) or bundled:tiny_facts"
        ) from None
    except Exception as e:
        raise KftError(
            f"could not load dataset '{config.source}' split '{config.split}': {str(e).splitlines()[0][:200]}"
        ) from None


def load_sources(config: DataConfig):
    """(training records, held-out records or None) as `data.source` and `data.eval_source` name them."""
    from dataclasses import replace

    held_out = (
        load_records(replace(config, source=config.eval_source)) if config.eval_source else None
    )
    return load_records(config), held_out


def _select(records, template: templates.Template, config: DataConfig, seed: int):
    present = list(records.column_names)
    missing = [c for c in template.fields(present) if c not in present]
    if missing:
        raise KftError(
            f"data.source '{config.source}' is missing column(s) {', '.join(missing)} for template '{template.name}'; "
            f"columns present: {', '.join(present)}; map them with data.columns"
        )
    if len(records) == 0:
        raise KftError(f"data.source '{config.source}' has no records")
    if config.drop_with_context and template.name == "dolly":
        context = template.column("context")
        if context in present:
            records = records.filter(lambda r: not str(r[context] or "").strip())
    if config.shuffle:
        records = records.shuffle(seed=seed)
    if config.max_examples is not None:
        records = records.select(range(min(config.max_examples, len(records))))
    if len(records) == 0:
        raise KftError(
            "no records left after data.drop_with_context; set it to false or use other data"
        )
    return records


# No piece of the vocabularies kft tokenizes with spans more characters than this (Gemma's longest:
# 31, runs of tabs, spaces or newlines): a record's text cut after this many characters per
# position keeps every token seq_len can hold, and a record cut there is still overlong.
CHARS_PER_TOKEN_MAX = 64


def _cut(segments: list[templates.Segment], seq_len: int) -> list[str]:
    """The segments' texts, cut where no token seq_len keeps can lie (megabytes are not tokenized)."""
    left, texts = CHARS_PER_TOKEN_MAX * (seq_len + 1), []
    for text, _ in segments:
        texts.append(text[: max(left, 0)])
        left -= len(text)
    return texts


def tokenize_segments(
    segment_lists: list[list[templates.Segment]],
    tokenizer,
    ends_with_eos: bool,
    loss_on: str,
    seq_len: int,
):
    """Token ids and per-token loss weights for each example (weights align with ids)."""
    texts = [text for segments in segment_lists for text in _cut(segments, seq_len)]
    pieces = iter(encoding.encode(tokenizer, texts))
    eos = tokenizer.end_token_id
    sequences = []
    for segments in segment_lists:
        ids = encoding.start(tokenizer, segments[0][0] if segments else "")
        weights = [0.0] * len(ids)
        for _, trainable in segments:
            tokens = list(next(pieces))
            ids += tokens
            weights += [1.0 if trainable or loss_on == "all" else 0.0] * len(tokens)
        if ends_with_eos:
            ids.append(eos)
            weights.append(1.0)
        sequences.append((ids, weights))
    return sequences


def to_split(sequences, seq_len: int, pad_id: int) -> Split:
    n = len(sequences)
    ids = np.full((n, seq_len + 1), pad_id, dtype="int32")
    weights = np.zeros((n, seq_len + 1), dtype="float32")
    for row, (seq_ids, seq_weights) in enumerate(sequences):
        ids[row, : len(seq_ids)] = seq_ids
        weights[row, : len(seq_weights)] = seq_weights
    input_lengths = np.array([len(s) - 1 for s, _ in sequences])  # the last token is only a target
    positions = np.arange(seq_len)[None, :]
    return Split(
        token_ids=ids[:, :-1],
        padding_mask=positions < input_lengths[:, None],
        targets=ids[:, 1:],
        loss_weights=weights[:, 1:],
    )


def _check_responses(segment_lists) -> None:
    """Refuse records whose responses are all empty (the model would learn only to stop at once);
    warn, with a count, where some are."""
    markers = families.end_of_turn_markers()

    def empty(segments) -> bool:
        text = "".join(text for text, trainable in segments if trainable)
        for marker in markers:
            text = text.replace(marker, "")
        return not text.strip()

    count = sum(empty(segments) for segments in segment_lists)
    if count and count == len(segment_lists):
        raise KftError(
            f"all {count} records have an empty response (nothing to learn but the end marker); "
            "check the data's response column or data.columns"
        )
    if count:
        print(
            f"kft: warning: {count} of {len(segment_lists)} records have an empty response "
            "(they teach only the end marker)",
            file=sys.stderr,
            flush=True,
        )


def _encode(records, template: templates.Template, tokenizer, config: DataConfig):
    """(segment lists, token sequences cut to seq_len + 1, stats) for the records that keep a response."""
    segment_lists = []
    for index, record in enumerate(records):
        segments = template.render(record)
        if not any(trainable for _, trainable in segments):
            raise KftError(
                f"record {index} has no response to train on (template '{template.name}')"
            )
        segment_lists.append(segments)
    _check_responses(segment_lists)
    sequences = tokenize_segments(
        segment_lists, tokenizer, template.ends_with_eos, config.loss_on, config.seq_len
    )
    limit = config.seq_len + 1
    kept_segments, kept, overlong, no_response = [], [], 0, 0
    for segments, (ids, weights) in zip(segment_lists, sequences):
        if len(ids) > limit:
            overlong += 1
            if config.overlong == "drop":
                continue
            ids, weights = ids[:limit], weights[:limit]
        if sum(weights[1:]) == 0:
            no_response += 1  # its response was cut off entirely: nothing to learn from
            continue
        kept_segments.append(segments)
        kept.append((ids, weights))
    stats = {
        "records": len(segment_lists),
        "overlong": overlong,
        "overlong_action": config.overlong,
        "dropped_no_response_tokens": no_response,
        "examples": len(kept),
    }
    if not kept:
        raise KftError(
            f"every example lost its response at data.seq_len={config.seq_len} ({overlong} of "
            f"{len(segment_lists)} are longer); raise data.seq_len or shorten the prompts"
        )
    return kept_segments, kept, stats


def _packed_split(sequences, seq_len: int, pad_id: int) -> Split:

    return Split(**packing.packed_arrays(sequences, seq_len, pad_id))


def _split(
    segment_lists,
    sequences,
    config: DataConfig,
    pad_id: int,
    num_prompts: int,
    packed: bool = False,
) -> Split:
    split = (_packed_split if packed else to_split)(sequences, config.seq_len, pad_id)
    for segments in segment_lists[:num_prompts]:
        prompt, reference = templates.split_for_generation(segments)
        split.prompts.append(prompt)
        split.references.append(reference)
    return split


def held_out_count(n: int, fraction: float, unit: str) -> int:
    """How many of `n` examples `data.eval_fraction` holds out: at least one where it is set, never all."""
    n_eval = int(round(n * fraction))
    if fraction > 0 and n_eval == 0:
        n_eval = 1
    if n_eval >= n:
        raise KftError(f"data.eval_fraction={fraction} leaves no training {unit} out of {n}")
    return n_eval


def build(
    records, tokenizer, config: DataConfig, seed: int, num_prompts: int = 0, eval_records=None
) -> Dataset:
    """Render, tokenize, cut and split `records` into training and eval arrays.

    The eval split is `eval_records` when given (a held-out file), else the first
    `data.eval_fraction` of the shuffled records.
    """
    template = templates.for_tokenizer(templates.from_config(config), tokenizer)
    segment_lists, sequences, stats = _encode(
        _select(records, template, config, seed), template, tokenizer, config
    )
    n_eval = held_out_count(len(sequences), config.eval_fraction, "examples")
    pad = tokenizer.pad_token_id
    train = _split(
        segment_lists[n_eval:], sequences[n_eval:], config, pad, num_prompts, packed=config.packing
    )
    eval_ = (
        _split(segment_lists[:n_eval], sequences[:n_eval], config, pad, num_prompts)
        if n_eval
        else None
    )
    if eval_records is not None:
        held = _select(eval_records, template, config, seed)
        eval_segments, eval_sequences, eval_stats = _encode(held, template, tokenizer, config)
        eval_ = _split(eval_segments, eval_sequences, config, pad, num_prompts)
        stats["eval_overlong"] = eval_stats["overlong"]
    if (
        families.of_tokenizer(tokenizer)
        and families.get(families.of_tokenizer(tokenizer)).needs_position_ids
    ):
        for split in (train, eval_):
            if split is not None:
                split.with_position_ids = True
    stats.update(
        train_examples=len(sequences) - n_eval,
        eval_examples=len(eval_) if eval_ else 0,
        train_tokens=int(train.padding_mask.sum()),
        trained_tokens=int(train.loss_weights.sum()),
    )
    if config.packing:
        stats["packed_rows"] = len(train)
    if stats["trained_tokens"] == 0:
        raise KftError(
            "every loss weight is zero (nothing would be trained); check data.loss_on and the template"
        )
    return Dataset(train=train, eval=eval_, stats=stats)


def steps_per_epoch(split: Split, batch_size: int) -> int:
    if len(split) < batch_size:
        what = "packed rows" if split.segment_ids is not None else "training examples"
        raise KftError(
            f"train.batch_size={batch_size} is larger than the {len(split)} {what}; lower it"
        )
    return len(split) // batch_size


# A batch shape costs a trace and a compile (or a persistent-cache load) of the train step: ~10 s
# on the 270M on CPU, about 3 of its steps (on accelerators, with faster steps, many more).
PROGRAM_COST_STEPS = 3


def batches(
    split: Split,
    batch_size: int,
    num_batches: int,
    seed: int,
    start: int = 0,
    trained_only: bool = False,
    pad_to_multiple: int = 0,
    group_by_length: bool = False,
    program_cost_steps: float = 0,
):
    """A Keras PyDataset of micro-batches `start..num_batches-1`; epoch e uses permutation seed+e.

    Indexing is a pure function of (seed, batch index), so a resumed run picks up its data
    position without replaying the batches before it. With `pad_to_multiple`, each batch is cut
    to its longest example rounded up to that multiple (padding is on the right, so the cut
    removes only padding): a few shapes, a few XLA programs, far less work on padding.
    With `program_cost_steps`, a shape is kept only where it saves the run more positions than
    that many full-length batches hold (see `run_lengths`); its batches run at the next longer one.
    With `group_by_length`, each epoch's shuffled order is cut into windows of 16 batches, each
    window is sorted by length and the resulting batches are shuffled: batches hold examples of
    similar length, so the cut removes most padding (HF Trainer's group_by_length, seeded).
    """
    import functools

    import keras

    per_epoch = steps_per_epoch(split, batch_size)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return num_batches - start

        @staticmethod
        @functools.lru_cache(maxsize=2)
        def epoch_order(epoch: int) -> np.ndarray:
            rng = np.random.default_rng(seed + epoch)
            order = rng.permutation(len(split))
            if not group_by_length:
                return order
            lengths = split.padding_mask.sum(axis=1)
            window = batch_size * 16
            grouped = np.concatenate(
                [
                    sorted(order[i : i + window], key=lambda j: -lengths[j])
                    for i in range(0, len(order), window)
                ]
            )
            per_batch = grouped[: per_epoch * batch_size].reshape(per_epoch, batch_size)
            return per_batch[rng.permutation(per_epoch)].reshape(-1)

        def indices(self, i):
            epoch, b = divmod(start + i, per_epoch)
            return np.sort(self.epoch_order(epoch)[b * batch_size : (b + 1) * batch_size])

        def __getitem__(self, i):
            length = self.lengths[start + i] if self.lengths is not None else None
            return split.batch(self.indices(i), trained_only, pad_to_multiple, length=length)

        def tokens(self, i) -> int:
            return split.tokens(self.indices(i))

        @functools.cached_property
        def lengths(self) -> np.ndarray | None:
            """The cut of every batch of the run (from batch 0: a resumed run keeps its shapes)."""
            if not (pad_to_multiple and program_cost_steps):
                return None
            longest = split.padding_mask.sum(axis=1)
            epochs = ceil_div(num_batches, per_epoch)
            per_batch = np.concatenate(
                [
                    longest[self.epoch_order(e)[: per_epoch * batch_size]]
                    .reshape(per_epoch, batch_size)
                    .max(axis=1)
                    for e in range(epochs)
                ]
            )
            cuts = np.minimum(
                round_up(per_batch[:num_batches], pad_to_multiple), split.token_ids.shape[1]
            )
            return run_lengths(cuts, program_cost_steps)

    return Batches()


def run_lengths(cuts: np.ndarray, program_cost_steps: float) -> np.ndarray:
    """Each batch's length once shapes not worth their own program are merged into the next longer.

    From the shortest shape up: its batches move to the next longer shape when the positions they
    would save (length difference x batches) are fewer than `program_cost_steps` batches of the
    longest shape hold. A 10-step run with one short batch then compiles one train step, not two;
    a long run keeps every shape that pays for itself."""
    lengths = cuts.copy()
    shapes = sorted(set(lengths.tolist()))
    budget = program_cost_steps * shapes[-1]
    for shape, longer in zip(shapes, shapes[1:]):
        at = lengths == shape
        if (longer - shape) * at.sum() < budget:
            lengths[at] = longer
    return lengths


EVAL_ROUND = 8  # eval rows are cut to the split's longest example rounded up to this


def packed_for_eval(split: Split, length: int) -> Split:
    """`split`'s examples packed several to a row of `length` positions (see packing.py): the same
    tokens, weights and per-example attention, in fewer rows. Generation prompts are not carried."""
    lengths = split.padding_mask.sum(axis=1)
    sequences = [
        (
            np.append(split.token_ids[i, :n], split.targets[i, n - 1]),
            np.append(0.0, split.loss_weights[i, :n]),
        )
        for i, n in enumerate(lengths)
    ]
    packed = _packed_split(sequences, length, pad_id=0)  # padding is masked: its id is never read
    packed.with_position_ids = split.with_position_ids
    return packed


def eval_batches(split: Split, batch_size: int, trained_only: bool = False):
    """A Keras PyDataset over every example of `split` in order, in one shape (one compiled eval
    program, the same before and after training): rows cut to the split's longest example (rounded
    up to EVAL_ROUND), the last batch filled with weightless repeats. With `trained_only` (the
    loss at trained positions, which reads packed rows), short examples are packed several to a
    row when that saves rows: an eval set of mixed lengths computes little padding."""
    import keras

    longest = int(split.padding_mask.sum(axis=1).max()) if len(split) else 0
    length = min(round_up(longest, EVAL_ROUND), split.token_ids.shape[1])
    if trained_only and split.segment_ids is None and len(split) > 1:
        packed = packed_for_eval(split, length)
        if len(packed) < len(split):
            split = packed
    size = min(batch_size, len(split))

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return ceil_div(len(split), size)

        def __getitem__(self, i):
            index = np.arange(i * size, (i + 1) * size)
            real = index < len(split)
            index = np.where(real, index, len(split) - 1)
            x = {k: v[:, :length] for k, v in split.inputs(index).items()}
            y, w = split.targets[index, :length], split.loss_weights[index, :length] * real[:, None]
            if trained_only:
                positions, y, w = gather_trained(w, y)
                x = {**x, "positions": positions, "targets": y}
            return x, y, w

    return Batches()
