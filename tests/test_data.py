"""Data: response-only loss weights, end markers as targets, right padding, over-long handling, bad files."""

import json

import numpy as np
import pytest

from kft.config import DataConfig
from kft.core.errors import KftError
from kft.data import dataset

KOREAN = "벨모라는 일드라 여왕이 세웠습니다. Velmora!"


def write_jsonl(path, rows):
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return str(path)


def build(tmp_path, tokenizer, rows, **cfg):
    cfg.setdefault("shuffle", False)
    config = DataConfig(source=write_jsonl(tmp_path / "d.jsonl", rows), **cfg)
    return dataset.build(dataset.load_records(config), tokenizer, config, seed=0, num_prompts=2)


def test_prompt_tokens_carry_zero_loss_weight_and_response_plus_eos_weight_one(
    tmp_path, tokenizers
):
    tok = tokenizers["gemma"]
    ds = build(tmp_path, tok, [{"instruction": "Say hi", "response": KOREAN}], seq_len=64)
    split = ds.train
    prompt_ids = tok("Instruction:\nSay hi\n\nResponse:\n")
    response_ids = tok(KOREAN)
    n = 1 + len(prompt_ids) + len(response_ids) + 1  # bos + prompt + response + eos
    expected_ids = [tok.start_token_id, *prompt_ids, *response_ids, tok.end_token_id]
    assert split.token_ids[0, : n - 1].tolist() == expected_ids[:-1]
    assert split.targets[0, : n - 1].tolist() == expected_ids[1:]
    weights = split.loss_weights[0]
    assert weights[: len(prompt_ids)].sum() == 0  # targets that are prompt tokens
    assert weights[len(prompt_ids) : n - 1].tolist() == [1.0] * (len(response_ids) + 1)
    assert split.targets[0, n - 2] == tok.end_token_id and weights[n - 2] == 1.0  # EOS is trained
    assert weights[n - 1 :].sum() == 0 and not split.padding_mask[0, n - 1 :].any()  # right padding
    assert split.padding_mask[0, : n - 1].all()
    assert tok.detokenize([response_ids])[0] == KOREAN  # UTF-8 round trip through the tokenizer


def test_chat_end_of_turn_is_a_trained_target_and_user_turns_are_not(tmp_path, tokenizers):
    tok = tokenizers["gemma3"]
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "model", "content": "Yo"}]}]
    split = build(tmp_path, tok, rows, template="gemma-chat", seq_len=32).train
    end_of_turn = tok.token_to_id("<end_of_turn>")
    trained = split.targets[0][split.loss_weights[0] > 0].tolist()
    assert trained == [*tok("Yo"), end_of_turn]
    assert tok.end_token_id not in split.targets[0][split.padding_mask[0]].tolist()


def test_loss_on_all_weights_every_real_token(tmp_path, tokenizers):
    split = build(
        tmp_path,
        tokenizers["gemma"],
        [{"instruction": "a", "response": "b"}],
        seq_len=32,
        loss_on="all",
    ).train
    assert split.loss_weights[0].sum() == split.padding_mask[0].sum()


def test_overlong_examples_are_truncated_or_dropped_and_counted(tmp_path, tokenizers):
    rows = [
        {"instruction": "short", "response": "ok"},
        {"instruction": "x", "response": "long " * 40},
    ]
    truncated = build(tmp_path, tokenizers["gemma"], rows, seq_len=32)
    assert truncated.stats["overlong"] == 1 and truncated.stats["examples"] == 2
    assert (
        truncated.train.token_ids.shape == (2, 32)
        and truncated.train.padding_mask.sum(axis=1).max() == 32
    )
    dropped = build(tmp_path, tokenizers["gemma"], rows, seq_len=32, overlong="drop")
    assert dropped.stats["overlong"] == 1 and dropped.stats["examples"] == 1


def test_examples_whose_response_is_cut_entirely_are_an_error_not_a_zero_loss_run(
    tmp_path, tokenizers
):
    rows = [{"instruction": "word " * 40, "response": "ok"}]
    with pytest.raises(KftError, match="lost its response"):
        build(tmp_path, tokenizers["gemma"], rows, seq_len=8)


def test_missing_columns_are_named_with_the_ones_present(tmp_path, tokenizers):
    with pytest.raises(
        KftError, match="missing column.*instruction.*columns present: question, answer"
    ):
        build(tmp_path, tokenizers["gemma"], [{"question": "q", "answer": "a"}])
    ds = build(
        tmp_path,
        tokenizers["gemma"],
        [{"question": "q", "answer": "a"}],
        columns={"instruction": "question", "response": "answer"},
    )
    assert ds.train.prompts == ["Instruction:\nq\n\nResponse:\n"] and ds.train.references == ["a"]


def test_bad_jsonl_line_is_reported_by_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"instruction": "a", "response": "b"}\n{"instruction": oops}\n', encoding="utf-8"
    )
    with pytest.raises(KftError, match="line 2 is not valid JSON"):
        dataset.load_records(DataConfig(source=str(path)))


def test_non_utf8_and_empty_files_are_rejected(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"instruction": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(KftError, match="not UTF-8"):
        dataset.load_records(DataConfig(source=str(path)))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(KftError, match="empty"):
        dataset.load_records(DataConfig(source=str(tmp_path / "empty.jsonl")))


def test_csv_and_parquet_load_through_datasets(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"instruction": ["질문"], "response": ["답"]})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        records = dataset.load_records(DataConfig(source=str(tmp_path / name)))
        assert records[0] == {"instruction": "질문", "response": "답"}


def test_shuffle_max_examples_and_eval_split_are_seeded(tmp_path, tokenizers):
    rows = [{"instruction": f"q{i}", "response": f"a{i}"} for i in range(20)]
    a = build(tmp_path, tokenizers["gemma"], rows, shuffle=True, max_examples=10, eval_fraction=0.2)
    b = build(tmp_path, tokenizers["gemma"], rows, shuffle=True, max_examples=10, eval_fraction=0.2)
    assert (len(a.train), len(a.eval)) == (8, 2)
    assert np.array_equal(a.train.token_ids, b.train.token_ids) and a.eval.prompts == b.eval.prompts


def test_batches_are_a_pure_function_of_seed_and_index(tmp_path, tokenizers):
    rows = [{"instruction": f"q{i}", "response": f"a{i}"} for i in range(10)]
    split = build(tmp_path, tokenizers["gemma"], rows).train
    first, again = dataset.batches(split, 3, 9, seed=1), dataset.batches(split, 3, 9, seed=1)
    assert len(first) == 9
    seen = np.concatenate([first.indices(i) for i in range(3)])
    assert sorted(seen.tolist()) == sorted(set(seen.tolist()))  # an epoch never repeats an example
    assert all(
        np.array_equal(first[i][0]["token_ids"], again[i][0]["token_ids"]) for i in (0, 4, 8)
    )
    with pytest.raises(KftError, match="batch_size"):
        dataset.steps_per_epoch(split, 50)


def test_a_held_out_eval_file_becomes_the_eval_split(tmp_path, tokenizers):
    config = DataConfig(
        source=write_jsonl(tmp_path / "train.jsonl", [{"instruction": "a", "response": "b"}] * 3),
        eval_source=write_jsonl(
            tmp_path / "held.jsonl", [{"instruction": "c", "response": "서울"}]
        ),
    )
    ds = dataset.build(
        dataset.load_records(config),
        tokenizers["gemma"],
        config,
        seed=0,
        num_prompts=1,
        eval_records=dataset.load_records(DataConfig(source=config.eval_source)),
    )
    assert (len(ds.train), len(ds.eval)) == (3, 1) and ds.eval.references == ["서울"]


def test_a_batch_shape_that_saves_less_than_its_program_costs_runs_at_the_next_longer_one():
    ten_steps = np.array([80] * 4 + [64] + [80] * 5)
    assert dataset.run_lengths(ten_steps, 3).tolist() == [80] * 10  # one train program, not two
    long_run = np.array([64, 128] * 250)
    assert np.array_equal(dataset.run_lengths(long_run, 3), long_run)  # each shape pays for itself
    cascade = np.array([64, 128] + [192] * 100)  # 64 joins 128, then both are too few for a program
    assert dataset.run_lengths(cascade, 3).tolist() == [192] * 102


def test_batches_of_a_short_run_share_one_shape_that_still_holds_every_example(
    tmp_path, tokenizers
):
    rows = [
        {"instruction": "q" * (1 + i % 7) * 3, "response": "a " * (1 + (i * 5) % 23)}
        for i in range(64)
    ]
    split = build(tmp_path, tokenizers["gemma"], rows, seq_len=96).train
    each = dataset.batches(split, 4, 6, seed=3, pad_to_multiple=8, group_by_length=True)
    planned = dataset.batches(
        split, 4, 6, seed=3, pad_to_multiple=8, group_by_length=True, program_cost_steps=3
    )
    assert len({each[i][0]["token_ids"].shape[1] for i in range(6)}) > 1
    widths = {planned[i][0]["token_ids"].shape[1] for i in range(6)}
    assert widths == {max(each[i][0]["token_ids"].shape[1] for i in range(6))}
    resumed = dataset.batches(
        split, 4, 6, seed=3, pad_to_multiple=8, group_by_length=True, program_cost_steps=3, start=4
    )
    assert resumed[0][0]["token_ids"].shape[1] in widths and np.array_equal(
        resumed[0][1], planned[4][1]
    )


def test_group_by_length_keeps_every_example_once_per_epoch_and_reduces_padding(
    tmp_path, tokenizers
):
    rows = [
        {"instruction": "q" * (1 + i % 7) * 3, "response": "a " * (1 + (i * 5) % 23)}
        for i in range(64)
    ]
    split = build(tmp_path, tokenizers["gemma"], rows, seq_len=96).train
    plain = dataset.batches(split, 4, 32, seed=3, pad_to_multiple=8)
    grouped = dataset.batches(split, 4, 32, seed=3, pad_to_multiple=8, group_by_length=True)
    for epoch in (0, 1):
        seen = np.concatenate([grouped.indices(epoch * 16 + b) for b in range(16)])
        assert sorted(seen.tolist()) == list(range(64))
    width = lambda ds: sum(ds[i][0]["token_ids"].size for i in range(32))  # noqa: E731
    assert width(grouped) < 0.9 * width(plain)
    again = dataset.batches(split, 4, 32, seed=3, pad_to_multiple=8, group_by_length=True, start=20)
    assert np.array_equal(
        again.indices(0), grouped.indices(20)
    )  # resumable: a pure function of the index


def test_some_empty_responses_are_counted_in_a_warning(tmp_path, tokenizers, capsys):
    rows = [{"instruction": "What?", "response": "That."}, {"instruction": "Who?", "response": " "}]
    ds = build(tmp_path, tokenizers["gemma"], rows)
    assert ds.stats["examples"] == 2
    assert "1 of 2 records have an empty response" in capsys.readouterr().err


def test_text_past_what_seq_len_keeps_is_cut_before_tokenizing_to_the_same_ids(
    tmp_path, tokenizers, monkeypatch
):
    rows = [
        {"instruction": "word " * 1000, "response": "ok"},
        {"instruction": "short", "response": "fine " * 1000},
        {"instruction": "What?", "response": "That."},
    ]
    tokenizer = tokenizers["gemma"]
    cut = build(tmp_path, tokenizer, rows, seq_len=32)
    assert [len(t) for t in dataset._cut([("x" * 5000, False), ("y" * 5000, True)], 32)] == [
        64 * 33,
        0,
    ]
    monkeypatch.setattr(dataset, "CHARS_PER_TOKEN_MAX", 10**9)  # nothing cut
    whole = build(tmp_path, tokenizer, rows, seq_len=32)
    np.testing.assert_array_equal(cut.train.token_ids, whole.train.token_ids)
    np.testing.assert_array_equal(cut.train.loss_weights, whole.train.loss_weights)
    assert cut.stats["overlong"] == whole.stats["overlong"] == 2
    monkeypatch.undo()
    dropped = build(tmp_path, tokenizer, rows, seq_len=32, overlong="drop")
    assert dropped.stats["overlong"] == 2 and dropped.stats["examples"] == 1  # cut, still dropped


def test_text_template_trains_a_pre_formatted_column_whole_between_bos_and_eos(
    tmp_path, tokenizers
):
    tok = tokenizers["gemma3"]
    text = "<s>[INST] Hi [/INST] Yo 안녕 </s>"
    rows = [{"text": text, "other": "ignored"}]
    split = build(tmp_path, tok, rows, template="text", seq_len=64).train
    n = int(split.padding_mask[0].sum())
    ids = [int(i) for i in tok(text)]
    assert split.token_ids[0, 0] == tok.start_token_id
    assert split.targets[0, :n].tolist() == [*ids, tok.end_token_id]
    assert split.loss_weights[0, :n].tolist() == [1.0] * n  # every token, EOS included


def test_a_start_token_is_not_added_twice_nor_where_the_model_adds_none(tokenizers):
    from kft.data import encoding

    tok = tokenizers["gemma3"]
    assert encoding.with_start(tok, ["Hi"])[0][0] == tok.start_token_id
    assert encoding.with_start(tok, ["<bos>Hi"])[0].count(tok.start_token_id) == 1
    vars(tok)["kft_add_start"] = False
    try:
        assert tok.start_token_id not in encoding.with_start(tok, ["Hi"])[0]
    finally:
        vars(tok).pop("kft_add_start")
