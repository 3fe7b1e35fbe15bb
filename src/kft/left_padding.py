"""Generation from left-padded prompts: decoding starts after every prompt at once.

KerasHub's generate right-pads prompts and its decode loop starts after the shortest prompt of a
batch, walking one position per step through the longer ones. With every prompt left-padded to
end at one position, the loop starts there for all rows and runs exactly `max_new_tokens` steps.

KerasHub's cached attention knows no left padding, so while kft's generate program is traced,
`generate_step` (installed by `install`) gives every decoder block a mask that hides each row's
padding keys, and rotates queries and keys at the row's own positions (position minus its
padding): each prompt is computed as if it started at position 0, as in the right-padded layout.
The program takes one more input, `left_padding` (padding positions per row).
"""

from __future__ import annotations

import contextlib
import inspect

from kft import families


@contextlib.contextmanager
def _hiding(backbone, padding):
    """While inside, `backbone`'s decoder blocks hide keys at positions < `padding` (B,) of each row
    and rotate at position - `padding`."""
    from keras import ops

    padding = ops.cast(padding, "int32")

    def masked(original):
        def compute(*args, **kwargs):
            mask = ops.cast(original(*args, **kwargs), "bool")  # (B, queries, keys)
            keys = ops.arange(ops.shape(mask)[-1], dtype="int32")
            hidden = ops.logical_and(mask, keys[None, None, :] >= padding[:, None, None])
            # A padding query sees no real key: keep its own (causal) mask so its values stay finite.
            return ops.where(ops.any(hidden, axis=-1, keepdims=True), hidden, mask)
        return compute

    def positions_of(x, start_index):
        at = ops.cast(start_index, "int32") + ops.arange(ops.shape(x)[1], dtype="int32")
        return at[None, :] - padding[:, None]  # (B, T)

    def rotated(attention, original):
        if "positions" in inspect.signature(original).parameters:  # Gemma 1/2/4: the layer rotates given positions
            return lambda x, start_index, **_: original(x, start_index, positions=positions_of(x, start_index))
        return lambda x, start_index: attention.rope_layer(x, positions=positions_of(x, start_index))  # Gemma 3

    patched = []
    for block in families.decoder_blocks(backbone):
        vars(block)["_compute_attention_mask"] = masked(block._compute_attention_mask)
        vars(block.attention)["_apply_rope"] = rotated(block.attention, block.attention._apply_rope)
        patched += [(block, "_compute_attention_mask"), (block.attention, "_apply_rope")]
    try:
        yield
    finally:
        for layer, name in patched:
            vars(layer).pop(name, None)


@contextlib.contextmanager
def _prefill_until(task, end: int):
    """While inside, `task`'s prefill (the one call with more than one position) computes the first
    `end` positions only: KerasHub prefills the positions kept for the new tokens too, which the
    decode loop then computes again one by one."""
    original = type(task).call_with_cache

    def call_with_cache(token_ids, cache, cache_update_index, *args, **kwargs):
        if token_ids.shape[1] > end:  # static shapes: decoding feeds one position
            token_ids = token_ids[:, :end]
        return original(task, token_ids, cache, cache_update_index, *args, **kwargs)

    vars(task)["call_with_cache"] = call_with_cache
    try:
        yield
    finally:
        vars(task).pop("call_with_cache", None)


def install(task, end: int) -> None:
    """Make `task`'s generate program take `left_padding` (B,) with its inputs: rows left-padded to
    end at `end`, `padding_mask` True up to it for every row (see the module doc). The prefill
    stops at `end`. Inputs without `left_padding` (a user's own `generate` on the same task) get
    KerasHub's program unchanged. `end` is part of the compiled program: it is rebuilt only when
    `end` changes (a before and an after measurement share one)."""
    if vars(task).get("_kft_prompt_end") == end:
        return
    original = type(task).generate_step

    def generate_step(inputs, stop_token_ids=None, **kwargs):
        if "left_padding" not in inputs:
            return original(task, inputs, stop_token_ids, **kwargs)
        inputs = dict(inputs)
        padding = inputs.pop("left_padding")
        with _hiding(task.backbone, padding), _prefill_until(task, end):
            return original(task, inputs, stop_token_ids, **kwargs)

    vars(task)["generate_step"] = generate_step
    vars(task)["_kft_prompt_end"] = end
    task.generate_function = None
