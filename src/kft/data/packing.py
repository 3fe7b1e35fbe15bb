"""Packing: several short examples in one row, each attending only to itself.

`data.packing: true` fills each training row of `seq_len` positions with whole examples (best
fit, longest first). Every example keeps what it had alone: its (input, target) pairs, its
loss weights, its positions (restarting at 0) and its context (a block-diagonal causal mask:
a token sees earlier tokens of its own example only). So the loss per token equals the
unpacked run's, and far fewer positions are padding.

KerasHub's decoder blocks take a padding mask only, so while a packed batch runs, `segments()`
gives each decoder block of the backbone a mask that also compares segment ids, and (for
families whose backbone has no position input: Gemma 1-3) rotates queries and keys at the
restarting positions. Gemma 4's backbone takes `position_ids`, which the batch carries.
"""

from __future__ import annotations

import bisect
import contextlib

import numpy as np

from kft import families


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows of example indices whose lengths (positions each example needs) sum to <= `capacity`:
    best fit, longest first. Deterministic; each row lists its examples in index order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row), sorted
    for i in order:
        spot = bisect.bisect_left(free, (lengths[i], -1))
        if spot == len(free):
            rows.append([i])
            bisect.insort(free, (capacity - lengths[i], len(rows) - 1))
        else:
            space, row = free.pop(spot)
            rows[row].append(i)
            bisect.insort(free, (space - lengths[i], row))
    return [sorted(row) for row in rows]


def packed_arrays(sequences, seq_len: int, pad_id: int) -> dict:
    """Inputs, targets, weights, padding mask, segment ids (1, 2, ... per example; 0 = padding)
    and positions (restarting at 0 per example) for `sequences` ((ids, weights), each at most
    seq_len + 1 long) packed into rows of seq_len positions."""
    lengths = [len(ids) - 1 for ids, _ in sequences]  # the last token is only a target
    return fill(sequences, pack(lengths, seq_len), seq_len, pad_id)


def fill(sequences, rows: list[list[int]], seq_len: int, pad_id: int) -> dict:
    """packed_arrays' arrays for `rows` given: each row lists the sequences it holds, in order."""
    lengths = [len(ids) - 1 for ids, _ in sequences]
    n = len(rows)
    out = {
        "token_ids": np.full((n, seq_len), pad_id, "int32"),
        "targets": np.full((n, seq_len), pad_id, "int32"),
        "loss_weights": np.zeros((n, seq_len), "float32"),
        "segment_ids": np.zeros((n, seq_len), "int32"),
        "token_positions": np.zeros((n, seq_len), "int32"),
    }
    for r, row in enumerate(rows):
        at = 0
        for segment, i in enumerate(row, 1):
            ids, weights = sequences[i]
            span = slice(at, at + lengths[i])
            out["token_ids"][r, span] = ids[:-1]
            out["targets"][r, span] = ids[1:]
            out["loss_weights"][r, span] = weights[1:]
            out["segment_ids"][r, span] = segment
            out["token_positions"][r, span] = np.arange(lengths[i])
            at += lengths[i]
    out["padding_mask"] = out["segment_ids"] > 0
    return out


def segments(backbone, segment_ids, positions):
    """While inside, `backbone`'s decoder blocks attend within segments only and (without a
    `position_ids` input) rotate at `positions`. No-op when `segment_ids` is None."""
    if segment_ids is None:
        return contextlib.nullcontext()
    from keras import ops

    same = ops.equal(ops.expand_dims(segment_ids, 2), ops.expand_dims(segment_ids, 1))  # (B, L, L)
    rope_needed = (
        "position_ids" not in backbone.input
    )  # Gemma 4's backbone takes the positions itself
    return families.attention_hooks(
        backbone,
        mask=lambda m: ops.logical_and(ops.cast(m, "bool"), same),
        positions=(lambda x, start_index: positions) if rope_needed else None,
    )


def padding_share(padding_mask: np.ndarray) -> float:
    """Padding positions / all positions of `padding_mask` (rows x seq_len)."""
    return float(1.0 - padding_mask.mean()) if padding_mask.size else 0.0
