"""data.packing: packed rows give every token the loss it has unpacked, with far less padding."""

import os

import numpy as np
import pytest
from test_trained_logits import loss_and_grads

from kft.config import DataConfig
from kft.data import dataset, packing

SLOW = pytest.mark.slow


def test_pack_fills_rows_without_overflow_and_places_every_example_once():
    lengths = list(np.random.default_rng(0).integers(3, 60, 200))
    rows = packing.pack(lengths, 64)
    placed = sorted(i for row in rows for i in row)
    assert placed == list(range(200))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert (
        len(rows) <= -(-sum(lengths) // 64) * 1.1
    )  # best fit: within 10% of the fewest rows possible
    assert packing.pack(lengths, 64) == rows  # deterministic


def test_packed_arrays_restart_positions_and_keep_each_example_s_pairs():
    sequences = [
        ([2, 5, 6, 7], [0, 0, 1, 1]),
        ([2, 8, 9], [0, 1, 1]),
        ([2, 4, 3, 3, 3, 1], [0, 0, 0, 1, 1, 1]),
    ]
    arrays = packing.packed_arrays(sequences, seq_len=8, pad_id=0)
    assert arrays["token_ids"].shape[1] == 8 and len(arrays["token_ids"]) == 2
    # Best fit, longest first: the 5-pair and 3-pair examples fill row 0 exactly; the 2-pair one starts row 1.
    row = arrays["segment_ids"][0].tolist()
    assert row == [1, 1, 1, 2, 2, 2, 2, 2]
    assert arrays["token_positions"][0].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    assert arrays["token_ids"][0].tolist() == [2, 5, 6, 2, 4, 3, 3, 3]
    assert arrays["targets"][0].tolist() == [5, 6, 7, 4, 3, 3, 3, 1]
    assert arrays["loss_weights"][0].tolist() == [0, 1, 1, 0, 0, 1, 1, 1]
    assert arrays["padding_mask"][1].tolist() == [True, True] + [False] * 6


def _forward(model, inputs):
    """The model's output, compiled (Gemma 4 op by op is slow)."""
    import jax

    values = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
    )
    return np.asarray(jax.jit(lambda t, f, x: model.stateless_call(t, f, x)[0])(*values, inputs))


def _per_token_nll(model, split, rows):
    """{(example, offset): nll} of every weighted target, from the trained-positions model."""
    inputs, _, _ = split.batch(np.arange(len(split)), trained_only=True)
    nll = _forward(model, inputs).reshape(-1)
    positions = inputs["positions"].reshape(-1)
    length = split.token_ids.shape[1]
    out = {}
    for value, flat in zip(nll, positions):
        if flat < 0:
            break
        row, col = divmod(int(flat), length)
        if rows is None:
            out[(row, col)] = float(value)
        else:
            example = rows[row][split.segment_ids[row, col] - 1]
            out[(example, int(split.token_positions[row, col]))] = float(value)
    return out


@pytest.mark.parametrize(
    "family",
    [
        # Gemma 3 by default: its block rotates without a position input. Slow tier (~70 s each): Gemma 4
        # (position_ids input, shared K/V), Gemma 1 and 2 (GemmaDecoderBlock, its own RoPE; Gemma 2's soft
        # caps) and the Gemma 4 MoE.
        # Qwen in the default tier too: a Llama-style block (mask and RoPE hooked elsewhere), an untied
        # head, q/k/v biases; the other Llama-style families in the slow tier.
        "gemma3",
        "qwen",
        *[
            pytest.param(f, marks=SLOW)
            for f in (
                "gemma4",
                "gemma",
                "gemma2",
                "gemma4_moe",
                "llama",
                "llama3",
                "mistral",
                "qwen3",
            )
        ],
    ],
)
def test_packed_loss_and_gradients_equal_the_unpacked_ones(tiny_presets, family):
    import keras

    from kft.models import lora
    from kft.models.trained_logits import PositionLoss, TrainedPositionsLM
    from kft.quant import frozen_base

    keras.utils.set_random_seed(1)
    task, _, _ = frozen_base.load(tiny_presets[family], "float32")
    lora.enable(task.backbone, 2, 4.0, ["all-linear"])
    for path, variable in lora.lora_variables(
        task.backbone
    ).items():  # B off zero, so LoRA changes the output
        variable.assign(
            np.random.default_rng(len(path)).normal(0, 0.05, variable.shape).astype("float32")
        )
    tokenizer = task.preprocessor.tokenizer
    # Examples of 53-84 tokens, three to a row; the sliding window (32) must not reach the example before.
    config = DataConfig(source="bundled:tiny_facts", seq_len=256, shuffle=False, max_examples=12)
    plain = dataset.build(dataset.load_records(config), tokenizer, config, seed=0).train
    packed = dataset.build(
        dataset.load_records(config), tokenizer, DataConfig(**{**vars(config), "packing": True}), 0
    ).train
    assert len(packed) <= len(plain) / 2  # several examples per row
    assert packed.loss_weights.sum() == plain.loss_weights.sum()
    rows = packing.pack([int(n) for n in plain.padding_mask.sum(axis=1)], 256)

    fast = TrainedPositionsLM(task)
    by_token = _per_token_nll(fast, plain, None)
    packed_by_token = _per_token_nll(fast, packed, rows)
    assert by_token.keys() == packed_by_token.keys()
    worst = max(
        abs(by_token[k] - packed_by_token[k]) / max(1.0, abs(by_token[k])) for k in by_token
    )
    assert worst <= 1e-5, worst

    loss, grads = loss_and_grads(
        fast, *plain.batch(np.arange(len(plain)), trained_only=True), PositionLoss()
    )
    packed_loss, packed_grads = loss_and_grads(
        fast, *packed.batch(np.arange(len(packed)), trained_only=True), PositionLoss()
    )
    assert abs(packed_loss - loss) <= 1e-5 * abs(loss)
    for g, p in zip(grads, packed_grads):
        assert np.linalg.norm(g - p) <= 1e-4 * np.linalg.norm(g) + 1e-9


def test_without_the_segment_mask_packed_examples_would_see_each_other(tiny_presets):
    """The check above has teeth: the same packed rows without kft's mask give other losses."""
    import keras

    from kft.models.trained_logits import TrainedPositionsLM
    from kft.quant import frozen_base

    keras.utils.set_random_seed(1)
    task, _, _ = frozen_base.load(tiny_presets["gemma3"], "float32")
    config = DataConfig(
        source="bundled:tiny_facts", seq_len=256, shuffle=False, max_examples=12, packing=True
    )
    packed = dataset.build(
        dataset.load_records(config), task.preprocessor.tokenizer, config, seed=0
    ).train
    inputs, _, _ = packed.batch(np.arange(len(packed)), trained_only=True)
    fast = TrainedPositionsLM(task)
    with_mask = _forward(fast, inputs)
    without = _forward(
        fast, {k: v for k, v in inputs.items() if k not in ("segment_ids", "token_positions")}
    )
    assert np.abs(with_mask - without).max() > 1e-2


def test_training_with_packing_learns_and_reports_the_padding(tiny_presets, tmp_path, capsys):
    import json

    import kft

    result = kft.train(
        os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml"),
        **{
            "model.preset": tiny_presets["gemma3"],
            "data.packing": True,
            "data.seq_len": 256,
            "train.batch_size": 2,
            "output.samples": 2,
            "output.tensorboard": False,
            "output.dir": str(tmp_path / "run"),
        },
    )
    out = capsys.readouterr().out
    stats = json.loads((result.run_dir / "summary.json").read_text())["data"]
    assert stats["packed_rows"] <= stats["train_examples"] / 2
    assert "packed" in out and "% padding)" in out
    assert result.metrics["final_loss"] < 0.5 * result.metrics["first_loss"]


def test_packing_with_full_logits_is_refused(tmp_path):
    from kft import config as config_lib
    from kft.core.errors import KftError

    with pytest.raises(KftError, match="data.packing.*logits_on: trained"):
        config_lib.from_dict({"data": {"packing": True}, "train": {"logits_on": "all"}})
