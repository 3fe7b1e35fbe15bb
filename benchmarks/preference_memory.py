"""Peak memory of a DPO run against SFT runs on the same model and data: DPO holds no second model.

    python benchmarks/preference_memory.py [--config configs/gemma3_270m_dpo.yaml] [--steps 5]

Each run is a fresh `kft train` process with the config's model, batch and sequence length and
`--steps` steps; what differs is the objective. The pairs' chosen answers are the SFT runs'
responses (dolly template: the same prompts). Peak resident memory is the process's own
(summary.json's host_peak_gb, Linux VmHWM). Compared:

- DPO at batch B pairs: 2B sequences per step, its reference computed in the before pass;
- SFT at batch 2B: the same sequences per step;
- SFT at batch B: the same `train.batch_size`.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def train(config: str, out: Path, *sets: str) -> dict:
    args = [sys.executable, "-m", "kft.cli", "train", "--config", config, "--output-dir", str(out)]
    for s in sets:
        args += ["--set", s]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"kft train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())


def chosen_as_sft(pairs_source: str, folder: Path) -> str:
    """The pairs file's prompts with their chosen answer as the response (an SFT dataset)."""
    from kft.data import dataset

    path = dataset.local_path(pairs_source)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    target = folder / "chosen.jsonl"
    with open(target, "w", encoding="utf-8") as f:
        for row in rows:
            record = {k: v for k, v in row.items() if k not in ("chosen", "rejected")}
            f.write(json.dumps({**record, "response": row["chosen"]}, ensure_ascii=False) + "\n")
    return str(target)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "gemma3_270m_dpo.yaml"))
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    from kft import config as config_lib

    c = config_lib.load(args.config)
    folder = Path(tempfile.mkdtemp(prefix="kft-pref-memory-"))
    batch = c.train.batch_size
    common = [f"train.max_steps={args.steps}", "output.samples=8", "output.tensorboard=false"]
    (folder / "eval").mkdir()
    sft = [
        "train.objective=sft",
        f"data.source={chosen_as_sft(c.data.source, folder)}",
        "data.eval_source="
        + (chosen_as_sft(c.data.eval_source, folder / "eval") if c.data.eval_source else ""),
    ]
    runs = {
        f"{c.train.objective} batch {batch} pairs": train(args.config, folder / "pref", *common),
        f"sft batch {2 * batch}": train(
            args.config, folder / "sft2", *common, *sft, f"train.batch_size={2 * batch}"
        ),
        f"sft batch {batch}": train(args.config, folder / "sft1", *common, *sft),
    }
    names = list(runs)
    results = {name: runs[name]["host_peak_gb"] for name in names}
    print(
        f"model {c.model.preset}, seq_len {c.data.seq_len}, {args.steps} steps; peak resident memory:"
    )
    for name in names:
        ratio = results[names[0]] / results[name]
        print(f"  {name:>24}: {results[name]:.3f} GB  ({names[0]} / this = {ratio:.3f})")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
