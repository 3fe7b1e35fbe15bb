"""Text generation from a causal LM on token ids we build ourselves.

We tokenize prompts ourselves, left-pad them to end at one position (rounded up to 16) and run
the task's compiled generate function: decoding starts after every prompt at once (see
kft.generation.engine) and runs exactly the new tokens asked for, or until every row has stopped;
prompts of any length share one compiled program per (batch, length) shape, except that a
measurement's prompts (one chunk of 16 or more) get a program of their own: the prefixes they
share are computed once (`engine.shared_prefixes`) and the rest is prefilled from the rows'
least padding on (`engine.prefill_groups`).
"""

from __future__ import annotations

import numpy as np

from kft import families
from kft.core import arithmetic
from kft.data import encoding
from kft.generation import engine


def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """EOS and every family's end-of-turn marker the vocabulary holds (`<end_of_turn>`, `<turn|>`)."""
    vocabulary = set(tokenizer.get_vocabulary())
    ids = [tokenizer.end_token_id]
    ids += [
        tokenizer.token_to_id(marker)
        for marker in families.end_of_turn_markers()
        if marker in vocabulary
    ]
    return tuple(ids)


# The most memory one chunk's attention cache may take: a chunk holds at most as many rows as fit
# (and at most `batch_size`), so a big model on a 16 GB device decodes fewer rows at a time.
CACHE_BUDGET = 2 * 1024**3


def cache_rows(backbone, length: int) -> int:
    """Rows of `length` positions whose key/value cache fits in CACHE_BUDGET, as KerasHub builds it
    (every layer's keys and values at the widest head size, in the compute dtype)."""
    import keras

    head = max(families.head_dim(backbone), getattr(backbone, "global_head_dim", None) or 0)
    itemsize = (
        2
        if keras.backend.standardize_dtype(backbone.compute_dtype) in ("bfloat16", "float16")
        else 4
    )
    per_row = backbone.num_layers * 2 * length * backbone.num_key_value_heads * head * itemsize
    return max(1, CACHE_BUDGET // per_row)


def round_up(length: int, step: int = 16) -> int:
    return arithmetic.round_up(length, step)


def encode(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Each prompt's token ids, start token first."""
    return encoding.with_start(tokenizer, list(prompts))


def chunk_size(count: int, most: int) -> int:
    """Rows per chunk for `count` rows in chunks of at most `most`, evened out (60 by 32: 30)."""
    return arithmetic.ceil_div(count, arithmetic.ceil_div(count, most))


def until_stop(tokens, stops) -> list[int]:
    """`tokens` as ints up to the first stop token (left out)."""
    tokens = [int(t) for t in tokens]
    return tokens[: next((i for i, t in enumerate(tokens) if t in stops), len(tokens))]


def generate(
    task,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int | None = None,
    progress=None,
) -> list[str]:
    """Completions (without the prompt) for `prompts` as text; see `generate_ids`."""
    ids = generate_ids(task, tokenizer, prompts, max_new_tokens, batch_size, progress)
    return [detokenize(tokenizer, new) for new in ids]


def generate_ids(
    task,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int | None = None,
    progress=None,
) -> list[list[int]]:
    """New token ids (up to a stop token, which is left out) for `prompts`, with the task's compiled sampler.

    Prompts go through in chunks of at most `batch_size` (default: all) and of at most the rows
    whose attention cache fits CACHE_BUDGET, evened out and of one shape (the last rows repeated),
    so one compiled program serves them all; every row stops at a stop token or after
    `max_new_tokens`, a chunk when all its rows have.
    `progress.advance(n)` is called after each chunk."""
    if not prompts:
        return []
    encoded = encode(tokenizer, prompts)
    end = round_up(
        max(len(ids) for ids in encoded)
    )  # every prompt ends here; nearby lengths share a program
    size = chunk_size(
        len(encoded),
        min(batch_size or len(encoded), cache_rows(task.backbone, end + max_new_tokens)),
    )
    # One chunk (a measurement's prompts): its prefill computes shared prefixes once and skips the
    # rows' padding, in groups.
    prefixes = groups = None
    if size == len(encoded):
        prefixes = engine.shared_prefixes(encoded)
        shared = engine.prefix_lengths(prefixes, len(encoded))
        groups = engine.prefill_groups([end - len(ids) + p for ids, p in zip(encoded, shared)], end)
    engine.install(task, end, max_new_tokens, groups, prefixes)
    stops = stop_token_ids(tokenizer)
    completions: list[list[int]] = []
    for start in range(0, len(encoded), size):
        rows = encoded[start : start + size]
        completions += _generate_rows(
            task, tokenizer, rows + [rows[-1]] * (size - len(rows)), end, max_new_tokens, stops
        )[: len(rows)]
        if progress is not None:
            progress.advance(len(rows))
    return completions


def _generate_rows(task, tokenizer, encoded, end, max_new_tokens, stops) -> list[list[int]]:
    """New ids for rows of prompt ids, each left-padded to end at `end` (see kft.generation.engine)."""
    token_ids = np.full((len(encoded), end + max_new_tokens), tokenizer.pad_token_id, dtype="int32")
    for row, ids in enumerate(encoded):
        token_ids[row, end - len(ids) : end] = ids
    # True over the prompts' span for every row: KerasHub's loop starts at `end` and keeps it.
    padding_mask = np.zeros(token_ids.shape, dtype=bool)
    padding_mask[:, :end] = True
    padding = np.array([end - len(ids) for ids in encoded], dtype="int32")
    # The compiled function, not `task.generate`: with token ids as input, KerasHub 0.32's Gemma 3
    # `generate` fails concatenating its `images: None` output.
    out = task.make_generate_function()(
        {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "left_padding": padding,
            **engine.kept_inputs(task),
        },
        stop_token_ids=stops,
    )
    return [until_stop(row[end:], stops) for row in np.asarray(out["token_ids"])]


def detokenize(tokenizer, ids: list[int]) -> str:
    text = tokenizer.detokenize([ids])[0] if ids else ""
    return text if isinstance(text, str) else text.decode("utf-8")
