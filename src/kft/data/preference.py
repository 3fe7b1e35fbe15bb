"""Preference data (train.objective dpo or orpo): records with a prompt and two answers.

A record is an SFT record whose response comes twice, `chosen` and `rejected` (names mapped with
`data.columns` like every template field). The prompt is whatever the template reads (dolly's
instruction/context, a custom template's fields, a chat `messages` list), or a `prompt` column
(text, or a list of chat messages). The common Hugging Face layouts where `chosen` and `rejected`
are whole conversations (lists of messages, or texts such as Anthropic HH's) are split at their
shared prefix: that is the prompt, the rest is each answer (TRL's `extract_prompt`).

Every pair becomes two examples tokenized as SFT ones (the answer and its end marker trained),
held in a `PairSplit`; a batch of B pairs is 2B rows, chosen then rejected per pair (see
kft.models.preference). With `data.packing`, training pairs are packed whole (`PackedPairs`):
rows of 2 x seq_len positions, the room one unpacked pair takes, each holding as many pairs as
fit, chosen and rejected as adjacent segments (kft.data.packing's block-diagonal attention).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from kft import families
from kft.config import DataConfig
from kft.core.arithmetic import ceil_div, round_up
from kft.core.errors import KftError
from kft.data import dataset, packing, templates

ANSWERS = ("chosen", "rejected")


@dataclass
class PairSplit:
    """Pairs as two aligned Splits; `reference` (N, 2) holds each answer's summed log-prob under the
    model before training, once computed."""

    chosen: dataset.Split
    rejected: dataset.Split
    reference: np.ndarray | None = None
    segment_ids = None  # pairs are not packed

    def __len__(self) -> int:
        return len(self.chosen)

    @property
    def prompts(self) -> list[str]:
        return self.chosen.prompts

    @property
    def references(self) -> list[str]:
        return self.chosen.references

    @property
    def token_ids(self) -> np.ndarray:
        return self.chosen.token_ids

    @functools.cached_property
    def padding_mask(self) -> np.ndarray:
        """Where either answer of a pair has a token: a pair's length is its longer answer's."""
        return self.chosen.padding_mask | self.rejected.padding_mask

    def tokens(self, index) -> int:
        return self.chosen.tokens(index) + self.rejected.tokens(index)

    def rows(self, index) -> dataset.Split:
        """The pairs at `index` as 2 x len(index) rows: chosen, rejected, chosen, ..."""
        index = np.asarray(index)
        c, r = self.chosen.select(index), self.rejected.select(index)

        def interleave(a, b):
            return None if a is None else np.stack([a, b], axis=1).reshape(-1, *a.shape[1:])

        return dataset.Split(
            interleave(c.token_ids, r.token_ids),
            interleave(c.padding_mask, r.padding_mask),
            interleave(c.targets, r.targets),
            interleave(c.loss_weights, r.loss_weights),
            with_position_ids=c.with_position_ids,
        )

    def batch(self, index, trained_only: bool = True, pad_to_multiple: int = 0, length=None):
        """(inputs at trained positions, reference log-probs per row, row weights) for the pairs at
        `index` (zeros where the reference is not yet known)."""
        rows = self.rows(index)
        x, _, _ = rows.batch(slice(None), True, pad_to_multiple, length)
        reference = (
            np.zeros((len(rows),), "float32")
            if self.reference is None
            else self.reference[np.asarray(index)].reshape(-1).astype("float32")
        )
        return x, reference, np.ones((len(rows),), "float32")


@dataclass
class PackedPairs:
    """Training pairs packed whole into rows of 2 x seq_len positions (data.packing). Row r's k-th
    segment is answer `slots[r, k]` (2 x pair + 0 for chosen, 1 for rejected; -1: no segment);
    a batch's `y` is the reference log-prob of each slot. `pairs` (unpacked) is what the reference
    pass and the measurements read."""

    pairs: PairSplit
    rows: dataset.Split
    slots: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def reference(self) -> np.ndarray | None:
        return self.pairs.reference

    @property
    def segment_ids(self) -> np.ndarray:
        return self.rows.segment_ids

    @property
    def padding_mask(self) -> np.ndarray:
        return self.rows.padding_mask

    @property
    def token_ids(self) -> np.ndarray:
        return self.rows.token_ids

    @property
    def prompts(self) -> list[str]:
        return self.pairs.prompts

    @property
    def references(self) -> list[str]:
        return self.pairs.references

    def tokens(self, index) -> int:
        return self.rows.tokens(index)

    def batch(self, index, trained_only: bool = True, pad_to_multiple: int = 0, length=None):
        """(inputs at trained positions with `answer_slots`, reference log-prob per slot (rows, K),
        row weights) for the packed rows at `index`."""
        x, _, _ = self.rows.batch(index, True, pad_to_multiple, length)
        slots = self.slots[np.asarray(index)]
        x["answer_slots"] = (slots >= 0).astype("int32")  # its width is K: the model's output shape
        flat = (
            np.zeros(2 * len(self.pairs), "float32")
            if self.reference is None
            else self.reference.reshape(-1)
        )
        reference = np.where(slots >= 0, flat[np.maximum(slots, 0)], 0.0).astype("float32")
        return x, reference, np.ones((len(slots),), "float32")


def pack(pairs: PairSplit, kept, seq_len: int, pad_id: int) -> PackedPairs:
    """`pairs` (built from `kept`: (segments, chosen, rejected) sequences) packed whole, best fit
    longest first, into rows of 2 x seq_len positions: every pair fits, as each answer is at most
    seq_len positions."""
    sequences = [answer for _, chosen, rejected in kept for answer in (chosen, rejected)]
    lengths = [len(c[0]) + len(r[0]) - 2 for _, c, r in kept]  # a last token is only a target
    rows = [
        [a for p in row for a in (2 * p, 2 * p + 1)] for row in packing.pack(lengths, 2 * seq_len)
    ]
    split = dataset.Split(**packing.fill(sequences, rows, 2 * seq_len, pad_id))
    split.with_position_ids = pairs.chosen.with_position_ids
    slots = np.full((len(rows), max(map(len, rows))), -1, "int32")
    for r, row in enumerate(rows):
        slots[r, : len(row)] = row
    return PackedPairs(pairs, split, slots)


def unpacked(split) -> PairSplit:
    """The pairs of a PairSplit or PackedPairs, one pair per two rows."""
    return split.pairs if isinstance(split, PackedPairs) else split


def eval_batches(pairs: PairSplit, batch_size: int):
    """[(x, y, w, real pairs)] over every pair in order, in one shape (rows cut to the longest answer,
    rounded up): the last batch is filled with repeats, `real` says how many are not."""
    longest = int(pairs.padding_mask.sum(axis=1).max())
    length = min(round_up(longest, dataset.EVAL_ROUND), pairs.token_ids.shape[1])
    size = min(batch_size, len(pairs))
    for i in range(ceil_div(len(pairs), size)):
        index = np.arange(i * size, (i + 1) * size)
        real = int((index < len(pairs)).sum())
        index = np.minimum(index, len(pairs) - 1)
        yield (*pairs.batch(index, length=length), real)


def _common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _text_prefix(chosen: str, rejected: str) -> int:
    """Where two texts part, moved before a space that precedes both answers (TRL's rule)."""
    n = _common_prefix(list(chosen), list(rejected))
    if 0 < n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
        n -= 1
    return n


def _parts(record: dict, template: templates.Template, index: int):
    """(prompt or None, chosen answer, rejected answer): prompt None means the template's own
    prompt fields are in the record; else it is a text or a list of chat messages."""
    chosen, rejected = (record.get(template.column(a)) for a in ANSWERS)
    prompt_column = template.column("prompt")
    if isinstance(chosen, list) and isinstance(rejected, list):  # whole conversations
        shared = _common_prefix(chosen, rejected)
        answers = []
        for name, turns in zip(ANSWERS, (chosen, rejected)):
            rest = turns[shared:]
            if (
                len(rest) != 1
                or families.chat.ROLES.get(str(rest[0].get("role")).lower()) != "model"
            ):
                raise KftError(
                    f"record {index}: {name} must be the shared conversation plus one model answer "
                    f"(after {shared} shared message(s) it has {len(rest)} more)"
                )
            answers.append(str(rest[0].get("content", "")))
        # The conversations carry their prompt (UltraFeedback: `prompt` repeats it), or (TRL's
        # explicit form) hold the answer turn only and the prompt is apart.
        given = record.get(prompt_column) if shared == 0 else None
        if isinstance(given, str):
            given = [{"role": "user", "content": given}]
        prompt = [*(given or []), *chosen[:shared]]
        if not prompt:
            raise KftError(
                f"record {index} has no prompt: '{prompt_column}' is empty and chosen/rejected share "
                "no message before their answers"
            )
        return prompt, answers[0], answers[1]
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise KftError(
            f"record {index}: '{template.column('chosen')}' and '{template.column('rejected')}' must both "
            "be texts or both lists of chat messages"
        )
    if record.get(prompt_column) is not None:
        return record[prompt_column], chosen, rejected
    if _has_own_prompt(record, template):
        return None, chosen, rejected
    cut = _text_prefix(chosen, rejected)
    if cut == 0:
        raise KftError(
            f"record {index} has no prompt: give a '{prompt_column}' column (or the template's own "
            "prompt fields), or chosen/rejected texts that begin with the same prompt"
        )
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _prompt_fields(template: templates.Template) -> list[str]:
    if template.name == "dolly":
        return ["instruction"]
    if template.is_chat:
        return ["messages"]
    if template.name == templates.TEXT:
        return []
    return templates.field_names(template.prompt_format)


def _has_own_prompt(record: dict, template: templates.Template) -> bool:
    fields = _prompt_fields(template)
    return bool(fields) and all(record.get(template.column(f)) is not None for f in fields)


def _render(template: templates.Template, record: dict, prompt, answer: str, index: int):
    """The segments of one answer: the template's prompt (not trained), the answer (trained): only
    the last reply is the answer, earlier replies of a conversation are prompt."""
    segments = _segments(template, record, prompt, answer, index)
    last = max(i for i, (_, trained) in enumerate(segments) if trained)
    return [(text, trained and i == last) for i, (text, trained) in enumerate(segments)]


def _segments(template: templates.Template, record: dict, prompt, answer: str, index: int):
    if template.is_chat:
        if prompt is None:
            messages = list(record[template.column("messages")])
        elif isinstance(prompt, list):
            messages = list(prompt)
        else:
            messages = [{"role": "user", "content": str(prompt)}]
        return template.chat.segments(messages + [{"role": "model", "content": answer}])
    if isinstance(prompt, list):  # chat messages on a plain template: one user turn only
        users = [m for m in prompt if families.chat.ROLES.get(str(m.get("role")).lower()) == "user"]
        if len(prompt) != 1 or len(users) != 1:
            raise KftError(
                f"record {index}: a {len(prompt)}-message prompt needs data.template: chat"
            )
        prompt = str(users[0].get("content", ""))
    if template.name == templates.TEXT:
        return [(str(prompt), False), (answer, True)]
    filled = dict(record)
    fields = _prompt_fields(template)
    if prompt is not None and fields:  # the template's (first) prompt field the record leaves empty
        empty = [f for f in fields if record.get(template.column(f)) is None]
        filled[template.column((empty or fields)[0])] = prompt
    response_fields = (
        ["response"]
        if template.name == "dolly"
        else templates.field_names(template.response_format)
    )
    for name in response_fields:
        filled[template.column(name)] = answer
    return template.render(filled)


def render_pairs(records, template: templates.Template) -> list[tuple[list, list]]:
    """(chosen segments, rejected segments) for every record."""
    pairs = []
    for index, record in enumerate(records):
        prompt, chosen, rejected = _parts(record, template, index)
        pairs.append(
            tuple(_render(template, record, prompt, answer, index) for answer in (chosen, rejected))
        )
    return pairs


def _select(records, template: templates.Template, config: DataConfig, seed: int, source: str):
    present = list(records.column_names)
    missing = [template.column(a) for a in ANSWERS if template.column(a) not in present]
    if missing:
        raise KftError(
            f"data.source '{source}' is missing column(s) {', '.join(missing)} for a preference "
            f"objective (prompt + chosen + rejected); columns present: {', '.join(present)}; "
            "map them with data.columns, e.g. {chosen: better, rejected: worse}"
        )
    if len(records) == 0:
        raise KftError(f"data.source '{source}' has no records")
    if config.shuffle:
        records = records.shuffle(seed=seed)
    if config.max_examples is not None:
        records = records.select(range(min(config.max_examples, len(records))))
    return records


def _encode(records, template, tokenizer, config: DataConfig, source: str):
    """(chosen segment lists, chosen sequences, rejected sequences, stats) of the pairs kept."""
    pairs = render_pairs(records, template)
    same = sum(
        "".join(t for t, trained in c if trained) == "".join(t for t, trained in r if trained)
        for c, r in pairs
    )
    if same == len(pairs):
        raise KftError(f"every pair in '{source}' has the same chosen and rejected answer")
    if same:
        print(
            f"kft: warning: {same} of {len(pairs)} pairs have the same chosen and rejected answer "
            "(they teach nothing)",
            file=sys.stderr,
            flush=True,
        )
    sequences = dataset.tokenize_segments(
        [c for c, _ in pairs] + [r for _, r in pairs],
        tokenizer,
        template.ends_with_eos,
        "response",
        config.seq_len,
    )
    limit = config.seq_len + 1
    kept, overlong, no_answer = [], 0, 0
    for (segments, _), chosen, rejected in zip(
        pairs, sequences[: len(pairs)], sequences[len(pairs) :]
    ):
        if max(len(chosen[0]), len(rejected[0])) > limit:
            overlong += 1
            if config.overlong == "drop":
                continue
            chosen, rejected = ((ids[:limit], w[:limit]) for ids, w in (chosen, rejected))
        if sum(chosen[1][1:]) == 0 or sum(rejected[1][1:]) == 0:
            no_answer += 1  # an answer cut off entirely: nothing to compare
            continue
        kept.append((segments, chosen, rejected))
    if not kept:
        raise KftError(
            f"every pair lost an answer at data.seq_len={config.seq_len} ({overlong} of {len(pairs)} "
            "are longer); raise data.seq_len or shorten the prompts"
        )
    stats = {
        "records": len(pairs),
        "overlong": overlong,
        "overlong_action": config.overlong,
        "dropped_no_response_tokens": no_answer,
        "examples": len(kept),
    }
    return kept, stats


def _split(
    kept, config: DataConfig, pad_id: int, num_prompts: int, position_ids: bool
) -> PairSplit:
    chosen = dataset.to_split([c for _, c, _ in kept], config.seq_len, pad_id)
    rejected = dataset.to_split([r for _, _, r in kept], config.seq_len, pad_id)
    for split in (chosen, rejected):
        split.with_position_ids = position_ids
    for segments, _, _ in kept[:num_prompts]:
        prompt, reference = templates.split_for_generation(segments)
        chosen.prompts.append(prompt)
        chosen.references.append(reference)
    return PairSplit(chosen, rejected)


def build(
    records, tokenizer, config: DataConfig, seed: int, num_prompts: int = 0, eval_records=None
) -> dataset.Dataset:
    """Render, tokenize and split preference `records` (as kft.data.dataset.build does for SFT):
    a Dataset whose splits are PairSplits."""
    template = templates.for_tokenizer(templates.from_config(config), tokenizer)
    kept, stats = _encode(
        _select(records, template, config, seed, config.source),
        template,
        tokenizer,
        config,
        config.source,
    )
    n_eval = dataset.held_out_count(len(kept), config.eval_fraction, "pairs")
    family = families.of_tokenizer(tokenizer)
    position_ids = bool(family and families.get(family).needs_position_ids)
    pad = tokenizer.pad_token_id
    train = _split(kept[n_eval:], config, pad, num_prompts, position_ids)
    if config.packing:
        train = pack(train, kept[n_eval:], config.seq_len, pad)
        stats["packed_rows"] = len(train)
    eval_ = _split(kept[:n_eval], config, pad, num_prompts, position_ids) if n_eval else None
    if eval_records is not None:
        held = _select(eval_records, template, config, seed, config.eval_source)
        held_kept, held_stats = _encode(held, template, tokenizer, config, config.eval_source)
        eval_ = _split(held_kept, config, pad, num_prompts, position_ids)
        stats["eval_overlong"] = held_stats["overlong"]
    answers = (unpacked(train).chosen, unpacked(train).rejected)
    stats.update(
        pairs=True,
        train_examples=len(unpacked(train)),
        eval_examples=len(eval_) if eval_ else 0,
        train_tokens=int(sum(s.padding_mask.sum() for s in answers)),
        trained_tokens=int(sum(s.loss_weights.sum() for s in answers)),
    )
    return dataset.Dataset(train=train, eval=eval_, stats=stats)


def with_reference(pairs, reference: np.ndarray):
    """`pairs` (PairSplit or PackedPairs) carrying `reference`: (2N,) summed log-probs, chosen and
    rejected per pair."""
    if isinstance(pairs, PackedPairs):
        return replace(pairs, pairs=with_reference(pairs.pairs, reference))
    reference = np.asarray(reference, "float32")
    if reference.size != 2 * len(pairs):
        raise KftError(
            f"the saved reference log-probs hold {reference.size // 2} pairs, the data {len(pairs)}: "
            "the data changed since the run started; train it again"
        )
    return replace(pairs, reference=reference.reshape(len(pairs), 2))


REFERENCE_FILE = "reference_logps.npz"  # in a preference run's folder: {train, eval} log-probs


def save_reference(folder, train: np.ndarray | None, eval_: np.ndarray | None) -> None:
    arrays = {k: v for k, v in (("train", train), ("eval", eval_)) if v is not None}
    np.savez(Path(folder) / REFERENCE_FILE, **arrays)


def load_reference(folder) -> dict:
    """{train?, eval?} as save_reference wrote them; a missing or damaged file is one line."""
    from kft.core import files

    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        raise KftError(f"{path} is missing; the run cannot resume exactly: train it again")
    return files.read_npz(path, "train the run again")


def saved_reference(folder, pairs: int) -> np.ndarray | None:
    """A run's held-out reference log-probs when they fit `pairs` pairs (else None: the measurement
    is its own reference)."""
    if not (Path(folder) / REFERENCE_FILE).is_file():
        return None
    held = load_reference(folder).get("eval")
    return held if held is not None and len(held) == 2 * pairs else None
