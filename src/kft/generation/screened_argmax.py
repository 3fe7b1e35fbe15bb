"""Greedy decoding's argmax over the vocabulary on a CPU, screened in bfloat16 first.

Every decode step of greedy generation multiplies each row's final hidden state by the whole
vocabulary and keeps the argmax (Gemma 3 270M, 60 rows: [60, 640] x [640, 262144] in float32,
180 ms a step on a 2-core AMD EPYC with AVX-512 BF16, half a warm generate call's time).
XLA:CPU does the same product from bfloat16 operands, accumulated in float32, in 114 ms. `argmax`
does that first (with the candidates' float32 logits, 106 ms in all), keeps each row's
CANDIDATES best tokens by it, computes their float32 logits, and proves that no other token can
beat the best of them: a bfloat16 logit is within `error_bound` of the float32 one (rounding both
operands moves each product by at most 2^-7 of |h_i e_i|; Cauchy-Schwarz bounds the sum of those
by |h| max|e|). A row where the proof fails (near-tied tokens outside the candidates) makes the
step compute the float32 logits of every token, as without screening: the tokens are the float32
argmax's either way, up to float32 rounding (the candidates' logits are summed in another order).

Only for kft's greedy sampler (it takes the argmax of the logits, `samplers.ArgmaxSampler`), a
float32 tied embedding, and on the CPU backend of a CPU with bfloat16 dot products (AVX-512 BF16
or AMX; elsewhere XLA:CPU widens bfloat16 to float32 and the screening would only add work), on
one device: under a keras.distribution (simulated CPU devices) XLA aborted compiling the TopK.
`KFT_SCREENED_ARGMAX=1` turns it on on any CPU (the tests do, so that every machine checks its
tokens), `=0` off. The bfloat16 copy of the embedding is made once
outside the generate program and kept while the embedding keeps its value (`kept_copy`).
"""

from __future__ import annotations

import contextlib
import functools
import os

from kft.generation import samplers
from kft.models import layer_classes

CANDIDATES = 16
BFLOAT16_ROUNDOFF = 2.0**-8  # unit roundoff of bfloat16's 8-bit significand (round to nearest)
FLOAT32_ROUNDOFF = 2.0**-24
COPY_BUDGET = 2 * 1024**3  # the bfloat16 copy's bytes


@functools.cache
def cpu_has_bfloat16_dots() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def applies(task) -> bool:
    import keras

    switch = os.environ.get("KFT_SCREENED_ARGMAX", "auto")
    if (
        keras.backend.backend() != "jax"
        or switch == "0"
        or (switch != "1" and not cpu_has_bfloat16_dots())
    ):
        return False
    import jax

    embedding = task.backbone.token_embedding
    # One device only: under a distribution XLA:CPU aborts compiling the TopK (TopkDecomposer).
    return (
        jax.default_backend() == "cpu"
        and keras.distribution.distribution() is None
        and isinstance(task.sampler, samplers.argmax_sampler_class())
        and getattr(embedding, "tie_weights", False)
        and embedding.quantization_mode is None
        and keras.backend.standardize_dtype(embedding.compute_dtype) == "float32"
        and getattr(embedding, "reverse_dtype", None) in (None, "float32")
        and embedding.input_dim > CANDIDATES + 1
        and embedding.input_dim * embedding.output_dim * 2 <= COPY_BUDGET
        and len(embedding.embeddings.value.sharding.device_set) == 1
    )


def kept_copy(task) -> tuple | None:
    """(the embedding in bfloat16, the largest row norm of the float32 embedding), made outside any
    program and kept on the backbone while the embedding keeps its value; None where not `applies`."""
    if not applies(task):
        return None
    backbone = task.backbone
    source = backbone.token_embedding.embeddings.value
    kept = vars(backbone).get("_kft_vocabulary_bf16")
    if kept is not None and kept[0] is source:
        return kept[1]
    release(backbone)
    made = bfloat16_copy(source)
    vars(backbone)["_kft_vocabulary_bf16"] = (source, made)
    return made


def release(backbone) -> None:
    vars(backbone).pop("_kft_vocabulary_bf16", None)


def bfloat16_copy(embeddings):
    """(`embeddings` (V, D) in bfloat16, the largest of its float32 rows' norms): `argmax`'s inputs."""
    return _bfloat16_copy()(embeddings)


@functools.cache
def _bfloat16_copy():
    import jax
    import jax.numpy as jnp

    return jax.jit(lambda e: (e.astype(jnp.bfloat16), jnp.max(jnp.sqrt(jnp.sum(e * e, axis=-1)))))


def error_bound(depth: int) -> float:
    """c such that |bfloat16-screened logit - float32 logit| <= c * |h| * max|e| for a dot of
    `depth` terms: operand rounding (2u + u^2 of each |h_i e_i|, u = bfloat16's roundoff; the
    products of bfloat16 values are exact in float32) and float32 accumulation in any order, in
    both (gamma_depth of the sum of |terms| each), and once more for the candidates' own float32
    logits, summed in another order than the full product's."""
    gamma = depth * FLOAT32_ROUNDOFF / (1 - depth * FLOAT32_ROUNDOFF)
    u = BFLOAT16_ROUNDOFF
    return (2 * u + u * u) + gamma * (1 + u) ** 2 + 3 * gamma


def argmax(hidden, embeddings, embeddings_bf16, norm_max, screened_out: list | None = None):
    """The argmax over the vocabulary of `hidden` (B, D) float32 times `embeddings` (V, D), as
    jnp.argmax of the float32 logits gives it (see the module doc). With `screened_out`, appends
    whether the screening proved every row (False: this step computed every logit)."""
    import jax
    import jax.numpy as jnp

    approx = jax.lax.dot_general(
        hidden.astype(jnp.bfloat16),
        embeddings_bf16,
        (((1,), (1,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    # The barrier keeps XLA:CPU's TopK: with its indices feeding a gather in the same fusion
    # scope, XLA turns it into a sort of the whole vocabulary (~3.6 s instead of ~20 ms).
    values, indices = jax.lax.optimization_barrier(jax.lax.top_k(approx, CANDIDATES + 1))
    candidates = indices[:, :CANDIDATES]
    exact = jnp.einsum("bd,bkd->bk", hidden, jnp.take(embeddings, candidates, axis=0))
    best = jnp.max(exact, axis=-1)
    # Ties go to the smallest index, as jnp.argmax's.
    token = jnp.min(
        jnp.where(exact == best[:, None], candidates, jnp.iinfo(jnp.int32).max), axis=-1
    )
    # Slack for the norms' own rounding and for products flushed to zero (subnormal).
    scale = jnp.sqrt(jnp.sum(hidden * hidden, axis=-1)) * norm_max * (1 + 1e-5) + 1e-30
    proven = values[:, CANDIDATES] + error_bound(hidden.shape[-1]) * scale < best
    if screened_out is not None:
        screened_out.append(jnp.all(proven))
    return jax.lax.cond(
        jnp.all(proven),
        lambda: token.astype("int32"),
        lambda: jnp.argmax(hidden @ embeddings.T, axis=-1).astype("int32"),
    )


@contextlib.contextmanager
def screening(task, kept: tuple):
    """While inside (tracing kft's generate program), the decode steps' logits (`reverse` calls of
    one position) are one-hot at `argmax`'s token: the greedy sampler's argmax picks it."""
    embedding = task.backbone.token_embedding
    vars(embedding)["_kft_screen"] = kept
    try:
        with layer_classes.adding([embedding], "screened"):
            yield
    finally:
        vars(embedding).pop("_kft_screen", None)


def _screened_class(cls):
    def call(self, inputs, reverse=False):
        if not reverse or inputs.shape[1] != 1:
            return cls.call(self, inputs, reverse=reverse)
        import jax

        embeddings_bf16, norm_max = self._kft_screen
        token = argmax(inputs[:, 0, :], self.embeddings.value, embeddings_bf16, norm_max)
        return jax.nn.one_hot(token, self.input_dim, dtype=inputs.dtype)[:, None, :]

    return type(cls.__name__, (cls,), {"call": call, "__module__": cls.__module__})


layer_classes.register("screened", _screened_class)
