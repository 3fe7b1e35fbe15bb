"""A measurement's greedy answers and held-out loss from one prefill.

The sample prompts are the first examples of the eval split, and the held-out loss needs a
forward pass over those same examples, prompt and answer. So each such example goes into kft's
left-padded generate program whole: its prompt ends at the shared prompt end, its answer follows,
and the prefill runs over prompt and answer at once. The answer's loss is read from the
prefill's hidden states (at the trained positions, like kft.models.trained_logits), and decoding starts
after the prompt as usual: each step overwrites the answer's cache entry at its position, and no
step attends past its own position. One pass instead of a generate prefill plus an eval pass.

Used when every sample prompt's token ids begin its example's ids (the template renders the
prompt as the example's beginning) and the loss is the trained-position loss. The eval examples
after the prompts ride in the rows the prompts' chunks leave free, as far as those go (60 prompts
of a 64-example split: one chunk of 64, no loss program of its own); evaluation runs its separate
loss pass for the rest.
"""

from __future__ import annotations

import numpy as np

from kft.core.arithmetic import round_up
from kft.data import dataset
from kft.data.dataset import gather_trained
from kft.generation import engine, sampling


def rows_for(split: dataset.Split, tokenizer) -> list[list[int]] | None:
    """The prompt ids (start token first) of every sample prompt of `split`, or None when one of
    them is not the beginning of its example's ids (then the passes stay separate)."""
    if not split.prompts or split.segment_ids is not None:
        return None
    prompts = sampling.encode(tokenizer, split.prompts)
    for row, ids in enumerate(prompts):
        length = int(split.padding_mask[row].sum())
        if len(ids) > length or split.token_ids[row, : len(ids)].tolist() != ids:
            return None
    return prompts


def measure(
    task,
    split: dataset.Split,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    progress=None,
) -> tuple[list[list[int]], float, float, int]:
    """(new ids per prompt, sum of weighted nll, sum of weights, examples covered): the loss covers
    the len(prompts) first examples and the examples after them that fit the chunks' free rows."""
    tokenizer = task.preprocessor.tokenizer
    count = len(prompts)
    lengths = split.padding_mask.sum(axis=1).astype(int)
    end = sampling.round_up(max(len(ids) for ids in prompts))
    # The prefill's positions: the prompts' end plus the longest answer, rounded up to 8.
    span = end + round_up(max(int(lengths[r]) - len(prompts[r]) for r in range(count)), 8)
    width = max(span, end + max_new_tokens)
    most = min(batch_size, sampling.cache_rows(task.backbone, width))
    covered = count  # then the examples after the prompts, while they fit the chunks' free rows and the span
    while covered < min(round_up(count, most), len(split)) and lengths[covered] <= span:
        covered += 1
    # A riding example's prompt (its tokens before the first trained one) ends at `end` where it fits.
    first_trained = [int(np.argmax(split.loss_weights[r] > 0)) + 1 for r in range(count, covered)]
    pads = np.array(
        [end - len(ids) for ids in prompts]
        + [
            min(max(end - p, 0), span - int(lengths[r]))
            for p, r in zip(first_trained, range(count, covered))
        ],
        dtype="int32",
    )
    size = sampling.chunk_size(covered, most)
    prefixes = groups = None
    if size == covered:  # one chunk: see kft.generation.sampling
        # The loss reads hidden states from each row's first trained position on: no prefix past it.
        prefixes = engine.shared_prefixes(
            [split.token_ids[r, : lengths[r]].tolist() for r in range(covered)],
            [int(np.argmax(split.loss_weights[r] > 0)) for r in range(covered)],
        )
        groups = engine.prefill_groups(pads + engine.prefix_lengths(prefixes, covered), span)
    engine.install(task, end, max_new_tokens, groups, prefixes)
    stops = sampling.stop_token_ids(tokenizer)
    answers, total, weight = [], 0.0, 0.0
    for start in range(0, covered, size):
        rows = list(range(start, min(start + size, covered)))
        real = np.array([True] * len(rows) + [False] * (size - len(rows)))
        rows += [rows[-1]] * (size - len(rows))
        token_ids = np.full((size, width), tokenizer.pad_token_id, dtype="int32")
        targets = np.zeros((size, span), dtype="int32")
        weights = np.zeros((size, span), dtype="float32")
        for i, r in enumerate(rows):
            at = pads[r]
            token_ids[i, at : at + lengths[r]] = split.token_ids[r, : lengths[r]]
            targets[i, at : at + lengths[r]] = split.targets[r, : lengths[r]]
            weights[i, at : at + lengths[r]] = split.loss_weights[r, : lengths[r]] * real[i]
        padding_mask = np.zeros(token_ids.shape, dtype=bool)
        padding_mask[:, :end] = True
        positions, picked, picked_weights = gather_trained(weights, targets)
        out = task.make_generate_function()(
            {
                "token_ids": token_ids,
                "padding_mask": padding_mask,
                "left_padding": pads[rows],
                "loss_positions": positions,
                "loss_targets": picked,
                **engine.kept_inputs(task),
            },
            stop_token_ids=stops,
        )
        total += float((np.asarray(out["loss_nll"], dtype="float64") * picked_weights).sum())
        weight += float(picked_weights.sum())
        generated = np.asarray(out["token_ids"])
        asked = [
            i for i, r in enumerate(rows) if real[i] and r < count
        ]  # sample prompts, not riding rows
        answers += [
            sampling.until_stop(generated[i, end : end + max_new_tokens], stops) for i in asked
        ]
        if progress is not None:
            progress.advance(len(asked))
    return answers, total, weight, covered
