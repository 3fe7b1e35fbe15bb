"""Batched greedy generation: prompts grouped by token length, each row stopped at its own limit."""

import numpy as np
import pytest

from kft.tiny import FAMILIES

PROMPTS = [
    "Instruction:\nWhere does Mina live?\n\nResponse:\n",
    "Hello",
    "Instruction:\nWhat is the capital of France? Answer in one word.\n\nResponse:\n",
    "Hi",  # as many tokens as "Hello" or not: either way the plan must keep each chunk to one length
    "Instruction:\nWhere does Mina live?\n\nResponse:\n",
]
MAX_NEW = 6
# Gemma 3 (the default real model's family) in the default suite; the others compile two more
# programs each (~20 s) and run in the slow tier.


def old_generate_ids(task, tokenizer, prompts, max_new_tokens):
    """kft's generation before grouping: every prompt right-padded into one batch, KerasHub's loop
    starting after the shortest prompt and running to the end of the padded shape."""
    from kft import sampling

    task.sampler.max_new_tokens = None  # KerasHub's own loop
    task.generate_function = None
    encoded = [[tokenizer.start_token_id, *ids] for ids in tokenizer(prompts)]
    length = sampling._bucket(max(len(ids) for ids in encoded) + max_new_tokens)
    return sampling._generate_rows(task, tokenizer, encoded, length, max_new_tokens, sampling.stop_token_ids(tokenizer))


@pytest.mark.parametrize("family", [pytest.param(f, marks=[] if f == "gemma3" else [pytest.mark.slow]) for f in FAMILIES])
def test_grouped_generation_gives_the_same_token_ids_as_one_right_padded_batch(family, tiny_presets):
    import keras_hub

    from kft import sampling

    task = keras_hub.models.CausalLM.from_preset(tiny_presets[family])
    task.compile(sampler=sampling.make_sampler("greedy"))
    tokenizer = task.preprocessor.tokenizer
    new = sampling.generate_ids(task, tokenizer, PROMPTS, MAX_NEW, batch_size=4)
    lengths = [len(ids) + 1 for ids in tokenizer(PROMPTS)]
    batch, chunks = sampling.plan_chunks(lengths, 4, sampling._bucket(max(lengths) + MAX_NEW), MAX_NEW)
    assert all(len({lengths[i] for i in chunk}) == 1 for chunk in chunks)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(PROMPTS)))
    assert all(len(ids) == MAX_NEW for ids in new)  # random tiny models do not stop by themselves

    # The loop ends once every row has its new tokens: nothing is written past prompt + MAX_NEW.
    row = tokenizer([PROMPTS[0]])[0]
    length = sampling._bucket(max(lengths) + MAX_NEW)
    token_ids = np.zeros((batch, length), "int32")
    token_ids[:, : len(row) + 1] = [tokenizer.start_token_id, *row]
    mask = token_ids != 0
    out = np.asarray(task.make_generate_function()({"token_ids": token_ids, "padding_mask": mask},
                                                   stop_token_ids=None)["token_ids"])
    end = len(row) + 1 + MAX_NEW
    assert (out[:, end - 1] != 0).all() and (out[:, end:] == 0).all()

    assert old_generate_ids(task, tokenizer, PROMPTS, MAX_NEW) == new


def test_the_plan_batches_equal_lengths_together_in_one_batch_size():
    from kft import sampling

    lengths = [7, 9, 7, 7, 9, 12]
    batch, chunks = sampling.plan_chunks(lengths, 32, 32, 8)
    assert sorted(map(sorted, chunks)) == [[0, 2, 3], [1, 4], [5]] or all(len(c) <= batch for c in chunks)
    assert all(len({lengths[i] for i in chunk}) == 1 and len(chunk) <= batch for chunk in chunks)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(6))
    # Many prompts of one length go through in full batches.
    batch, chunks = sampling.plan_chunks([20] * 64, 32, 64, 16)
    assert batch == 32 and [len(c) for c in chunks] == [32, 32]
