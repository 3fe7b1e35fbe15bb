"""Preference objectives on LoRA: DPO and ORPO from each answer's summed log-probability.

A batch of B pairs is 2B rows: row 2i is pair i's chosen answer, row 2i+1 its rejected one (a pair
stays on one device under data parallelism). `PreferenceLM` runs the trained-positions loss
(trained_logits) and sums each row's log-probabilities over its answer tokens: its output is
(2B, 2) = [summed log-prob, answer tokens] per row. The targets `y` are the reference model's
summed log-probs of the same rows, computed once before training: the policy at step 0 *is*
the reference (LoRA starts with B = 0; no second model, no second forward per step).

Packed pairs (data.packing, kft.data.preference.PackedPairs): a row holds several pairs, each
as two adjacent segments (chosen, rejected); the inputs' `answer_slots` (rows, K) say which of
a row's K segment slots hold an answer. The output is then (rows, K, 2) and `y` (rows, K): flat,
the same interleaved layout, with empty slots (0 answer tokens) left out of every mean.

DPO (Rafailov et al. 2023): -log sigmoid(beta * ((c - c_ref) - (r - r_ref))) per pair.
ORPO (Hong et al. 2024, as TRL computes it): the chosen answers' token-mean NLL minus
lambda x mean log sigmoid(log odds(chosen) - log odds(rejected)), odds of the per-token mean
log-prob p: p / (1 - p) in log space.
"""

from __future__ import annotations

import keras

from kft.models.trained_logits import TrainedPositionsLM

METRICS = ("reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected")


def answer_logps(nll, positions, segment_ids=None, slots: int = 1):
    """(summed log-prob, answer tokens) per row, (R, 2), from the per-position nll that
    TrainedPositionsLM returns for a batch's flat trained `positions` (R, L; -1 = none); for
    packed rows, per segment slot: (R, slots, 2), slot k = segment id k + 1."""
    from keras import ops

    rows, length = positions.shape
    flat = ops.reshape(positions, (-1,))
    valid = flat >= 0
    answer = flat // length
    if segment_ids is not None:
        segment = ops.take(ops.reshape(segment_ids, (-1,)), ops.maximum(flat, 0))
        answer = answer * slots + segment - 1
    n = rows * slots
    answer = ops.where(valid, answer, n)  # the padding entries go to an extra answer
    logp = ops.segment_sum(ops.where(valid, -ops.reshape(nll, (-1,)), 0.0), answer, n + 1)
    count = ops.segment_sum(ops.cast(valid, "float32"), answer, n + 1)
    out = ops.stack([logp[:n], count[:n]], axis=-1)
    return out if segment_ids is None else ops.reshape(out, (rows, slots, 2))


def _flat(outputs, reference):
    """(outputs (answers, 2), reference (answers,)) from either layout (see the module's doc)."""
    from keras import ops

    return ops.reshape(outputs, (-1, 2)), ops.reshape(reference, (-1,))


def _pairs(values):
    """(chosen, rejected) halves of a per-answer vector."""
    from keras import ops

    pairs = ops.reshape(values, (-1, 2))
    return pairs[:, 0], pairs[:, 1]


def present(outputs):
    """1.0 for each pair of (flat) `outputs` that holds answers, 0.0 for a packed row's empty slots."""
    from keras import ops

    chosen_count, _ = _pairs(outputs[:, 1])
    return ops.cast(chosen_count > 0, "float32")


def _mean(values, weights):
    from keras import ops

    return ops.sum(values * weights) / ops.maximum(ops.sum(weights), 1.0)


def log1m_exp(x):
    """log(1 - exp(x)) for x < 0, stable near 0 (x is kept below -1e-6: log-prob 1 has no odds)."""
    from keras import ops

    return ops.log(-ops.expm1(ops.minimum(x, -1e-6)))


def rewards(objective: str, outputs, reference, beta: float, orpo_lambda: float):
    """(chosen, rejected) rewards per pair: DPO's beta x log-ratio to the reference; ORPO's
    lambda x per-token mean log-prob (as TRL logs them)."""
    from keras import ops

    outputs, reference = _flat(outputs, reference)
    logp, count = outputs[:, 0], outputs[:, 1]
    if objective == "dpo":
        chosen, rejected = _pairs(logp - reference)
        return beta * chosen, beta * rejected
    chosen, rejected = _pairs(logp / ops.maximum(count, 1.0))
    return orpo_lambda * chosen, orpo_lambda * rejected


def loss(objective: str, outputs, reference, beta: float, orpo_lambda: float):
    """The batch's preference loss from PreferenceLM's outputs and the reference log-probs."""
    from keras import ops

    outputs, reference = _flat(outputs, reference)
    weights = present(outputs)
    if objective == "dpo":
        chosen, rejected = rewards("dpo", outputs, reference, beta, orpo_lambda)
        return -_mean(ops.log_sigmoid(chosen - rejected), weights)
    logp, count = outputs[:, 0], outputs[:, 1]
    chosen_logp, _ = _pairs(logp)
    chosen_count, _ = _pairs(count)
    nll = -ops.sum(chosen_logp) / ops.maximum(ops.sum(chosen_count), 1.0)
    mean_c, mean_r = _pairs(logp / ops.maximum(count, 1.0))
    log_odds = (mean_c - mean_r) - (log1m_exp(mean_c) - log1m_exp(mean_r))
    return nll - orpo_lambda * _mean(ops.log_sigmoid(log_odds), weights)


class PreferenceLM(keras.Model):
    """A KerasHub causal LM that returns (summed log-prob, answer tokens) of each row's answer."""

    def __init__(self, task, **kwargs):
        super().__init__(**kwargs)
        self.inner = TrainedPositionsLM(task)
        self.built = True

    @property
    def task(self):
        return self.inner.task

    @property
    def backbone(self):
        return self.inner.task.backbone

    def call(self, inputs):
        nll = self.inner(inputs)
        if "answer_slots" not in inputs:
            return answer_logps(nll, inputs["positions"])
        slots = inputs["answer_slots"].shape[1]
        return answer_logps(nll, inputs["positions"], inputs["segment_ids"], slots)


class PreferenceLoss(keras.losses.Loss):
    """DPO or ORPO over the batch's pairs; `y_true` holds the reference log-probs of its rows."""

    def __init__(self, objective: str, beta: float, orpo_lambda: float):
        super().__init__(name=f"{objective}_loss")
        self.objective, self.beta, self.orpo_lambda = objective, beta, orpo_lambda

    def __call__(self, y_true, y_pred, sample_weight=None):  # a row weight has no meaning here
        return loss(self.objective, y_pred, y_true, self.beta, self.orpo_lambda)


class PairMetric(keras.metrics.Mean):
    """One of METRICS: each step's mean over its pairs, kept by Keras as a running mean over steps
    like the loss (kft.core.progress recovers a logging window's figure from two of them, so every
    step weighs the same, also where packed rows hold different numbers of pairs)."""

    def __init__(self, which: str, objective: str, beta: float, orpo_lambda: float):
        super().__init__(name=which)
        self.which, self.objective, self.beta, self.orpo_lambda = (
            which,
            objective,
            beta,
            orpo_lambda,
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        from keras import ops

        y_pred, y_true = _flat(y_pred, y_true)
        if self.which.startswith("logps"):
            chosen, rejected = _pairs(y_pred[:, 0])
            value = chosen if self.which == "logps_chosen" else rejected
        else:
            chosen, rejected = rewards(self.objective, y_pred, y_true, self.beta, self.orpo_lambda)
            value = (
                ops.cast(chosen > rejected, "float32")
                if self.which == "reward_accuracy"
                else chosen - rejected
            )
        return super().update_state(_mean(value, present(y_pred)))


def metrics(objective: str, beta: float, orpo_lambda: float) -> list:
    return [PairMetric(which, objective, beta, orpo_lambda) for which in METRICS]


def summary(objective: str, outputs, reference, beta: float, orpo_lambda: float) -> dict:
    """METRICS over whole (NumPy) arrays of outputs and reference log-probs, e.g. held-out pairs,
    plus `preferred`: the share of pairs whose chosen answer has the higher summed log-prob."""
    import numpy as np

    outputs, reference = np.asarray(outputs, "float32"), np.asarray(reference, "float32")
    chosen, rejected = (
        np.asarray(v) for v in rewards(objective, outputs, reference, beta, orpo_lambda)
    )
    logp_c, logp_r = outputs[0::2, 0], outputs[1::2, 0]
    return {
        "reward_accuracy": float(np.mean(chosen > rejected)),
        "reward_margin": float(np.mean(chosen - rejected)),
        "logps_chosen": float(np.mean(logp_c)),
        "logps_rejected": float(np.mean(logp_r)),
        "preferred": float(np.mean(logp_c > logp_r)),
    }
