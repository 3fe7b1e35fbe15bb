"""Generation from left-padded prompts: decoding starts after every prompt at once.

KerasHub's generate right-pads prompts and its decode loop starts after the shortest prompt of a
batch, walking one position per step through the longer ones. With every prompt left-padded to
end at one position, the loop starts there for all rows and runs exactly `max_new_tokens` steps.

KerasHub's cached attention knows no left padding, so while kft's generate program is traced,
`generate_step` (installed by `install`) gives every decoder block a mask that hides each row's
padding keys, and rotates queries and keys at the row's own positions (position minus its
padding): each prompt is computed as if it started at position 0, as in the right-padded layout.
The program takes one more input, `left_padding` (padding positions per row). On a CPU the decode
loop contracts against kernels laid out for few rows (kft.generation.decode_kernels).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools

import numpy as np

from kft import families
from kft.core.arithmetic import ceil_div
from kft.generation import decode_kernels, screened_argmax


def _hiding(backbone, padding, rows: dict):
    """While inside, `backbone`'s decoder blocks hide keys at positions < `padding` (B,) of each row
    and rotate at position - `padding`; of the rows `rows["now"]` only, while it is set (a prefill
    group, see _prefill_until); of `rows["prefixes"]` rows without padding while that is set."""
    from keras import ops

    padding = ops.cast(padding, "int32")

    def current():
        if (
            rows.get("prefixes") is not None
        ):  # the shared prefixes' own rows: no padding (_fill_prefixes)
            return ops.zeros((rows["prefixes"],), dtype="int32")
        return padding if rows.get("now") is None else ops.take(padding, rows["now"], axis=0)

    def mask(original):
        original = ops.cast(original, "bool")  # (B, queries, keys)
        keys = ops.arange(ops.shape(original)[-1], dtype="int32")
        hidden = ops.logical_and(original, keys[None, None, :] >= current()[:, None, None])
        # A padding query sees no real key: keep its own (causal) mask so its values stay finite.
        return ops.where(ops.any(hidden, axis=-1, keepdims=True), hidden, original)

    def positions(x, start_index):
        at = ops.cast(start_index, "int32") + ops.arange(ops.shape(x)[1], dtype="int32")
        return at[None, :] - current()[:, None]  # (B, T)

    return families.attention_hooks(backbone, mask=mask, positions=positions)


# Prefill groups (see `prefill_groups`): batches of fewer rows keep one program for all the prompt
# lengths of a 16-position bucket. A second group puts a second copy of the prefill in the program:
# on the 270M it saved 10% of a warm generate call (60 prompts) but doubled its compile (15.8 ->
# 30.8 s), so it is taken only where it saves this share of the prefill's positions.
GROUP_MIN_ROWS = 16
GROUP_SAVING = 0.15


def prefill_groups(pads, length: int) -> tuple | None:
    """How a prefill over `length` positions of rows left-padded by `pads` skips their padding:
    ((rows, start), ...), each group of rows prefilled from position `start` (its rows' least
    padding) only, in at most two groups of rows of similar padding; None to prefill every row from
    0. The groups are part of the compiled program, so only batches of GROUP_MIN_ROWS rows or more
    (a measurement's prompts, computed twice) get them. The 270M job's 60 prompts of 35-44 tokens,
    left-padded to 48: one group from position 4, 2,880 positions -> 2,640 (two groups: 2,475)."""
    pads = [int(p) for p in pads]
    count = len(pads)
    if count < GROUP_MIN_ROWS or max(pads) == 0:
        return None
    order = sorted(range(count), key=lambda r: -pads[r])  # most padding (shortest prompt) first
    one = count * (length - min(pads))
    two, split = min(
        (k * (length - pads[order[k - 1]]) + (count - k) * (length - min(pads)), k)
        for k in range(1, count)
    )
    if two <= one - GROUP_SAVING * count * length:
        return (
            (tuple(sorted(order[:split])), pads[order[split - 1]]),
            (tuple(sorted(order[split:])), min(pads)),
        )
    return ((tuple(range(count)), min(pads)),) if min(pads) > 0 else None


# Shared prefixes: a measurement's prompts come from one template and often begin with the same
# tokens (the template's head and an instruction every example of a task shares). Those tokens'
# keys and values are the same in every row (each row is rotated from its own start), so the
# prefill computes them once per group of rows and copies them into the rows' caches. At most
# MAX_PREFIXES groups, computed together as one small batch: one more body in the program.
MAX_PREFIXES = 3


def _common_length(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def shared_prefixes(rows: list[list[int]], limits: list[int] | None = None) -> tuple | None:
    """The groups of `rows` (token ids each, start token first) that begin with the same tokens:
    ((rows, length), ...), at most MAX_PREFIXES, each of two rows or more, chosen to leave the shortest
    longest rest (the prefill after the prefixes runs over every row to that length), sharing at
    most `limits[r]` tokens of row r (the loss reads hidden states from there on). None for fewer
    than GROUP_MIN_ROWS rows (as prefill_groups: a program of their own) or where it saves less
    than GROUP_SAVING of the prefill's positions. The 270M job's 60 prompts (two
    instructions, 35-44 tokens): 21 shared tokens in 39 rows and 23 in 21, 2,640 -> 1,304 positions."""
    count = len(rows)
    if count < GROUP_MIN_ROWS:
        return None
    order = sorted(range(count), key=lambda r: rows[r])
    longest = max(len(ids) for ids in rows)
    limits = limits or [longest] * count

    # What neighbours in sorted order share: a run of sorted rows shares the least of it.
    adjacent = [
        min(_common_length(rows[a], rows[b]), limits[a], limits[b])
        for a, b in zip(order, order[1:])
    ]

    def run_prefix(a, b):  # what rows order[a:b] share
        return min(adjacent[a : b - 1]) if b - a > 1 else 0

    # Runs are cut where neighbours share least (between templates or instructions).
    places = sorted(sorted(range(1, count), key=lambda i: adjacent[i - 1])[:16])
    best_cost, best = count * longest, None
    for cut in (c for k in range(MAX_PREFIXES) for c in itertools.combinations(places, k)):
        runs = list(zip((0, *cut), (*cut, count)))
        shared = [run_prefix(a, b) for a, b in runs]
        rest = max(
            len(rows[order[i]]) - length
            for (a, b), length in zip(runs, shared)
            for i in range(a, b)
        )
        cost = count * rest + sum(shared)
        if cost < best_cost:
            best_cost, best = (
                cost,
                [(tuple(sorted(order[a:b])), length) for (a, b), length in zip(runs, shared)],
            )
    if best is None or best_cost > (1 - GROUP_SAVING) * count * longest:
        return None
    return tuple(group for group in best if group[1] > 1) or None


def prefix_lengths(prefixes: tuple | None, count: int) -> list[int]:
    """Each of `count` rows' shared prefix length under `prefixes` (shared_prefixes), 0 for none."""
    lengths = [0] * count
    for group, length in prefixes or ():
        for row in group:
            lengths[row] = length
    return lengths


# Chunked prefill: a prefill of many rows x positions runs position chunks of about CHUNK_ROWS
# rows in all (rows x positions) in a loop, one compiled body. On the 270M's 60 prompts x 44
# positions (2-core Zen 3): 5.9 -> 5.5 s a prefill, its compile unchanged (the chunk's activations
# stay in the caches; one call of 2,640 rows did not).
CHUNK_ROWS = 700


def prefill_chunks(rows: int, positions: int) -> int:
    """How many position chunks a prefill of `rows` x `positions` runs in (1: one call)."""
    return (
        min(positions, round(rows * positions / CHUNK_ROWS))
        if rows * positions >= 2 * CHUNK_ROWS
        else 1
    )


def _prefill(task, original, token_ids, cache, start: int, stop: int, args, kwargs):
    """`original` (call_with_cache) over positions [start, stop) of `token_ids`, in position chunks
    (prefill_chunks) scanned in order; the hidden states of positions [0, stop), zero before start.
    A chunk grid that starts before `start` computes padding positions (hidden by _hiding); one
    that would start before 0 ends after `stop` instead (the decode loop rewrites those cache
    entries before it reads them)."""
    import jax
    from keras import ops

    rows = token_ids.shape[0]
    if stop <= start:
        return ops.zeros((rows, stop, task.backbone.hidden_dim), dtype=task.compute_dtype), cache
    count = prefill_chunks(rows, stop - start)
    size = ceil_div(stop - start, count)
    first = max(0, stop - count * size)
    if count == 1 or first + count * size > token_ids.shape[1]:
        _, states, cache = original(task, token_ids[:, start:stop], cache, start, *args, **kwargs)
        return ops.pad(states, [[0, 0], [start, 0], [0, 0]]), cache

    def chunk(cache, at):
        _, states, cache = original(
            task,
            jax.lax.dynamic_slice_in_dim(token_ids, at, size, axis=1),
            cache,
            at,
            *args,
            **kwargs,
        )
        return cache, states

    cache, states = jax.lax.scan(
        chunk, cache, first + size * jax.numpy.arange(count, dtype="int32")
    )
    states = ops.reshape(ops.moveaxis(states, 0, 1), (rows, count * size, -1))[:, : stop - first]
    return ops.pad(states, [[0, 0], [first, 0], [0, 0]]), cache


def _fill_prefixes(task, original, token_ids, cache, prefixes, padding, rows: dict, args, kwargs):
    """`cache` with each group's shared prefix (`prefixes`, see shared_prefixes) written into its
    rows at their own offsets (their padding): the prefixes are computed once, as a batch of one
    row per group (each group's first row's tokens from its padding on, right-padded to the
    longest prefix), from position 0 without padding."""
    import jax
    from keras import ops, tree

    firsts = np.array([group[0] for group, _ in prefixes])
    width = max(length for _, length in prefixes)
    # Padded on the right first: a slice that ran past the row would be moved back (clamped).
    ids = jax.vmap(lambda row, at: jax.lax.dynamic_slice_in_dim(row, at, width))(
        ops.pad(ops.take(token_ids, firsts, axis=0), [[0, 0], [0, width]]),
        ops.take(padding, firsts, axis=0),
    )
    take = lambda x: None if x is None else ops.take(x, firsts, axis=0)  # noqa: E731
    rows["prefixes"] = len(prefixes)
    try:
        _, _, computed = original(
            task,
            ids,
            tree.map_structure(take, cache),
            0,
            *map(take, args),
            **{k: take(v) for k, v in kwargs.items()},
        )
    finally:
        rows["prefixes"] = None

    def place(full, ours):
        axis = (
            len(full.shape) - 4
        )  # positions, in a row: (S, K, H) per layer or (layers, 2, S, K, H)
        for g, (group, length) in enumerate(prefixes):
            at = np.array(group)
            part = jax.lax.slice_in_dim(ours[g], 0, length, axis=axis)
            written = jax.vmap(
                lambda row, offset: jax.lax.dynamic_update_slice_in_dim(row, part, offset, axis)
            )(ops.take(full, at, axis=0), ops.take(padding, at, axis=0))
            full = full.at[at].set(written)
        return full

    return tree.map_structure(place, cache, computed)


@contextlib.contextmanager
def _prefill_until(task, end: int, groups, prefixes, rows: dict):
    """While inside, `task`'s prefill (the one call with more than one position) computes the first
    `end` positions only: KerasHub prefills the positions kept for the new tokens too, which the
    decode loop then computes again one by one. With `prefixes` (`shared_prefixes`), the rows'
    shared prefixes are computed first, once per group (_fill_prefixes; `rows["padding"]` is the
    rows' padding). With `groups` (`prefill_groups`), each group's rows are prefilled from the
    group's start (`rows["now"]` names them for _hiding), and their hidden states (zero before the
    start) and caches put back in row order. Long prefills run in position chunks (_prefill)."""
    from keras import ops, tree

    original = type(task).call_with_cache

    def call_with_cache(token_ids, cache, cache_update_index, *args, **kwargs):
        if token_ids.shape[1] == 1:  # static shapes: decoding feeds one position
            return original(task, token_ids, cache, cache_update_index, *args, **kwargs)
        stop = min(end, token_ids.shape[1])
        if prefixes is not None:
            cache = _fill_prefixes(
                task, original, token_ids, cache, prefixes, rows["padding"], rows, args, kwargs
            )
        if groups is None:
            hidden, cache = _prefill(task, original, token_ids, cache, 0, stop, args, kwargs)
            return None, hidden, cache
        hidden, caches, order = [], [], []
        for group, start in groups:
            take = (
                (lambda x: x)
                if group == tuple(range(token_ids.shape[0]))
                else (lambda x, at=np.array(group): None if x is None else ops.take(x, at, axis=0))
            )
            rows["now"] = np.array(group)
            try:
                states, part = _prefill(
                    task,
                    original,
                    take(token_ids),
                    tree.map_structure(take, cache),
                    start,
                    stop,
                    tuple(map(take, args)),
                    {k: take(v) for k, v in kwargs.items()},
                )
            finally:
                rows["now"] = None
            hidden.append(states)
            caches.append(part)
            order += group
        if len(groups) == 1:
            return None, hidden[0], caches[0]
        back = np.argsort(order)
        restore = lambda *parts: ops.take(ops.concatenate(parts, axis=0), back, axis=0)  # noqa: E731
        return None, restore(*hidden), tree.map_structure(restore, *caches)

    vars(task)["call_with_cache"] = call_with_cache
    try:
        yield
    finally:
        vars(task).pop("call_with_cache", None)


class _RowLimit:
    """Mixed into a keras_hub sampler: while `max_new_tokens` is set, the decode loop ends once
    every row has a stop token or `max_new_tokens` new tokens after the prompts' end (KerasHub's
    loop runs to the end of the padded shape, which kft.evaluate.answers_and_loss makes longer)."""

    max_new_tokens: int | None = None
    _stops = None

    def __call__(self, *args, stop_token_ids=None, **kwargs):
        self._stops = stop_token_ids
        return super().__call__(*args, stop_token_ids=stop_token_ids, **kwargs)

    def run_loop(self, cond, body, model=None, loop_vars=None, maximum_iterations=None):
        if self.max_new_tokens is None:
            return super().run_loop(
                cond, body, model=model, loop_vars=loop_vars, maximum_iterations=maximum_iterations
            )
        from keras import ops
        from keras_hub.src.utils.tensor_utils import any_equal

        def within_limit(prompt, cache, index, mask):
            done = index >= ops.sum(ops.cast(mask, "int32"), axis=-1) + self.max_new_tokens
            if self._stops is not None:
                done = done | ops.any(
                    any_equal(prompt, self._stops, ops.logical_not(mask)), axis=-1
                )
            return ops.logical_not(ops.all(done))

        return super().run_loop(
            within_limit,
            body,
            model=model,
            loop_vars=loop_vars,
            maximum_iterations=maximum_iterations,
        )


@contextlib.contextmanager
def _row_limit(sampler, max_new_tokens):
    if not isinstance(sampler, _RowLimit):
        # Swapping the class keeps the sampler's state (a random sampler's seed generator).
        sampler.__class__ = type(
            f"RowLimited{type(sampler).__name__}", (_RowLimit, type(sampler)), {}
        )
    sampler.max_new_tokens = max_new_tokens
    try:
        yield
    finally:
        sampler.max_new_tokens = None


@contextlib.contextmanager
def _loss_from_prefill(task, positions, targets, out: list):
    """While inside, `task`'s prefill also computes the negative log-likelihood of `targets` at
    `positions` (flat indices into its batch x positions, -1 after the last; see
    kft.data.dataset.gather_trained) from its hidden states, and appends it to `out`."""
    from keras import ops

    from kft.models.trained_logits import head_matrix, nll_no_grad, soft_caps

    original = type(task)._build_cache
    signature = inspect.signature(original)

    def build_cache(*args, **kwargs):
        bound = signature.bind(task, *args, **kwargs)
        if bound.arguments.get("padding_mask") is not None:
            # The generate program's mask ends at the prompts (the sampler writes after it); the
            # answers attend to each other in the prefill (left padding stays hidden: _hiding).
            bound.arguments["padding_mask"] = ops.ones_like(bound.arguments["padding_mask"])
        hidden, cache = original(*bound.args, **bound.kwargs)
        flat = ops.reshape(positions, (-1,))
        picked = ops.take(ops.reshape(hidden, (-1, hidden.shape[-1])), ops.maximum(flat, 0), axis=0)
        nll = nll_no_grad(
            picked,
            head_matrix(task.backbone.token_embedding),
            ops.reshape(targets, (-1,)),
            ops.sum(ops.cast(flat >= 0, "int32")),
            soft_caps(task),
        )
        out.append(ops.reshape(nll, ops.shape(positions)))
        return hidden, cache

    vars(task)["_build_cache"] = build_cache
    try:
        yield
    finally:
        vars(task).pop("_build_cache", None)


def kept_inputs(task) -> dict:
    """The generate program's inputs kept between calls, where they can be kept: the decoder's
    kernels laid out for decoding (kft.generation.decode_kernels.kept_copies) and the vocabulary for
    greedy decoding's screened argmax (kft.generation.screened_argmax.kept_copy)."""
    kept = {
        "decode_kernels": decode_kernels.kept_copies(task.backbone),
        "decode_vocabulary": screened_argmax.kept_copy(task),
    }
    return {name: value for name, value in kept.items() if value is not None}


def install(
    task, end: int, max_new_tokens: int, groups: tuple | None = None, prefixes: tuple | None = None
) -> None:
    """Make `task`'s generate program take `left_padding` (B,) with its inputs: rows left-padded to
    end at `end`, `padding_mask` True up to it for every row (see the module doc); the prefill
    stops at `end` and every row after `max_new_tokens` new tokens. With `loss_positions` and
    `loss_targets` (B, E) too, the prefill runs over the first E positions (the rows' answers
    after `end` included) and the program also returns `loss_nll` (B, E): the answers' loss from
    the same prefill (kft.evaluate.answers_and_loss). With `decode_kernels` (`kept_inputs`), the decode
    loop contracts against those copies of the kernels; with `decode_vocabulary`, greedy decoding
    takes its argmax screened in bfloat16 (kft.generation.screened_argmax). Inputs without `left_padding` (a user's own
    `generate` on the same task) get KerasHub's program unchanged. `groups` (`prefill_groups`)
    prefills rows in groups from their least padding; `prefixes` (`shared_prefixes`) computes the
    rows' shared prefixes once per group (then `groups` counts them as padding: they start after).
    `end`, `max_new_tokens`, `groups` and `prefixes` are part of the compiled program: it is
    rebuilt only when they change."""
    if vars(task).get("_kft_prompt_end") == (end, max_new_tokens, groups, prefixes):
        return
    original = type(task).generate_step

    def generate_step(inputs, stop_token_ids=None, **kwargs):
        if "left_padding" not in inputs:
            return original(task, inputs, stop_token_ids, **kwargs)
        inputs = dict(inputs)
        padding = inputs.pop("left_padding")
        kernels = inputs.pop("decode_kernels", None)
        vocabulary = inputs.pop("decode_vocabulary", None)
        with contextlib.ExitStack() as stack:
            if kernels is not None or decode_kernels.applies(task.backbone):
                stack.enter_context(decode_kernels.stored_transposed(task.backbone, kernels))
            if vocabulary is not None:
                stack.enter_context(screened_argmax.screening(task, vocabulary))
            rows = {"padding": padding}
            stack.enter_context(_hiding(task.backbone, padding, rows))
            stack.enter_context(_row_limit(task.sampler, max_new_tokens))
            if "loss_positions" not in inputs:
                stack.enter_context(_prefill_until(task, end, groups, prefixes, rows))
                return original(task, inputs, stop_token_ids, **kwargs)
            positions, targets, nll = inputs.pop("loss_positions"), inputs.pop("loss_targets"), []
            stack.enter_context(_prefill_until(task, positions.shape[1], groups, prefixes, rows))
            stack.enter_context(_loss_from_prefill(task, positions, targets, nll))
            return {**original(task, inputs, stop_token_ids, **kwargs), "loss_nll": nll[0]}

    vars(task)["generate_step"] = generate_step
    vars(task)["_kft_prompt_end"] = (end, max_new_tokens, groups, prefixes)
    task.generate_function = None
