"""Batched greedy generation from left-padded prompts: the token ids of KerasHub's right-padded path."""

import numpy as np
import pytest
from conftest import CONFIGS, USER_KFT_CACHE

from kft.models.tiny import FAMILIES

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


def keras_hub_generate_ids(task, tokenizer, prompts, max_new_tokens):
    """KerasHub's own generation, none of kft's changes (the task's program without `left_padding`
    is KerasHub's, as a user calling it gets): every prompt right-padded into one batch, the loop
    starting after the shortest prompt and running to the end of the padded shape, the prefill
    over the whole padded row. The first `max_new_tokens` new ids of each row."""
    from kft.generation import sampling

    encoded = [[tokenizer.start_token_id, *ids] for ids in tokenizer(prompts)]
    length = max(len(ids) for ids in encoded) + max_new_tokens
    token_ids = np.zeros((len(encoded), length), "int32")
    for row, ids in enumerate(encoded):
        token_ids[row, : len(ids)] = ids
    out = task.make_generate_function()(
        {"token_ids": token_ids, "padding_mask": token_ids != 0}, stop_token_ids=None
    )
    out = np.asarray(out["token_ids"])
    stops = sampling.stop_token_ids(tokenizer)
    new = []
    for row, ids in enumerate(encoded):
        tokens = [int(t) for t in out[row, len(ids) : len(ids) + max_new_tokens]]
        cut = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
        new.append(tokens[:cut])
    return new


class Chunks:
    def __init__(self):
        self.sizes = []

    def advance(self, n):
        self.sizes.append(n)


@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=[] if f == "gemma3" else [pytest.mark.slow]) for f in FAMILIES]
)
def test_left_padded_generation_gives_the_token_ids_of_keras_hub_s_right_padded_batch(
    family, tiny_presets, monkeypatch
):
    from kft.generation import engine, samplers, sampling
    from kft.quant import frozen_base

    task = frozen_base.load(tiny_presets[family], "float32")[
        0
    ]  # names the task class (Gemma 4: KerasHub's lookup is ambiguous)
    task.compile(sampler=samplers.make_sampler("greedy"))
    tokenizer = task.preprocessor.tokenizer
    lengths = [len(ids) + 1 for ids in tokenizer(PROMPTS)]
    assert max(lengths) - min(lengths) > 10  # rows with much left padding
    real_chunks = engine.prefill_chunks
    chunks = Chunks()
    new = sampling.generate_ids(task, tokenizer, PROMPTS, MAX_NEW, batch_size=4, progress=chunks)
    assert chunks.sizes == [3, 2]  # evened-out chunks of one shape
    assert all(len(ids) == MAX_NEW for ids in new)  # random tiny models do not stop by themselves
    # Called after kft's generation, the task's program without `left_padding` is KerasHub's own;
    # with KerasHub's own greedy sampler too (kft's takes no softmax before the argmax).
    import keras_hub

    assert type(task.sampler) is not keras_hub.samplers.GreedySampler
    task.compile(sampler=keras_hub.samplers.GreedySampler())
    assert keras_hub_generate_ids(task, tokenizer, PROMPTS, MAX_NEW) == new
    task.compile(sampler=samplers.make_sampler("greedy"))
    # In one chunk (a measurement's prompts), the prefill computes the prompts' shared prefix once
    # and skips the padding in two groups of rows.
    monkeypatch.setattr(engine, "GROUP_MIN_ROWS", 1)
    assert sampling.generate_ids(task, tokenizer, PROMPTS, MAX_NEW) == new
    groups, prefixes = vars(task)["_kft_prompt_end"][2:]
    assert len(groups) == 2 and sorted(r for rows, _ in groups for r in rows) == list(
        range(len(PROMPTS))
    )
    assert prefixes is not None and {0, 4} <= set(prefixes[0][0])  # "Instruction:\n..."
    # A long prefill runs in position chunks (here each group's, of a few rows).
    chunks = []
    monkeypatch.setattr(engine, "CHUNK_ROWS", 6)
    monkeypatch.setattr(
        engine, "prefill_chunks", lambda *a: chunks.append(real_chunks(*a)) or chunks[-1]
    )
    vars(task).pop("_kft_prompt_end")  # the same program key: rebuild it
    assert sampling.generate_ids(task, tokenizer, PROMPTS, MAX_NEW, batch_size=64) == new
    assert max(chunks) > 2

    if family != "gemma3":  # tiny Gemma 1 repeats one token per prompt whatever the context
        return
    # The hiding has teeth: the same left-padded rows through KerasHub's plain program differ.
    end = sampling.round_up(max(lengths))
    token_ids = np.zeros((len(PROMPTS), end + MAX_NEW), "int32")
    for row, ids in enumerate(tokenizer(PROMPTS)):
        token_ids[row, end - len(ids) - 1 : end] = [tokenizer.start_token_id, *ids]
    mask = np.zeros(token_ids.shape, bool)
    mask[:, :end] = True
    out = np.asarray(
        task.make_generate_function()(
            {"token_ids": token_ids, "padding_mask": mask}, stop_token_ids=None
        )["token_ids"]
    )
    plain = [[int(t) for t in row[end:]] for row in out]
    assert plain != new


HEADS = [
    "Instruction:\nSay where the person in the text lives, in one word, and nothing else.\n\nInput:\n",
    "Instruction:\nTranslate the text into French, keeping its names as they are.\n\nInput:\n",
]
TEXTS = [
    "Mina lives in Paris.",
    "Tom, who is forty, moved to Oslo last year with his two cats.",
    "Ann is in Rome.",
    "Our neighbour Julia lives in Lisbon now.",
]


# Tiny Gemma 4 in the default suite here: its answers change with a wrong prefix (tiny Gemma 3's did not).
@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=[] if f == "gemma4" else [pytest.mark.slow]) for f in FAMILIES]
)
def test_prompts_with_shared_heads_computed_once_give_the_same_token_ids(
    family, tiny_presets, monkeypatch
):
    import keras_hub

    from kft.generation import engine, samplers, sampling
    from kft.quant import frozen_base

    task = frozen_base.load(tiny_presets[family], "float32")[0]
    tokenizer = task.preprocessor.tokenizer
    prompts = [head + text + "\n\nResponse:\n" for head in HEADS for text in TEXTS] + [
        "Hello",
        "Hi",
    ]
    task.compile(sampler=keras_hub.samplers.GreedySampler())
    expected = keras_hub_generate_ids(task, tokenizer, prompts, MAX_NEW)
    task.compile(sampler=samplers.make_sampler("greedy"))
    monkeypatch.setattr(engine, "GROUP_MIN_ROWS", 1)  # one chunk of 10: a measurement's prompts
    assert sampling.generate_ids(task, tokenizer, prompts, MAX_NEW) == expected
    prefixes = vars(task)["_kft_prompt_end"][3]
    # Each head's rows share it (and the "Input:" line); "Hello" and "Hi" their first tokens, a short
    # prefix whose first row ends near the row's end (its tokens are read past a longer prefix's width).
    assert sorted(rows for rows, _ in prefixes) == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert all(
        length >= len(sampling.encode(tokenizer, [HEADS[rows[0] // 4]])[0])
        for rows, length in prefixes[:2]
    )


@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=[] if f == "gemma3" else [pytest.mark.slow]) for f in FAMILIES]
)
def test_shared_prefixes_are_the_keys_and_values_of_a_full_prefill_where_each_row_begins(
    family, tiny_presets, monkeypatch
):
    import inspect

    from keras import ops, tree

    from kft.generation import engine, sampling
    from kft.quant import frozen_base

    task = frozen_base.load(tiny_presets[family], "float32")[0]
    tokenizer = task.preprocessor.tokenizer
    prompts = [head + text + "\n\nResponse:\n" for head in HEADS for text in TEXTS[:2]] + [
        "Hello",
        "Hi",
    ]
    encoded = sampling.encode(tokenizer, prompts)
    monkeypatch.setattr(engine, "GROUP_MIN_ROWS", 1)
    prefixes = engine.shared_prefixes(encoded)
    assert len(prefixes) == 3
    end = sampling.round_up(max(len(ids) for ids in encoded))
    token_ids = np.zeros((len(prompts), end + 4), "int32")
    for row, ids in enumerate(encoded):
        token_ids[row, end - len(ids) : end] = ids
    padding = np.array([end - len(ids) for ids in encoded], "int32")
    build = inspect.signature(type(task)._build_cache).parameters
    rows = {}
    with engine._hiding(task.backbone, padding, rows):
        # The reference: every row prefilled whole, as the program does without prefixes.
        _, full = task._build_cache(token_ids, **{name: None for name in list(build)[2:]})
        empty = tree.map_structure(ops.zeros_like, full)
        filled = engine._fill_prefixes(
            task,
            type(task).call_with_cache,
            token_ids,
            empty,
            prefixes,
            ops.convert_to_tensor(padding),
            rows,
            (),
            {},
        )
    for ours, theirs in zip(tree.flatten(filled), tree.flatten(full)):
        ours, theirs = np.asarray(ours), np.asarray(theirs)
        axis = ours.ndim - 4  # positions, in a row
        for group, length in prefixes:
            for row in group:
                span = slice(padding[row], padding[row] + length)
                np.testing.assert_allclose(
                    np.take(ours[row], range(end)[span], axis=axis),
                    np.take(theirs[row], range(end)[span], axis=axis),
                    atol=2e-5,
                    rtol=1e-4,
                )
                assert not np.take(
                    ours[row], range(end)[span.stop :], axis=axis
                ).any()  # nothing else written


@pytest.mark.slow
def test_gemma3_270m_answers_the_60_held_out_prompts_with_the_same_token_ids_as_before(monkeypatch):
    import os

    from kft import config as config_lib
    from kft.data import dataset
    from kft.generation import samplers, sampling
    from kft.models import presets
    from kft.quant import frozen_base

    if USER_KFT_CACHE:
        monkeypatch.setenv("KFT_CACHE", USER_KFT_CACHE)
    task, _, _ = frozen_base.load(str(presets.prepare("gemma3_270m_gguf")), "float32")
    task.compile(sampler=samplers.make_sampler("greedy"))
    tokenizer = task.preprocessor.tokenizer
    c = config_lib.load(os.path.join(CONFIGS, "gemma3_270m_person_json.yaml"))
    records, held_out = dataset.load_sources(c.data)
    prompts = dataset.build(
        records, tokenizer, c.data, 0, num_prompts=60, eval_records=held_out
    ).eval.prompts
    new = sampling.generate_ids(
        task, tokenizer, prompts, 16, batch_size=64
    )  # one chunk: the prefill skips the padding
    assert vars(task)["_kft_prompt_end"][2] is not None
    assert [len(rows) for rows, _ in vars(task)["_kft_prompt_end"][3]] == [
        39,
        21,
    ]  # and computes two instructions once
    import keras_hub

    task.compile(sampler=keras_hub.samplers.GreedySampler())  # and KerasHub's own sampler
    old = []
    for start in range(0, len(prompts), 30):  # KerasHub's own right-padded path, in two batches
        old += keras_hub_generate_ids(task, tokenizer, prompts[start : start + 30], 16)
    assert len(new) == 60 and old == new


def test_a_chunk_holds_only_the_rows_whose_attention_cache_fits_the_budget():
    from types import SimpleNamespace

    from kft.generation import sampling

    # Gemma 2 9B in bfloat16: 42 layers x keys and values x 8 heads x 256 x 2 bytes = 344 KB per position.
    gemma2_9b = SimpleNamespace(
        head_dim=256, num_layers=42, num_key_value_heads=8, compute_dtype="bfloat16"
    )
    assert sampling.cache_rows(gemma2_9b, 300) == 2 * 1024**3 // (42 * 2 * 300 * 8 * 256 * 2) == 20
    # Gemma 3 270M in float32 at the person_json job's 64 positions: every one of 64 prompts at once.
    gemma3_270m = SimpleNamespace(
        head_dim=256, num_layers=18, num_key_value_heads=1, compute_dtype="float32"
    )
    assert sampling.cache_rows(gemma3_270m, 64) >= 64
    # Gemma 4 allocates every layer at its widest (global) head size.
    gemma4 = SimpleNamespace(
        head_dim=256,
        global_head_dim=512,
        num_layers=35,
        num_key_value_heads=1,
        compute_dtype="bfloat16",
    )
    assert sampling.cache_rows(gemma4, 1000) == 2 * 1024**3 // (35 * 2 * 1000 * 512 * 2)


@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=[] if f == "gemma3" else [pytest.mark.slow]) for f in FAMILIES]
)
def test_answers_and_loss_from_one_prefill_equal_the_separate_passes(
    family, tiny_presets, monkeypatch
):
    import keras

    from kft.config import DataConfig
    from kft.data import dataset
    from kft.evaluate import answers_and_loss, evaluation
    from kft.generation import engine, sampling
    from kft.models import lora
    from kft.quant import frozen_base

    keras.utils.set_random_seed(4)
    monkeypatch.setattr(
        engine, "GROUP_MIN_ROWS", 1
    )  # one chunk: the prefill in groups (kft.generation.engine)
    monkeypatch.setattr(
        engine, "CHUNK_ROWS", 8
    )  # and in position chunks: the loss reads their hidden states
    monkeypatch.setattr(engine, "GROUP_SAVING", 0.0)  # and the template's head, computed once
    task = frozen_base.load(tiny_presets[family], "float32")[0]
    lora.enable(task.backbone, 2, None, ["query", "value"])
    for variable in lora.lora_variables(
        task.backbone
    ).values():  # B off zero: LoRA changes the answers
        variable.assign(np.random.RandomState(0).normal(0, 0.05, variable.shape).astype("float32"))
    tokenizer = task.preprocessor.tokenizer
    config = DataConfig(source="bundled:tiny_facts", seq_len=160, shuffle=False, max_examples=7)
    split = dataset.build(
        dataset.load_records(config), tokenizer, config, seed=0, num_prompts=5
    ).train
    compiled = evaluation.compile_task(task, logits_on="trained")
    assert answers_and_loss.rows_for(split, tokenizer) is not None  # the one-pass path applies
    # 5 prompts in one pass, the 2 examples after them riding in the chunk's free rows.
    result = evaluation.measure(task, compiled, split, "exact", 2, MAX_NEW, with_loss=True)
    assert vars(task)["_kft_prompt_end"][2] is not None
    assert vars(task)["_kft_prompt_end"][3] is not None
    separate_loss = evaluation.eval_loss(compiled, split, 2)
    separate = sampling.generate(task, tokenizer, split.prompts, MAX_NEW)
    assert abs(result["loss"] - separate_loss) <= 1e-5 * separate_loss
    assert result["generations"] == separate
    # In chunks of 3: one example rides in the second chunk's free row, the last one goes through
    # the separate loss pass; the same answers and loss.
    prompts = answers_and_loss.rows_for(split, tokenizer)
    answers, total, weight, covered = answers_and_loss.measure(task, split, prompts, MAX_NEW, 3)
    assert covered == 6
    assert (
        abs(total / weight - evaluation.eval_loss(compiled, split.select(slice(0, 6)), 2))
        <= 1e-5 * total / weight
    )
    assert [sampling.detokenize(tokenizer, ids) for ids in answers] == separate
    monkeypatch.setattr(evaluation, "GENERATE_BATCH", 3)
    chunked = evaluation.measure(task, compiled, split, "exact", 2, MAX_NEW, with_loss=True)
    assert (
        abs(chunked["loss"] - separate_loss) <= 1e-5 * separate_loss
        and chunked["generations"] == separate
    )


def test_a_long_prefill_runs_in_position_chunks_of_about_chunk_rows():
    from kft.generation import engine

    assert engine.prefill_chunks(60, 43) == 4  # the 270M job's prompts: chunks of 11 positions
    assert engine.prefill_chunks(1, 1000) == 1  # one prompt: every position in one call
    assert engine.prefill_chunks(8, 80) == 1


def test_prefill_groups_skip_the_padding_of_a_measurement_s_prompts_only(monkeypatch):
    from kft.generation import engine

    # The 270M job's 60 held-out prompts (35-44 tokens), left-padded to end at 48.
    lengths = (
        [35] * 5
        + [36] * 11
        + [38] * 9
        + [39] * 8
        + [40] * 6
        + [41] * 5
        + [42] * 8
        + [43] * 7
        + [44]
    )
    assert engine.prefill_groups([48 - n for n in lengths], 48) == (
        (tuple(range(60)), 4),
    )  # 2640 of 2880
    # Two groups where they save 15% of the positions more than one: 2475 of 2880 here, but 2640 with one.
    monkeypatch.setattr(engine, "GROUP_SAVING", 0.05)
    groups = engine.prefill_groups([48 - n for n in lengths], 48)
    assert sorted(r for rows, _ in groups for r in rows) == list(range(60))
    assert [(len(rows), start) for rows, start in groups] == [(33, 9), (27, 4)]
    assert sum(len(rows) * (48 - start) for rows, start in groups) == 2475
    monkeypatch.undo()
    spread = [8] * 30 + [44] * 30  # short and long prompts: 30 x 8 + 30 x 44 positions, not 60 x 44
    assert [
        (len(rows), start) for rows, start in engine.prefill_groups([48 - n for n in spread], 48)
    ] == [(30, 40), (30, 4)]
    assert (
        engine.prefill_groups([48 - n for n in lengths[:8]], 48) is None
    )  # a few prompts: one program per bucket
    assert engine.prefill_groups([0] * 20, 48) is None  # nothing to skip
    assert engine.prefill_groups([4] * 20, 48) == ((tuple(range(20)), 4),)  # one group, from 4
