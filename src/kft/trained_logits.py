"""The vocabulary projection only where the loss needs it.

A causal LM's last layer maps every position to vocabulary logits: for Gemma (256k entries) that
is most of a small model's compute and memory (batch 4 x 128 positions of float32 logits is
0.5 GB at 270M). With response-only loss most positions carry weight 0. Here each example's
trained positions are gathered (padded to a fixed count K per dataset, so XLA compiles one
program) before the projection; the loss is the same sum(w * nll) / sum(w).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def gather_trained(loss_weights: np.ndarray, targets: np.ndarray, multiple: int = 8):
    """(positions, targets, weights), each (N, K): every row's weighted positions, padded with
    position 0 at weight 0. K is the largest count rounded up to `multiple`."""
    counts = (loss_weights > 0).sum(axis=1)
    k = min(int(-(-max(int(counts.max()), 1) // multiple) * multiple), loss_weights.shape[1])
    index = np.zeros((len(loss_weights), k), dtype="int32")
    for row, weights in enumerate(loss_weights):
        where = np.flatnonzero(weights > 0)
        index[row, : len(where)] = where
    valid = np.arange(k)[None, :] < counts[:, None]
    picked_weights = np.where(valid, np.take_along_axis(loss_weights, index, axis=1), 0).astype("float32")
    return index, np.take_along_axis(targets, index, axis=1), picked_weights


class TrainedPositionsLM(keras.Model):
    """Wraps a KerasHub causal LM: inputs add `positions`; outputs logits at those positions only."""

    def __init__(self, task, **kwargs):
        super().__init__(**kwargs)
        self.task = task
        self.built = True  # every variable belongs to the (built) task

    @property
    def backbone(self):
        return self.task.backbone

    def call(self, inputs):
        hidden = self.task.backbone({"token_ids": inputs["token_ids"], "padding_mask": inputs["padding_mask"]})
        picked = ops.take_along_axis(hidden, ops.expand_dims(inputs["positions"], -1), axis=1)
        return self.task.backbone.token_embedding(picked, reverse=True)
