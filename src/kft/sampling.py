"""Text generation from a causal LM on token ids we build ourselves.

We tokenize and right-pad prompts ourselves and run the task's compiled generate function, so
prompts of any length share one compiled program per (batch, length) shape and the number of
new tokens is exact. Prompts are batched by token length: KerasHub's decode loop starts after
the shortest prompt of a batch and walks token by token through the longer ones, so a batch of
similar lengths wastes few steps; and it stops when every row has its new tokens.
"""

from __future__ import annotations

import numpy as np

from kft import families


def make_sampler(strategy: str = "greedy", temperature: float = 1.0, top_k: int = 0, top_p: float = 0.0, seed: int = 0):
    """A keras_hub sampler: greedy, or random with optional top-k / top-p truncation."""
    import keras_hub

    s = keras_hub.samplers
    if strategy == "greedy" or temperature == 0:
        return s.GreedySampler()
    if top_p:
        return s.TopPSampler(p=top_p, k=top_k or None, temperature=temperature, seed=seed)
    if top_k:
        return s.TopKSampler(k=top_k, temperature=temperature, seed=seed)
    return s.RandomSampler(temperature=temperature, seed=seed)


def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """EOS and every family's end-of-turn marker the vocabulary holds (`<end_of_turn>`, `<turn|>`)."""
    vocabulary = set(tokenizer.get_vocabulary())
    ids = [tokenizer.end_token_id]
    ids += [tokenizer.token_to_id(marker) for marker in families.end_of_turn_markers() if marker in vocabulary]
    return tuple(ids)


def _bucket(length: int, step: int = 32) -> int:
    return -(-length // step) * step


class _RowLimit:
    """Mixed into a keras_hub sampler: the decode loop ends once every row has a stop token or
    `max_new_tokens` new tokens after its own prompt (KerasHub's loop runs to the end of the
    padded shape unless every row has stopped)."""

    max_new_tokens: int | None = None
    _stops = None

    def __call__(self, *args, stop_token_ids=None, **kwargs):
        self._stops = stop_token_ids
        return super().__call__(*args, stop_token_ids=stop_token_ids, **kwargs)

    def run_loop(self, cond, body, model=None, loop_vars=None, maximum_iterations=None):
        if self.max_new_tokens is None:
            return super().run_loop(cond, body, model=model, loop_vars=loop_vars, maximum_iterations=maximum_iterations)
        from keras import ops
        from keras_hub.src.utils.tensor_utils import any_equal

        def within_limit(prompt, cache, index, mask):
            done = index >= ops.sum(ops.cast(mask, "int32"), axis=-1) + self.max_new_tokens
            if self._stops is not None:
                done = done | ops.any(any_equal(prompt, self._stops, ops.logical_not(mask)), axis=-1)
            return ops.logical_not(ops.all(done))

        return super().run_loop(within_limit, body, model=model, loop_vars=loop_vars,
                                maximum_iterations=maximum_iterations)


def limit_new_tokens(task, max_new_tokens: int) -> None:
    """Make `task`'s compiled generate function stop each row after `max_new_tokens` new tokens.

    The limit is part of the compiled program, so the function is rebuilt only when it changes
    (a before and an after measurement share one program)."""
    sampler = task.sampler
    if not isinstance(sampler, _RowLimit):
        # Swapping the class keeps the sampler's state (a random sampler's seed generator).
        sampler.__class__ = type(f"RowLimited{type(sampler).__name__}", (_RowLimit, type(sampler)), {})
    if sampler.max_new_tokens != max_new_tokens:
        sampler.max_new_tokens = max_new_tokens
        task.generate_function = None


def prefill_prompts_only(task, length: int | None) -> None:
    """Make `task`'s compiled generate function prefill the cache over the first `length` positions.

    KerasHub's generate prefills the whole padded row, the positions kept for the new tokens
    included, and the decode loop computes those again one by one. With the prefill cut to the
    longest prompt, every position is computed once. The cut is part of the compiled program, so
    it is rebuilt only when `length` changes (a before and an after measurement share one).
    `length` None restores KerasHub's own prefill."""
    if vars(task).get("_kft_prefill_length") == length:
        return
    if length is None:
        vars(task).pop("call_with_cache", None)
        vars(task).pop("_kft_prefill_length", None)
        task.generate_function = None
        return
    original = type(task).call_with_cache

    def call_with_cache(token_ids, cache, cache_update_index, *args, **kwargs):
        if token_ids.shape[1] > length:  # the prefill (static shapes; decoding feeds one position)
            token_ids = token_ids[:, :length]
        return original(task, token_ids, cache, cache_update_index, *args, **kwargs)

    vars(task)["call_with_cache"] = call_with_cache
    vars(task)["_kft_prefill_length"] = length
    task.generate_function = None


# The prefill of a chunk (batch x length tokens at once, no vocabulary projection) costs about as
# much as this many decode steps per position of the padded length (measured order of magnitude
# on CPU with Gemma 3 270M); it is what a chunk costs beyond its decode steps.
_PREFILL_STEPS_PER_POSITION = 0.25


def plan_chunks(lengths: list[int], max_batch: int, length: int, max_new_tokens: int) -> tuple[int, list[list[int]]]:
    """(batch size, chunks of prompt indices) for generating: prompts in order of token length,
    cut into runs of at most `max_batch` so the decode steps summed over chunks (from a chunk's
    shortest prompt to its longest plus `max_new_tokens`) plus a prefill per chunk are fewest.
    Decoding in a chunk starts after its shortest prompt (KerasHub's loop), so similar lengths
    together waste few steps; every chunk has one batch size (one compiled program)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch = min(max_batch, len(order))
    per_chunk = _PREFILL_STEPS_PER_POSITION * length + max_new_tokens
    # best[i]: (cost, chunk start) of the cheapest cut of the first i prompts (sorted).
    best = [(0.0, 0)] + [(float("inf"), 0)] * len(order)
    for end in range(1, len(order) + 1):
        for start in range(max(0, end - batch), end):
            cost = best[start][0] + per_chunk + lengths[order[end - 1]] - lengths[order[start]]
            if cost < best[end][0]:
                best[end] = (cost, start)
    chunks, end = [], len(order)
    while end:
        start = best[end][1]
        chunks.insert(0, order[start:end])
        end = start
    return batch, chunks


def generate(task, tokenizer, prompts: list[str], max_new_tokens: int = 64, batch_size: int | None = None,
             progress=None) -> list[str]:
    """Completions (without the prompt) for `prompts` as text; see `generate_ids`."""
    ids = generate_ids(task, tokenizer, prompts, max_new_tokens, batch_size, progress)
    return [_detokenize(tokenizer, new) for new in ids]


def generate_ids(task, tokenizer, prompts: list[str], max_new_tokens: int = 64, batch_size: int | None = None,
                 progress=None) -> list[list[int]]:
    """New token ids (up to a stop token, which is left out) for `prompts`, with the task's compiled sampler.

    Prompts go through in chunks of similar token length (see `plan_chunks`) of at most
    `batch_size` (default: all), every chunk of one shape (the last rows repeated), so one
    compiled program serves them all; a row stops at a stop token or after `max_new_tokens`, a
    chunk when all its rows have. `progress.advance(n)` is called after each chunk."""
    if not prompts:
        return []
    encoded = [[tokenizer.start_token_id, *ids] for ids in tokenizer(list(prompts))]
    # Shapes are bucketed so nearby prompt lengths reuse one compiled generate function.
    longest = max(len(ids) for ids in encoded)
    length = _bucket(longest + max_new_tokens)
    size, chunks = plan_chunks([len(ids) for ids in encoded], batch_size or len(encoded), length, max_new_tokens)
    limit_new_tokens(task, max_new_tokens)
    prefill_prompts_only(task, min(_bucket(longest, 16), length))
    stops = stop_token_ids(tokenizer)
    completions: list[list[int]] = [[] for _ in encoded]
    for chunk in chunks:
        rows = [encoded[i] for i in chunk]
        rows += [rows[-1]] * (size - len(rows))
        for index, new in zip(chunk, _generate_rows(task, tokenizer, rows, length, max_new_tokens, stops)):
            completions[index] = new
        if progress is not None:
            progress.advance(len(chunk))
    return completions


def _generate_rows(task, tokenizer, encoded, length, max_new_tokens, stops) -> list[list[int]]:
    token_ids = np.full((len(encoded), length), tokenizer.pad_token_id, dtype="int32")
    padding_mask = np.zeros((len(encoded), length), dtype=bool)
    for row, ids in enumerate(encoded):
        token_ids[row, : len(ids)] = ids
        padding_mask[row, : len(ids)] = True
    # The compiled function, not `task.generate`: with token ids as input, KerasHub 0.32's Gemma 3
    # `generate` fails concatenating its `images: None` output.
    out = task.make_generate_function()({"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=stops)
    out_ids = np.asarray(out["token_ids"])
    out_mask = np.asarray(out["padding_mask"])
    completions = []
    for row, ids in enumerate(encoded):
        new = [int(t) for t, m in zip(out_ids[row, len(ids):], out_mask[row, len(ids):]) if m][:max_new_tokens]
        for i, t in enumerate(new):
            if t in stops:
                new = new[:i]
                break
        completions.append(new)
    return completions


def _detokenize(tokenizer, ids: list[int]) -> str:
    text = tokenizer.detokenize([ids])[0] if ids else ""
    return text if isinstance(text, str) else text.decode("utf-8")
