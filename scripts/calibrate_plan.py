"""`kft plan` against measured peak memory: Gemma 3 270M on CPU, two (batch, seq_len) x none/int8/int4.

    python scripts/calibrate_plan.py [--steps 3] [--settings 2x128,4x256] [--modes none,int8,int4] [--load-only]

Each run is `kft train` on the main job's config in its own process (3 steps, no samples, no
eval, every batch padded to data.seq_len so the shape is the plan's); its peak RSS is compared
with the plan's prediction for the same config on a CPU. Prints a Markdown table.
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "gemma3_270m_person_json.yaml"

MEASURE = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
           "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode)")


def overrides(mode: str, batch: int, seq: int, steps: int, out: str) -> dict:
    return {"model.quantize": mode, "train.batch_size": batch, "data.seq_len": seq, "train.max_steps": steps,
            "train.pad_to_multiple": 0, "output.samples": 0, "data.eval_source": "", "output.tensorboard": False,
            "output.dir": out, "train.log_every": 1, "train.memory_check": False}


def measure(mode: str, batch: int, seq: int, steps: int) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of one training run in a fresh process."""
    out = tempfile.mkdtemp(prefix="kft-calib-")
    sets = [f"--set={k}={v}" for k, v in overrides(mode, batch, seq, steps, out).items()]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "kft.cli", "train",
                           "--config", str(CONFIG), *sets], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    line = [x for x in done.stdout.splitlines() if x.startswith("PEAK")]
    if not line or not line[-1].endswith(" 0"):
        sys.exit(f"run {mode} {batch}x{seq} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return int(line[-1].split()[1]) * 1024 / 1e9, seconds


LOAD = ("import resource, sys, time; t = time.perf_counter(); from kft import model; "
        "model.load('gemma3_270m_gguf', 'float32', sys.argv[1]); "
        "print('LOAD', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - t)")


def measure_load(mode: str) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of loading (and quantizing) the base alone, in a fresh process."""
    done = subprocess.run([sys.executable, "-c", LOAD, mode], capture_output=True, text=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("LOAD")]
    if not line:
        sys.exit(f"load {mode} failed:\n{done.stderr[-3000:]}")
    _, kb, seconds = line[-1].split()
    return int(kb) * 1024 / 1e9, float(seconds)


def predict(mode: str, batch: int, seq: int, steps: int) -> float:
    from kft import config as config_lib, plan

    c = config_lib.load(str(CONFIG), overrides(mode, batch, seq, steps, "unused"))
    return plan.make(c, device_memory="1000GB", accelerator="cpu").peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--settings", default="2x128,4x256")
    parser.add_argument("--modes", default="none,int8,int4")
    parser.add_argument("--load-only", action="store_true", help="host peak RSS and time of loading the base")
    args = parser.parse_args(argv)
    if args.load_only:
        print("| model.quantize | host peak RSS at load (GB) | load + quantize (s) |\n|---|---|---|")
        for mode in args.modes.split(","):
            peak, seconds = measure_load(mode)
            print(f"| {mode} | {peak:.2f} | {seconds:.1f} |", flush=True)
        return
    rows = ["| batch x seq_len | model.quantize | predicted peak (GB) | measured peak RSS (GB) | predicted/measured | run (s) |",
            "|---|---|---|---|---|---|"]
    for setting in args.settings.split(","):
        batch, seq = (int(x) for x in setting.split("x"))
        for mode in args.modes.split(","):
            predicted = predict(mode, batch, seq, args.steps)
            measured, seconds = measure(mode, batch, seq, args.steps)
            rows.append(f"| {batch} x {seq} | {mode} | {predicted:.2f} | {measured:.2f} | {predicted / measured:.2f} | "
                        f"{seconds:.0f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
