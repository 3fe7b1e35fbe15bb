"""Evidence that fine-tuning teaches the real Gemma 3 270M something: a table of base vs tuned.

    python benchmarks/prove_learning.py [--config configs/gemma3_270m_person_json.yaml] [--json out.json]

Runs, each in its own process as a user would: `kft prepare gemma3_270m_gguf`, `kft train` on the
config, then `kft eval RUN` (the adapter reloaded onto the prepared base in a fresh process).
Prints held-out loss and task metric for the base and the tuned model, times and peak memory.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def kft(*args: str) -> tuple[str, float]:
    """Run `kft ARGS` in a fresh process; return (stdout, seconds). Fails loudly."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kft.cli", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(
            f"kft {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout, seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "gemma3_270m_person_json.yaml"))
    parser.add_argument(
        "--run-dir", default=None, help="where the run goes (default: a temporary folder)"
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="kft-proof-")) / "run"

    total_started = time.perf_counter()
    _, prepare_s = kft("prepare", "gemma3_270m_gguf")
    out, train_s = kft("train", "--config", args.config, "--output-dir", str(run_dir))
    train_peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    summary = json.loads((run_dir / "summary.json").read_text())
    eval_out, reload_s = kft("eval", str(run_dir), "--out", str(run_dir / "eval_reloaded.json"))
    reloaded = json.loads(eval_out.strip().splitlines()[-1])
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    metric = summary["metric"]
    samples = [
        json.loads(line)
        for line in (run_dir / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    after = [s["after"] for s in samples]
    results = {
        "run_dir": str(run_dir),
        "metric": metric,
        "heldout_examples": summary["data"]["eval_examples"],
        "base_loss": summary["eval_loss_before"],
        "tuned_loss": summary["eval_loss_after"],
        "base_metric": summary[f"{metric}_before"],
        "tuned_metric": summary[f"{metric}_after"],
        "reloaded_metric": reloaded["score"],
        "reloaded_generations_identical": json.loads((run_dir / "eval_reloaded.json").read_text())[
            "generations"
        ]
        == after,
        "prepare_s": round(prepare_s, 1),
        "train_command_s": round(train_s, 1),
        "fit_s": summary["train_seconds"],
        "s_per_step": round(summary["train_seconds"] / summary["optimizer_steps"], 2),
        "steady_s_per_step": round(
            (steps[-1]["elapsed_s"] - steps[1]["elapsed_s"])
            / (steps[-1]["step"] - steps[1]["step"]),
            2,
        ),
        "train_peak_rss_gb": round(train_peak_gb, 2),
        "reload_eval_s": round(reload_s, 1),
        "total_minutes": round((time.perf_counter() - total_started) / 60, 2),
    }
    loss_drop = 100 * (1 - results["tuned_loss"] / results["base_loss"])
    print()
    print(f"| held-out ({results['heldout_examples']} prompts) | loss | {metric} match (%) |")
    print("|---|---|---|")
    print(f"| base Gemma 3 270M | {results['base_loss']:.4f} | {results['base_metric']:.1f} |")
    print(
        f"| tuned (LoRA) | {results['tuned_loss']:.4f} ({loss_drop:.0f}% lower) | {results['tuned_metric']:.1f} |"
    )
    print(f"| tuned, reloaded in a fresh process | | {results['reloaded_metric']:.1f} |")
    print()
    print(
        f"prepare {results['prepare_s']} s, train command {results['train_command_s']} s "
        f"(fit {results['fit_s']} s, {results['steady_s_per_step']} s/step steady), "
        f"peak RSS {results['train_peak_rss_gb']} GB, total {results['total_minutes']} min"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
