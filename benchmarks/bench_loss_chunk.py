"""How many positions per vocabulary projection: time kft's trained-position loss by chunk size.

    python benchmarks/bench_loss_chunk.py [--chunks 16 32 64 128] [--trained 320]

Gemma 3 270M's shapes (hidden 640, vocabulary 262144), float32, random weights: loss and the
hidden-state gradient for `--trained` positions out of 1024 (kft.models.trained_logits.token_nll, as in
training). Prints seconds per call and GFLOP/s (4 x hidden x vocabulary per trained position:
the projection and its transpose); the fastest chunk is kft's CHUNK.
"""

from __future__ import annotations

import argparse
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--trained", type=int, default=320)
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--vocabulary", type=int, default=262144)
    args = parser.parse_args()
    from kft.core import backend

    backend.setup()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from kft.models import trained_logits

    rng = np.random.default_rng(0)
    embeddings = jnp.asarray(rng.normal(0, 0.02, (args.vocabulary, args.hidden)).astype("float32"))
    hidden = jnp.asarray(rng.normal(size=(1024, args.hidden)).astype("float32"))
    targets = jnp.asarray(rng.integers(0, args.vocabulary, 1024).astype("int32"))
    count = jnp.int32(args.trained)
    for chunk in args.chunks:
        trained_logits.CHUNK = chunk
        token_nll = trained_logits._token_nll()
        step = jax.jit(
            jax.value_and_grad(lambda h: token_nll(h, embeddings, targets, count, ()).sum())
        )
        jax.block_until_ready(step(hidden))
        times = []
        for _ in range(3):
            started = time.perf_counter()
            jax.block_until_ready(step(hidden))
            times.append(time.perf_counter() - started)
        best = min(times)
        flops = 4 * args.hidden * args.vocabulary * args.trained
        print(
            f"chunk {chunk:4d}: {best:.3f} s per call, {flops / best / 1e9:.1f} GFLOP/s", flush=True
        )


if __name__ == "__main__":
    main()
