"""Slow: docs/performance.md's claims on how many bits LoRA's gradients need (benchmarks/gradient_bits.py,
the tiny models; about a minute on 2 CPU cores)."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO


def _cosines(family: str, variants: str) -> dict:
    run = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "benchmarks", "gradient_bits.py"),
            "--families",
            family,
            "--variants",
            variants,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.findall(rf"^{family} (\S+): .*LoRA-B gradient cosine ([0-9.]+)$", run.stdout, re.M)
    return {variant: float(value) for variant, value in found}


@pytest.mark.slow
@pytest.mark.parametrize("family, bits_needed", [("gemma3", 5), ("gemma4", 8)])
def test_the_issue_cosine_of_099_takes_more_than_four_bits(family, bits_needed):
    below = f"bits-{bits_needed - 1}"
    cos = _cosines(
        family, ",".join(dict.fromkeys(["int4", "bits-4", "bound-4", below, f"bits-{bits_needed}"]))
    )
    assert abs(cos["bits-4"] - cos["int4"]) < 2e-3, cos  # the rounding is kft's int4's
    assert cos["bound-4"] < 0.99, (
        cos
    )  # not even Shannon's bound for 4 bits on these uniform weights
    assert cos[below] < 0.99 <= cos[f"bits-{bits_needed}"], cos
