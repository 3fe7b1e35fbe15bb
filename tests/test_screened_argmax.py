"""Greedy decoding's argmax screened in bfloat16 (kft.generation.screened_argmax): the float32 argmax's tokens."""

import numpy as np

from kft.generation import screened_argmax


def _run(hidden, embeddings):
    import jax
    import jax.numpy as jnp

    bf16, norm_max = screened_argmax.bfloat16_copy(jnp.asarray(embeddings))
    proven = []

    @jax.jit
    def screened(h, e, b, n):
        token = screened_argmax.argmax(h, e, b, n, proven)
        return token, proven[-1]

    token, ok = screened(jnp.asarray(hidden), jnp.asarray(embeddings), bf16, norm_max)
    full = np.argmax(np.asarray(jnp.asarray(hidden) @ jnp.asarray(embeddings).T), axis=-1)
    return np.asarray(token), bool(ok), full


def test_clear_winners_are_proven_by_the_screening_alone():
    rng = np.random.default_rng(0)
    embeddings = (rng.standard_normal((5000, 64)) / 8).astype("float32")
    hidden = (embeddings[rng.integers(0, 5000, 12)] * 40 + rng.standard_normal((12, 64))).astype(
        "float32"
    )
    token, proven, full = _run(hidden, embeddings)
    assert proven
    np.testing.assert_array_equal(token, full)


def test_a_best_token_the_bfloat16_screening_cannot_see_is_found_by_the_full_product():
    # 40 tokens whose bfloat16 copies are identical; the float32 best of them is the last one, so
    # the 16 candidates the screening keeps (ties: lowest indices) miss it: only the fallback finds it.
    rng = np.random.default_rng(1)
    embeddings = (rng.standard_normal((3000, 64)) / 8).astype("float32")
    base = np.full(64, 0.25, dtype="float32")
    for k in range(40):
        embeddings[100 + k] = base
        embeddings[100 + k, 0] += np.float32(k * 2.0**-20)  # below bfloat16's resolution at 0.25
    hidden = np.tile(base * 50, (3, 1)).astype("float32")
    hidden[:, 0] += 400.0
    token, proven, full = _run(hidden, embeddings)
    assert full.tolist() == [139, 139, 139]
    assert not proven
    np.testing.assert_array_equal(token, full)


def test_the_error_bound_holds_where_every_rounding_goes_the_same_way():
    import jax
    import jax.numpy as jnp

    # Every element just under a bfloat16 rounding midpoint: each product loses ~2^-7 of itself, and
    # the losses add up; |h| max|e| equals the sum of |h_i e_i| here (h parallel to e).
    depth = 256
    value = np.float32(1 + 2.0**-8 - 2.0**-20)
    hidden = np.full((1, depth), value, dtype="float32")
    embeddings = np.full((2, depth), value, dtype="float32")
    bf16, norm_max = screened_argmax.bfloat16_copy(jnp.asarray(embeddings))
    approx = jax.lax.dot_general(
        jnp.asarray(hidden).astype(jnp.bfloat16),
        bf16,
        (((1,), (1,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    exact = hidden @ embeddings.T
    error = float(np.max(np.abs(np.asarray(approx) - exact)))
    scale = float(np.linalg.norm(hidden) * norm_max)
    assert error <= screened_argmax.error_bound(depth) * scale
    assert error > 0.9 * 2.0**-7 * scale  # the bound is not loose by more than the float32 terms


def test_greedy_generation_keeps_a_bfloat16_vocabulary_and_a_random_sampler_does_not(tiny_presets):
    import keras_hub

    from kft.generation import engine, samplers
    from kft.quant import frozen_base

    task = frozen_base.load(str(tiny_presets["gemma3"]), "float32")[0]
    task.compile(sampler=samplers.make_sampler("greedy"))
    kept = engine.kept_inputs(task)["decode_vocabulary"]
    assert (
        kept[0].dtype.name == "bfloat16"
        and kept[0].shape == task.backbone.token_embedding.embeddings.shape
    )
    assert engine.kept_inputs(task)["decode_vocabulary"] is kept  # kept between calls
    task.compile(sampler=keras_hub.samplers.TopKSampler(k=2, seed=0))
    assert "decode_vocabulary" not in engine.kept_inputs(task)
