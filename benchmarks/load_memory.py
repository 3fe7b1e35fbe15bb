"""Host peak memory and time of loading a quantized base: quantized as it loads, or read whole first.

    python benchmarks/load_memory.py                      # the real Gemma 3 270M (Hugging Face folder)
    python benchmarks/load_memory.py --wide               # a made-up Gemma 3 whose decoder is most of it
    python benchmarks/load_memory.py --modes int8 --json OUT
    python benchmarks/load_memory.py --modes gptq         # int4 rounded by GPTQ: parked on disk vs read whole

Each load runs in a fresh process (`frozen_base.load`, float32, on this machine's CPU): "as it loads" is
kft's path (kft.quant.quantize_on_load: each decoder layer quantized once its float kernel is filled);
"read whole" loads the float base and then quantizes it (what kft did before). int4 uses the nearest
codes; `gptq` is int4 rounded by GPTQ, whose float kernels kft parks on disk as they load
(kft.quant.parking), calibrated on 32 rows of 128 random token ids. Both must give the same weights, byte
for byte (a hash of all).
Each is loaded twice and measured the second time, with its XLA programs cached.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import hashlib, json, sys, time
from kft.core import backend
from kft.models import model
from kft.quant import frozen_base
from kft.quant import quantize
backend.setup()
preset, mode, how = sys.argv[1:4]
options = {"int4_rounding": "least-squares"} if mode == "int4" else {}
if mode == "gptq":
    import numpy as np
    tokens = np.random.default_rng(0).integers(4, 1000, size=(32, 128)).astype("int32")
    calibration = {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}
    mode, options = "int4", {"int4_rounding": "gptq", "calibration": calibration}
started = time.perf_counter()
if how == "stream":
    task, _, _ = frozen_base.load(preset, "float32", mode, **options)
else:
    task, _, _ = frozen_base.load(preset, "float32")
    quantize.apply(task, mode, **options)
seconds = time.perf_counter() - started
peak = backend.host_peak_gb()  # before hashing makes copies
digest = hashlib.sha256()
for v in sorted(task.backbone.weights, key=lambda v: v.path):
    digest.update(v.path.encode()); digest.update(bytes(memoryview(__import__("numpy").asarray(v.value))))
print("RESULT " + json.dumps({"seconds": seconds, "peak_gb": peak, "weights": digest.hexdigest()}))
"""


def load(preset: str, mode: str, how: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, preset, mode, how], capture_output=True, text=True
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(lines[-1][len("RESULT ") :])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gemma3_270m_gguf")
    parser.add_argument(
        "--wide",
        action="store_true",
        help="a made-up Gemma 3: 8 layers, hidden 1024, vocabulary 256",
    )
    parser.add_argument("--modes", default="int8,int4")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    preset = args.preset
    if args.wide:
        from kft.models.tiny import build_tiny_preset

        preset = str(
            build_tiny_preset(
                "gemma3",
                Path(tempfile.mkdtemp(prefix="kft-wide-")) / "gemma3",
                num_layers=8,
                hidden_dim=1024,
                intermediate_dim=4096,
                num_query_heads=8,
                num_key_value_heads=4,
                head_dim=128,
            )
        )
    print(f"{preset}: host peak RSS and time of loading, float32, one process each")
    print(
        "| model.quantize | as it loads: peak (GB) / s | read whole: peak (GB) / s | same weights |"
    )
    print("|---|---|---|---|")
    results = {}
    for mode in args.modes.split(","):
        load(
            preset, mode, "stream"
        )  # compiles the quantizing programs into kft's XLA cache, so that
        load(preset, mode, "whole")  # neither measured load has XLA compiling inside its peak
        stream, whole = load(preset, mode, "stream"), load(preset, mode, "whole")
        results[mode] = {
            "as_it_loads": stream,
            "read_whole": whole,
            "same_weights": stream["weights"] == whole["weights"],
        }
        print(
            f"| {mode} | {stream['peak_gb']:.2f} / {stream['seconds']:.1f} | {whole['peak_gb']:.2f} / "
            f"{whole['seconds']:.1f} | {results[mode]['same_weights']} |",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
