"""Plain float32 matmul rates on this machine, XLA (jax) against PyTorch, at the shapes of a
Gemma 3 270M step: what the hardware gives before any model code runs.

    python benchmarks/bench_matmul.py

Shapes: a 576-position prefill/eval batch through the 640 -> 2048 and 2048 -> 640 feed-forward
projections, and the tied 262144 x 640 vocabulary projection (x @ E.T) for 32, 60, 128 and 576 rows.
Prints GFLOP/s per shape and side; compare with a whole step's rate (FLOPs / seconds) to see how
much of a step is outside the big matmuls.
"""

from __future__ import annotations

import time

import numpy as np

SHAPES = [(576, 640, 2048, "nn"), (576, 2048, 640, "nn")] + [
    (m, 640, 262144, "nt") for m in (32, 60, 128, 576)
]
REPEATS = 5


def _time(call) -> float:
    call()
    start = time.perf_counter()
    for _ in range(REPEATS):
        call()
    return (time.perf_counter() - start) / REPEATS


def main():
    import jax
    import jax.numpy as jnp
    import torch

    rng = np.random.default_rng(0)
    print("| m x k x n (layout) | XLA GFLOP/s | PyTorch GFLOP/s | XLA/PyTorch |")
    print("|---|---|---|---|")
    for m, k, n, layout in SHAPES:
        x = rng.random((m, k), dtype=np.float32)
        w = rng.random((k, n) if layout == "nn" else (n, k), dtype=np.float32)
        jx, jw = jnp.asarray(x), jnp.asarray(w)
        f = jax.jit((lambda a, b: a @ b) if layout == "nn" else (lambda a, b: a @ b.T))
        xla = _time(lambda: f(jx, jw).block_until_ready())
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        pt = _time((lambda: tx @ tw) if layout == "nn" else (lambda: tx @ tw.T))
        flops = 2 * m * k * n
        print(
            f"| {m} x {k} x {n} ({layout}) | {flops / xla / 1e9:.1f} | {flops / pt / 1e9:.1f} | {pt / xla:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
