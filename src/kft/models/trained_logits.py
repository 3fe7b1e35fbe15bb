"""The loss only where it is needed, without ever holding full-vocabulary logits.

A causal LM's last layer maps every position to vocabulary logits: for Gemma (256k entries) that
is most of a small model's compute and memory (batch 4 x 128 positions of float32 logits is
0.5 GB at 270M). With response-only loss most positions carry weight 0. So:

- the data side lists a batch's weighted positions first, flattened over its rows
  (`kft.data.dataset.gather_trained`), in arrays of the batch's own shape (no new XLA programs);
- the model gathers the hidden states there and computes each position's negative
  log-likelihood chunk by chunk, stopping after the last weighted position (`token_nll`); in
  training, the chunk's gradient with respect to its hidden states is formed in the same pass,
  so only (chunk x vocabulary) logits ever exist and the backward pass needs no second
  projection.

The loss is the same sum(w * nll) / sum(w) as Keras' weighted sparse cross-entropy on the full
logits (tests/test_trained_logits.py checks loss and gradients).
"""

from __future__ import annotations

from functools import partial

import keras

from kft.core.errors import KftError
from kft.data import packing

CHUNK = 32  # positions per vocabulary projection: 32 x 262144 float32 logits is 34 MB (the fastest on CPU)
# Without the gradient (evaluation) a chunk holds only logits, and a bigger projection runs faster
# (270M held-out pass on CPU: 11.7 s at 32, 10.5 s at 64, 9.9 s at 128 with twice the rows).
EVAL_CHUNK = 128


def _logits(hidden, embeddings, soft_caps):
    """(logits, d capped / d raw logits or None) in float32 for one chunk: hidden (c, d) @ embeddings (V, d).T,
    through each tanh soft cap in turn (Gemma 2's and Gemma 4's final-logit capping)."""
    import jax
    import jax.numpy as jnp

    logits = jax.lax.dot_general(
        hidden, embeddings, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
    )
    slope = None
    for cap in soft_caps:
        capped = jnp.tanh(logits / cap)
        logits = capped * cap
        slope = (1.0 - capped * capped) if slope is None else slope * (1.0 - capped * capped)
    return logits, slope


def _nll_and_hidden_grad(hidden, embeddings, targets, count, soft_cap, with_grad: bool):
    """Per-position nll (and d nll / d hidden) for the first `count` positions, in chunks of
    CHUNK (EVAL_CHUNK without the gradient); the loop stops after the last chunk holding one of
    them (the rest stay 0), so the padding after them costs nothing whatever the batch's shape."""
    import jax
    import jax.numpy as jnp

    n, d = hidden.shape
    chunk = min(CHUNK if with_grad else EVAL_CHUNK, n)
    embeddings = embeddings.astype(
        hidden.dtype
    )  # once, not per chunk (bfloat16 compute on accelerators)
    pad = (-n) % chunk
    hidden = jnp.pad(hidden, ((0, pad), (0, 0))).reshape(-1, chunk, d)
    targets = jnp.pad(targets, (0, pad)).reshape(-1, chunk)

    def body(i, carry):
        h, t = hidden[i], targets[i]
        logits, slope = _logits(h, embeddings, soft_cap)
        lse = jax.nn.logsumexp(logits, axis=-1)
        nll = lse - jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
        if not with_grad:
            return carry.at[i].set(nll)
        # d nll / d logits = softmax - one_hot; through each soft cap, times 1 - tanh^2.
        d_logits = jnp.exp(logits - lse[:, None]).at[jnp.arange(chunk), t].add(-1.0)
        if slope is not None:
            d_logits = d_logits * slope
        d_hidden = jax.lax.dot_general(
            d_logits.astype(h.dtype),
            embeddings,
            (((1,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        return carry[0].at[i].set(nll), carry[1].at[i].set(d_hidden.astype(h.dtype))

    chunks = (count + chunk - 1) // chunk
    nll = jnp.zeros(targets.shape, jnp.float32)
    if not with_grad:
        return jax.lax.fori_loop(0, chunks, body, nll).reshape(-1)[:n]
    nll, d_hidden = jax.lax.fori_loop(0, chunks, body, (nll, jnp.zeros(hidden.shape, hidden.dtype)))
    return nll.reshape(-1)[:n], d_hidden.reshape(-1, d)[:n]


def nll_no_grad(hidden, embeddings, targets, count, soft_caps):
    """Per-position nll of `targets` for the first `count` rows of `hidden` (n, d); 0 after."""
    return _nll_and_hidden_grad(hidden, embeddings, targets, count, soft_caps, with_grad=False)


def head_matrix(embedding):
    """The output head as a (vocab, hidden) matrix: the token embedding where the head is tied
    (Gemma, Llama 3.2 1B/3B, small Qwen), else the transposed `reverse_embeddings` (Llama 2, Llama 3.1 8B,
    Mistral): XLA folds the transpose into the dot, nothing is copied."""
    from keras import ops

    if getattr(embedding, "tie_weights", True):
        return embedding.embeddings.value
    return ops.transpose(embedding.reverse_embeddings.value)


def soft_caps(task) -> tuple[float, ...]:
    """The embedding's own logit cap, then the task's (Gemma4CausalLM's `final_logit_cap`), as the task applies them."""
    caps = (task.backbone.token_embedding.logit_soft_cap, getattr(task, "final_logit_cap", None))
    return tuple(float(c) for c in caps if c)


def _token_nll():
    import jax

    @partial(jax.custom_vjp, nondiff_argnums=(4,))
    def token_nll(hidden, embeddings, targets, count, soft_cap):
        return _nll_and_hidden_grad(hidden, embeddings, targets, count, soft_cap, with_grad=False)

    def forward(hidden, embeddings, targets, count, soft_cap):
        return _nll_and_hidden_grad(hidden, embeddings, targets, count, soft_cap, with_grad=True)

    def backward(soft_cap, d_hidden, upstream):
        # The embeddings are frozen (evaluation.compile_task checks): no cotangent for them, the targets or the count.
        return d_hidden * upstream[:, None].astype(d_hidden.dtype), None, None, None

    token_nll.defvjp(forward, backward)
    return token_nll


class TrainedPositionsLM(keras.Model):
    """Wraps a KerasHub causal LM: inputs add flat `positions` and their `targets`; the output is
    the negative log-likelihood of each target (train with `PositionLoss`)."""

    def __init__(self, task, **kwargs):
        super().__init__(**kwargs)
        self.task = task
        self.built = True  # every variable belongs to the (built) task
        if getattr(
            task.backbone.token_embedding, "quantization_mode", None
        ):  # kft.quant.quantize keeps it float
            raise KftError(
                "train.logits_on: trained reads the token embedding matrix and needs it float; "
                "set train.logits_on: all"
            )
        self._token_nll = _token_nll()
        self.soft_caps = soft_caps(task)

    @property
    def backbone(self):
        return self.task.backbone

    def call(self, inputs):
        from keras import ops

        backbone = self.task.backbone
        with packing.segments(backbone, inputs.get("segment_ids"), inputs.get("token_positions")):
            hidden = backbone({name: inputs[name] for name in backbone.input})
        hidden = ops.reshape(hidden, (-1, hidden.shape[-1]))
        positions = ops.reshape(inputs["positions"], (-1,))
        picked = ops.take(hidden, ops.maximum(positions, 0), axis=0)
        nll = self._token_nll(
            picked,
            head_matrix(self.task.backbone.token_embedding),
            ops.reshape(inputs["targets"], (-1,)),
            ops.sum(ops.cast(positions >= 0, "int32")),
            self.soft_caps,
        )
        return ops.reshape(nll, ops.shape(inputs["positions"]))


class PositionLoss(keras.losses.Loss):
    """The model already returns per-position losses: weight them, sum, divide by the weights."""

    def __init__(self):
        super().__init__(name="position_loss", reduction="mean_with_sample_weight")

    def call(self, y_true, y_pred):
        return y_pred
