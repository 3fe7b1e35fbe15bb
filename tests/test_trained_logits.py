"""The fast path computes the same loss and gradients as KerasHub's plain full-logits path."""

import numpy as np
import pytest

from kft import data
from kft.config import DataConfig


def loss_and_grads(model, inputs, targets, weights):
    import jax
    import keras

    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")

    def loss(values):
        logits, _ = model.stateless_call(values, frozen, inputs)
        return loss_fn(targets, logits, sample_weight=weights)

    value, grads = jax.value_and_grad(loss)(trainable)
    return float(value), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
@pytest.mark.parametrize("loss_on", ["response", "all"])
def test_trained_position_logits_match_the_plain_path(tiny_presets, family, loss_on):
    import keras

    from kft import lora, model
    from kft.trained_logits import TrainedPositionsLM

    keras.utils.set_random_seed(1)
    task, _, _ = model.load(tiny_presets[family], "float32")
    lora.enable(task.backbone, 2, 4.0, ["all-linear"])
    for path, variable in lora.lora_variables(task.backbone).items():  # B off zero, so A gets gradients too
        variable.assign(np.random.default_rng(len(path)).normal(0, 0.05, variable.shape).astype("float32"))
    config = DataConfig(source="bundled:tiny_facts", seq_len=48, loss_on=loss_on, shuffle=False, max_examples=6)
    split = data.build(data.load_records(config), task.preprocessor.tokenizer, config, seed=0).train
    plain_loss, plain_grads = loss_and_grads(task, split.inputs(), split.targets, split.loss_weights)
    fast = TrainedPositionsLM(task)
    inputs, targets, weights = split.trained_positions()
    assert inputs["positions"].shape[1] < split.token_ids.shape[1] or loss_on == "all"
    fast_loss, fast_grads = loss_and_grads(fast, inputs, targets, weights)
    assert abs(fast_loss - plain_loss) <= 1e-5 * abs(plain_loss)
    assert len(fast_grads) == len(plain_grads) == len(lora.lora_variables(task.backbone))
    for fast_g, plain_g in zip(fast_grads, plain_grads):
        assert np.abs(plain_g).max() > 0
        assert np.abs(fast_g - plain_g).max() <= 1e-5 * np.abs(plain_g).max() + 1e-9


def test_length_buckets_cut_only_padding_and_keep_the_loss(tiny_presets):
    import keras

    from kft import lora, model

    keras.utils.set_random_seed(2)
    task, _, _ = model.load(tiny_presets["gemma3"], "float32")
    lora.enable(task.backbone, 2, None, ["query", "value"])
    config = DataConfig(source="bundled:tiny_facts", seq_len=160, shuffle=False)
    split = data.build(data.load_records(config), task.preprocessor.tokenizer, config, seed=0).train
    full = data.batches(split, 4, 4, seed=0)
    cut = data.batches(split, 4, 4, seed=0, pad_to_multiple=16)
    lengths = set()
    for i in range(4):
        (x_full, y_full, w_full), (x_cut, y_cut, w_cut) = full[i], cut[i]
        length = x_cut["token_ids"].shape[1]
        lengths.add(length)
        assert length % 16 == 0 and length <= 160 and x_cut["padding_mask"][:, length - 16:].any()
        assert not x_full["padding_mask"][:, length:].any() and w_full[:, length:].sum() == 0
        loss_full, _ = loss_and_grads(task, x_full, y_full, w_full)
        loss_cut, _ = loss_and_grads(task, x_cut, y_cut, w_cut)
        assert abs(loss_cut - loss_full) <= 1e-5 * abs(loss_full)
    assert min(lengths) < 160
