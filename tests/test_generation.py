"""Batched greedy generation: prompts batched by token length, each row stopped at its own limit."""

import numpy as np
import pytest

from conftest import CONFIGS, USER_KFT_CACHE
from kft.tiny import FAMILIES

PROMPTS = [
    "Instruction:\nWhere does Mina live?\n\nResponse:\n",
    "Hello",
    "Instruction:\nWhat is the capital of France? Answer in one word.\n\nResponse:\n",
    "Hi",
    "Instruction:\nWhere does Mina live?\n\nResponse:\n",
]
MAX_NEW = 6
# Gemma 3 (the default real model's family) in the default suite; the others compile two more
# programs each (~20 s) and run in the slow tier.


def old_generate_ids(task, tokenizer, prompts, max_new_tokens):
    """kft's generation before grouping: every prompt right-padded into one batch, KerasHub's loop
    starting after the shortest prompt and running to the end of the padded shape, and KerasHub's
    prefill over the whole padded row."""
    from kft import sampling

    sampling.prefill_prompts_only(task, None)
    if task.sampler.max_new_tokens is not None:
        task.sampler.max_new_tokens = None  # KerasHub's own loop
        task.generate_function = None
    encoded = [[tokenizer.start_token_id, *ids] for ids in tokenizer(prompts)]
    length = sampling._bucket(max(len(ids) for ids in encoded) + max_new_tokens)
    return sampling._generate_rows(task, tokenizer, encoded, length, max_new_tokens, sampling.stop_token_ids(tokenizer))


@pytest.mark.parametrize("family", [pytest.param(f, marks=[] if f == "gemma3" else [pytest.mark.slow]) for f in FAMILIES])
def test_length_sorted_generation_gives_the_same_token_ids_as_one_right_padded_batch(family, tiny_presets):
    from kft import model, sampling

    task = model.load(tiny_presets[family], "float32")[0]  # names the task class (Gemma 4: KerasHub's lookup is ambiguous)
    task.compile(sampler=sampling.make_sampler("greedy"))
    tokenizer = task.preprocessor.tokenizer
    new = sampling.generate_ids(task, tokenizer, PROMPTS, MAX_NEW, batch_size=4)
    lengths = [len(ids) + 1 for ids in tokenizer(PROMPTS)]
    batch, chunks = sampling.plan_chunks(lengths, 4, sampling._bucket(max(lengths) + MAX_NEW), MAX_NEW)
    assert len(chunks) > 1  # the comparison covers several chunks of one shape
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


def test_the_plan_cuts_prompts_sorted_by_length_into_chunks_of_one_batch_size():
    from kft import sampling

    lengths = [35, 44, 36, 43, 35, 44, 40, 36] * 8  # 64 prompts
    batch, chunks = sampling.plan_chunks(lengths, 32, 64, 16)
    assert batch == 32 and sorted(i for chunk in chunks for i in chunk) == list(range(64))
    assert all(len(chunk) <= 32 for chunk in chunks) and len(chunks) == 2
    spans = [(min(lengths[i] for i in c), max(lengths[i] for i in c)) for c in chunks]
    assert spans == [(35, 36), (40, 44)]  # the second chunk decodes from 40, not from 35
    # Far-apart lengths go in separate chunks: walking 55 prompt tokens costs more than a prefill.
    assert sampling.plan_chunks([5, 5, 5, 60, 60, 60], 32, 96, 8) == (6, [[0, 1, 2], [3, 4, 5]])


@pytest.mark.slow
def test_gemma3_270m_answers_the_60_held_out_prompts_with_the_same_token_ids_as_before(monkeypatch):
    import os

    from kft import config as config_lib, data, model, presets, sampling

    if USER_KFT_CACHE:
        monkeypatch.setenv("KFT_CACHE", USER_KFT_CACHE)
    task, _, _ = model.load(str(presets.prepare("gemma3_270m_gguf")), "float32")
    task.compile(sampler=sampling.make_sampler("greedy"))
    tokenizer = task.preprocessor.tokenizer
    c = config_lib.load(os.path.join(CONFIGS, "gemma3_270m_person_json.yaml"))
    records, held_out = data.load_sources(c.data)
    prompts = data.build(records, tokenizer, c.data, 0, num_prompts=60, eval_records=held_out).eval.prompts
    new = sampling.generate_ids(task, tokenizer, prompts, 16, batch_size=32)
    old = []
    for start in range(0, len(prompts), 32):  # kft's previous path: chunks of 32 in the given order
        chunk = prompts[start:start + 32]
        old += old_generate_ids(task, tokenizer, chunk + [chunk[-1]] * (32 - len(chunk)), 16)[:len(chunk)]
    assert len(new) == 60 and old == new
