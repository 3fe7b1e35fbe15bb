"""The fast path computes the same loss and gradients as KerasHub's plain full-logits path."""

from unittest import mock

import numpy as np
import pytest

from kft.config import DataConfig
from kft.data import dataset


def loss_and_grads(model, inputs, targets, weights, loss_fn=None):
    import jax
    import keras

    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]
    loss_fn = loss_fn or keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight"
    )

    def loss(values):
        outputs, _ = model.stateless_call(values, frozen, inputs)
        return loss_fn(targets, outputs, sample_weight=weights)

    value, grads = jax.value_and_grad(loss)(trainable)
    return float(value), [np.asarray(g) for g in grads]


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "family, loss_on",
    [
        # By default Gemma 3 (the plain case) and Gemma 4 (soft cap, per-layer embeddings, shared K/V);
        # Gemma 1 and 2 (soft caps, as Gemma 4) and the full-sequence loss in the slow tier.
        ("gemma3", "response"),
        ("gemma4", "response"),
        pytest.param("gemma", "response", marks=SLOW),
        pytest.param("gemma2", "response", marks=SLOW),
        *[pytest.param(f, "all", marks=SLOW) for f in ("gemma", "gemma2", "gemma3")],
        pytest.param("gemma4", "all", marks=SLOW),
        pytest.param("gemma4_moe", "response", marks=SLOW),
        pytest.param("gemma4_moe", "all", marks=SLOW),
    ],
)
def test_trained_position_loss_matches_the_plain_path(tiny_presets, family, loss_on, monkeypatch):
    import keras

    from kft.models import lora, trained_logits
    from kft.models.trained_logits import PositionLoss, TrainedPositionsLM
    from kft.quant import frozen_base

    monkeypatch.setattr(trained_logits, "CHUNK", 16)  # several chunks, the last one padded
    monkeypatch.setattr(trained_logits, "EVAL_CHUNK", 16)
    keras.utils.set_random_seed(1)
    task, _, _ = frozen_base.load(tiny_presets[family], "float32")
    lora.enable(task.backbone, 2, 4.0, ["all-linear"])
    for path, variable in lora.lora_variables(
        task.backbone
    ).items():  # B off zero, so A gets gradients too
        variable.assign(
            np.random.default_rng(len(path)).normal(0, 0.05, variable.shape).astype("float32")
        )
    config = DataConfig(
        source="bundled:tiny_facts", seq_len=48, loss_on=loss_on, shuffle=False, max_examples=6
    )
    split = dataset.build(
        dataset.load_records(config), task.preprocessor.tokenizer, config, seed=0
    ).train
    plain_loss, plain_grads = loss_and_grads(
        task, split.inputs(), split.targets, split.loss_weights
    )
    fast = TrainedPositionsLM(task)
    inputs, targets, weights = split.batch(
        np.arange(len(split)), trained_only=True, pad_to_multiple=16
    )
    trained = int((split.loss_weights > 0).sum())
    assert (inputs["positions"] >= 0).sum() == trained > 16  # more than one chunk
    assert weights.sum() == split.loss_weights.sum()
    fast_loss, fast_grads = loss_and_grads(fast, inputs, targets, weights, PositionLoss())
    assert abs(fast_loss - plain_loss) <= 1e-5 * abs(plain_loss)
    assert len(fast_grads) == len(plain_grads) == len(lora.lora_variables(task.backbone))
    for fast_g, plain_g in zip(fast_grads, plain_grads):
        assert np.abs(plain_g).max() > 0
        assert np.abs(fast_g - plain_g).max() <= 1e-5 * np.abs(plain_g).max() + 1e-9
    # Without gradients (evaluation), the forward-only path gives the same per-position losses.
    logits = np.asarray(task(split.inputs()), dtype="float64")
    log_probs = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    flat_log_probs = log_probs.reshape(-1, log_probs.shape[-1])
    cut = inputs["token_ids"].shape[1]
    where = np.flatnonzero(weights.reshape(-1) > 0)
    rows, columns = np.divmod(inputs["positions"].reshape(-1)[where], cut)
    expected = -flat_log_probs[
        rows * split.token_ids.shape[1] + columns, targets.reshape(-1)[where]
    ]
    nll = np.asarray(fast(inputs)).reshape(-1)[where]
    np.testing.assert_allclose(nll, expected, rtol=1e-5, atol=1e-5)


def test_gather_lists_a_batch_s_trained_positions_first_and_flat():
    from kft.data.dataset import gather_trained

    weights = np.array([[0, 0, 1, 1, 0], [0, 1, 1, 1, 0.5]], dtype="float32")
    targets = np.arange(10).reshape(2, 5)
    positions, picked, picked_weights = gather_trained(weights, targets)
    assert positions.shape == picked.shape == picked_weights.shape == (2, 5)
    assert positions.reshape(-1).tolist() == [2, 3, 6, 7, 8, 9, -1, -1, -1, -1]
    assert picked.reshape(-1).tolist() == [2, 3, 6, 7, 8, 9, 0, 0, 0, 0]
    assert picked_weights.reshape(-1).tolist() == [1, 1, 1, 1, 1, 0.5, 0, 0, 0, 0]


@pytest.mark.slow  # ~70 s; the default suite keeps the loss-equality tests per family
def test_length_buckets_cut_only_padding_and_keep_the_loss(tiny_presets):
    import keras

    from kft.models import lora
    from kft.quant import frozen_base

    keras.utils.set_random_seed(2)
    task, _, _ = frozen_base.load(tiny_presets["gemma3"], "float32")
    lora.enable(task.backbone, 2, None, ["query", "value"])
    config = DataConfig(source="bundled:tiny_facts", seq_len=160, shuffle=False)
    split = dataset.build(
        dataset.load_records(config), task.preprocessor.tokenizer, config, seed=0
    ).train
    full = dataset.batches(split, 4, 4, seed=0)
    cut = dataset.batches(split, 4, 4, seed=0, pad_to_multiple=16)
    lengths = set()
    for i in range(4):
        (x_full, y_full, w_full), (x_cut, y_cut, w_cut) = full[i], cut[i]
        length = x_cut["token_ids"].shape[1]
        lengths.add(length)
        assert length % 16 == 0 and length <= 160 and x_cut["padding_mask"][:, length - 16 :].any()
        assert not x_full["padding_mask"][:, length:].any() and w_full[:, length:].sum() == 0
        loss_full, _ = loss_and_grads(task, x_full, y_full, w_full)
        loss_cut, _ = loss_and_grads(task, x_cut, y_cut, w_cut)
        assert abs(loss_cut - loss_full) <= 1e-5 * abs(loss_full)
    assert min(lengths) < 160


def test_eval_loss_is_the_token_mean_over_all_batches_on_both_paths(tiny_presets):
    import datasets
    import keras

    from kft.evaluate import evaluation
    from kft.quant import frozen_base

    keras.utils.set_random_seed(3)
    task, _, _ = frozen_base.load(tiny_presets["gemma3"], "float32")
    config = DataConfig(source="bundled:tiny_facts", seq_len=160, shuffle=False, max_examples=7)
    # One long record and six facts (60-84 tokens): the trained-position path packs the facts two to a row.
    facts = dataset.load_records(config)
    records = facts.select([0]).map(
        lambda r: {**r, "instruction": " ".join(["tell me more"] * 12), "response": "yes"}
    )
    records = datasets.concatenate_datasets([records, facts])
    split = dataset.build(records, task.preprocessor.tokenizer, config, seed=0).train
    logits = np.asarray(
        task(split.inputs()), dtype="float64"
    )  # one batch, no aggregation to get wrong
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, split.targets[..., None], axis=-1)[..., 0]
    expected = (nll * split.loss_weights).sum() / split.loss_weights.sum()
    packed = dataset.eval_batches(split, 4, trained_only=True)
    assert sum(
        int((x["segment_ids"].max(axis=1) > 0).sum()) for x, _, w in packed if w.sum()
    ) < len(split)
    for logits_on in (
        "trained",
        "all",
    ):  # packed rows (trained), batches of 4 and a last one of 3 (all)
        compiled = evaluation.compile_task(task, logits_on=logits_on)
        # Keras traces the whole model symbolically on a train/test call while its compiled loss or a
        # sublayer is unbuilt (the preprocessor's, never called on token ids): kft builds both when it
        # compiles, so no measurement, the first included, makes that extra trace.
        traces = []
        trace = keras.src.backend.compute_output_spec
        with mock.patch(
            "keras.src.backend.compute_output_spec",
            lambda *a, **k: traces.append(1) or trace(*a, **k),
        ):
            loss = evaluation.eval_loss(compiled, split, 2)  # eval batches of 2 x 2
            assert evaluation.eval_loss(compiled, split, 2) == loss
        assert not traces, logits_on
        assert abs(loss - expected) <= 1e-5 * expected, logits_on


def test_training_the_embeddings_through_the_trained_position_loss_is_one_clear_error(tiny_presets):
    from kft.core.errors import KftError
    from kft.evaluate import evaluation
    from kft.quant import frozen_base

    task, _, _ = frozen_base.load(
        tiny_presets["gemma"], "float32"
    )  # no LoRA: the embeddings are trainable
    with pytest.raises(KftError, match="logits_on: all"):
        evaluation.compile_task(task, "adam", "trained")
    evaluation.compile_task(
        task, None, "trained"
    )  # measuring the base model needs no gradient: fine
