"""XLA compiles: counted from JAX's events, and served from $KFT_CACHE/xla on a second identical run."""

import json
import os
import subprocess
import sys

import pytest
from conftest import CONFIGS


def test_the_counter_sees_a_compile_and_then_the_in_memory_program():
    import jax
    import jax.numpy as jnp

    from kft.core.compiles import Compiles

    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)
    with Compiles() as first:
        f(jnp.ones((7, 13))).block_until_ready()
    with Compiles() as second:
        f(jnp.ones((7, 13))).block_until_ready()
    assert first.programs >= 1 and first.compiled >= 1 and second.programs == 0


@pytest.mark.slow
def test_a_second_identical_run_takes_its_big_programs_from_the_persistent_cache(tmp_path):
    env = {**os.environ, "KFT_CACHE": str(tmp_path / "cache")}

    def run(name: str) -> dict:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "kft.cli",
                "train",
                "--config",
                os.path.join(CONFIGS, "tiny.yaml"),
                "--max-steps",
                "4",
                "--output-dir",
                str(tmp_path / name),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        return json.loads((tmp_path / name / "summary.json").read_text())["xla"]

    first, second = run("first"), run("second")
    # Every program is written to the cache (kft sets jax's min compile time to 0): the second run compiles nothing.
    assert first["compiled"] >= 10 and second["compiled"] == 0
    assert second["xla_cache_hits"] >= 10 and second["compile_s"] < 0.2 * first["compile_s"]
