"""Text generation from a causal LM on token ids we build ourselves.

We tokenize and right-pad prompts ourselves and run the task's compiled generate function, so prompts of any length share one compiled program per (batch, length) shape and the number of
new tokens is exact.
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


def generate(task, tokenizer, prompts: list[str], max_new_tokens: int = 64, batch_size: int | None = None,
             progress=None) -> list[str]:
    """Completions (without the prompt) for `prompts`, with the task's compiled sampler.

    With `batch_size`, prompts go through in chunks of that many (the last one padded with repeats),
    all of one shape, so one compiled program serves every chunk; `progress.advance(n)` is called
    after each."""
    if not prompts:
        return []
    encoded = [[tokenizer.start_token_id, *ids] for ids in tokenizer(list(prompts))]
    # Shapes are bucketed so nearby prompt lengths reuse one compiled generate function.
    length = _bucket(max(len(ids) for ids in encoded) + max_new_tokens)
    size = min(batch_size or len(encoded), len(encoded))
    stops = stop_token_ids(tokenizer)
    completions = []
    for start in range(0, len(encoded), size):
        chunk = encoded[start:start + size]
        rows = chunk + [chunk[-1]] * (size - len(chunk))
        completions += _generate_rows(task, tokenizer, rows, length, max_new_tokens, stops)[:len(chunk)]
        if progress is not None:
            progress.advance(len(chunk))
    return completions


def _generate_rows(task, tokenizer, encoded, length, max_new_tokens, stops) -> list[str]:
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
        completions.append(tokenizer.detokenize([new])[0] if new else "")
    return [c if isinstance(c, str) else c.decode("utf-8") for c in completions]
