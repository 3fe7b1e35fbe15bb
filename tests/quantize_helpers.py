"""Tiny backbones of every family and a loss + LoRA-gradient probe, for the quantization tests."""

import numpy as np

VOCAB = 640
FAMILIES = ("gemma", "gemma2", "gemma3", "gemma4")


def tiny_backbone(family: str, hidden_dim: int = 64, seed: int = 0):
    """A float32 tiny backbone of `family` (Gemma 4 built here from KerasHub's Gemma4Backbone)."""
    import keras

    from kft.models import tiny

    keras.utils.set_random_seed(seed)
    if family == "gemma4":
        from keras_hub.models import Gemma4Backbone

        backbone = Gemma4Backbone(
            vocabulary_size=VOCAB,
            image_size=None,
            num_layers=2,
            num_query_heads=4,
            num_key_value_heads=2,
            hidden_dim=hidden_dim,
            intermediate_dim=2 * hidden_dim,
            head_dim=16,
            sliding_window_size=32,
            hidden_size_per_layer_input=8,
            layer_norm_epsilon=1e-6,
            dtype="float32",
        )
    else:
        backbone = tiny.backbone(family, VOCAB)
    embeddings = backbone.token_embedding.embeddings
    embeddings.assign(embeddings * tiny.EMBEDDING_SCALE)
    return backbone


def clone(backbone):
    """A fresh float copy of `backbone` with the same weights."""
    copy = type(backbone).from_config(backbone.get_config())
    copy.set_weights(backbone.get_weights())
    return copy


def batch(seed: int = 0, rows: int = 2, length: int = 24):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, VOCAB, size=(rows, length)).astype("int32")
    inputs = {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}
    weights = np.zeros((rows, length), "float32")
    weights[:, length // 2 : -1] = 1.0
    return inputs, np.roll(tokens, -1, axis=1), weights


def loss_and_lora_grads(backbone, inputs, targets, weights, with_logits: bool = False):
    """(token-mean loss, {LoRA B path: gradient}) from the full-vocabulary logits, in one jitted
    pass; with `with_logits`, the logits too as a third item."""
    import jax
    import jax.numpy as jnp

    inputs = dict(inputs)
    if "position_ids" in backbone.input:  # Gemma 4 takes positions as an input
        inputs["position_ids"] = np.broadcast_to(
            np.arange(targets.shape[1], dtype="int32"), targets.shape
        )
    trainable = backbone.trainable_variables
    frozen = [v.value for v in backbone.non_trainable_variables]

    def loss_fn(values):
        hidden, _ = backbone.stateless_call(values, frozen, inputs)
        logits = backbone.token_embedding(hidden, reverse=True).astype("float32")
        nll = (
            jax.nn.logsumexp(logits, -1)
            - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
        )
        return jnp.sum(nll * weights) / jnp.sum(weights), logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        [v.value for v in trainable]
    )
    lora_grads = {
        v.path: np.asarray(g) for v, g in zip(trainable, grads) if v.path.endswith("lora_kernel_b")
    }
    return (
        (float(loss), lora_grads, np.asarray(logits)) if with_logits else (float(loss), lora_grads)
    )


def cosine(a: dict, b: dict) -> float:
    x = np.concatenate([a[k].ravel() for k in sorted(a)])
    y = np.concatenate([b[k].ravel() for k in sorted(b)])
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def count_float_kernels_at_each_quantized_layer(monkeypatch) -> list:
    """From now on, each call of kft.quant.quantize.quantize_layer appends to the returned list how many
    float decoder kernels of models built after this call hold a value (the float decoder a load
    keeps in memory at that moment)."""
    import gc

    import keras

    from kft.quant import quantize

    kinds = (keras.layers.Dense, keras.layers.EinsumDense)
    before = {
        id(o) for o in gc.get_objects() if issubclass(type(o), kinds)
    }  # type(): no lazy-module getattr
    counts, original = [], quantize.quantize_layer

    def watched(layer, *args, **kwargs):
        counts.append(
            sum(
                1
                for o in gc.get_objects()
                if issubclass(type(o), kinds)
                and id(o) not in before
                and o.quantization_mode is None
                and o.path.startswith("decoder_block")
                and getattr(getattr(o, "_kernel", None), "_value", None) is not None
            )
        )
        return original(layer, *args, **kwargs)

    monkeypatch.setattr(quantize, "quantize_layer", watched)
    return counts
