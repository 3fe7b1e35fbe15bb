"""`kft plan` against measured peak memory: Gemma 3 270M on CPU, two (batch, seq_len) x none/int8/int4.

    python benchmarks/calibrate_plan.py [--steps 3] [--settings 2x128,4x256] [--modes none,int8,int4] [--load-only]
    python benchmarks/calibrate_plan.py --settings 4x80 --modes none,int8 --new-tokens 32,256 --steps 2

Each run is `kft train` on the main job's config in its own process (3 steps, no samples, no
eval, every batch padded to data.seq_len so the shape is the plan's); its peak RSS is compared
with the plan's prediction for the same config on a CPU. Prints a Markdown table. With
`--new-tokens`, the runs keep the main job's samples and held-out split and measure before and
after training with that many new tokens per sample (the plan's measuring lines).
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "gemma3_270m_person_json.yaml"

MEASURE = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode)"
)


def overrides(mode: str, batch: int, seq: int, steps: int, out: str, new_tokens: int = 0) -> dict:
    measuring = (
        {"output.sample_max_new_tokens": new_tokens}
        if new_tokens
        else {"output.samples": 0, "data.eval_source": ""}
    )
    return {
        "model.quantize": mode,
        "train.batch_size": batch,
        "data.seq_len": seq,
        "train.max_steps": steps,
        "train.pad_to_multiple": 0,
        "output.tensorboard": False,
        **measuring,
        "output.dir": out,
        "train.log_every": 1,
        "train.memory_check": False,
    }


def measure(
    mode: str, batch: int, seq: int, steps: int, new_tokens: int = 0
) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of one training run in a fresh process."""
    out = tempfile.mkdtemp(prefix="kft-calib-")
    sets = [
        f"--set={k}={v}" for k, v in overrides(mode, batch, seq, steps, out, new_tokens).items()
    ]
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURE,
            sys.executable,
            "-m",
            "kft.cli",
            "train",
            "--config",
            str(CONFIG),
            *sets,
        ],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    line = [x for x in done.stdout.splitlines() if x.startswith("PEAK")]
    if not line or not line[-1].endswith(" 0"):
        sys.exit(f"run {mode} {batch}x{seq} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return int(line[-1].split()[1]) * 1024 / 1e9, seconds


LOAD = (
    "import resource, sys, time; t = time.perf_counter(); from kft.quant import frozen_base; "
    "frozen_base.load('gemma3_270m_gguf', 'float32', sys.argv[1]); "
    "print('LOAD', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - t)"
)


def measure_load(mode: str) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of loading (and quantizing) the base alone, in a fresh process."""
    done = subprocess.run([sys.executable, "-c", LOAD, mode], capture_output=True, text=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("LOAD")]
    if not line:
        sys.exit(f"load {mode} failed:\n{done.stderr[-3000:]}")
    _, kb, seconds = line[-1].split()
    return int(kb) * 1024 / 1e9, float(seconds)


def predict(mode: str, batch: int, seq: int, steps: int, new_tokens: int = 0) -> float:
    from kft import config as config_lib
    from kft import plan

    c = config_lib.load(str(CONFIG), overrides(mode, batch, seq, steps, "unused", new_tokens))
    return plan.make(c, device_memory="1000GB", accelerator="cpu").peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--settings", default="2x128,4x256")
    parser.add_argument("--modes", default="none,int8,int4")
    parser.add_argument(
        "--load-only", action="store_true", help="host peak RSS and time of loading the base"
    )
    parser.add_argument(
        "--new-tokens",
        default="0",
        help="comma-separated new tokens per sample: measure before/after training too (0: no samples)",
    )
    args = parser.parse_args(argv)
    if args.load_only:
        print(
            "| model.quantize | host peak RSS at load (GB) | load + quantize (s) |\n|---|---|---|"
        )
        for mode in args.modes.split(","):
            peak, seconds = measure_load(mode)
            print(f"| {mode} | {peak:.2f} | {seconds:.1f} |", flush=True)
        return
    rows = [
        "| batch x seq_len | model.quantize | new tokens per sample | predicted peak (GB) | measured peak RSS (GB) "
        "| predicted/measured | run (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting in args.settings.split(","):
        batch, seq = (int(x) for x in setting.split("x"))
        for mode in args.modes.split(","):
            for new_tokens in (int(n) for n in args.new_tokens.split(",")):
                predicted = predict(mode, batch, seq, args.steps, new_tokens)
                measured, seconds = measure(mode, batch, seq, args.steps, new_tokens)
                rows.append(
                    f"| {batch} x {seq} | {mode} | {new_tokens or 'no samples'} | {predicted:.2f} | "
                    f"{measured:.2f} | {predicted / measured:.2f} | {seconds:.0f} |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
