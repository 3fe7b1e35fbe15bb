"""Held-out quality of LoRA recipes at equal budget: four small tasks, two budgets, two seeds.

    python benchmarks/quality.py [--model gemma3_270m_gguf] [--budgets 10 40] [--seeds 0 1]
        [--recipes defaults tutorial peft rslora loraplus] [--tasks person_json topic korean words]
        [--json OUT] [--rows ROWS.jsonl]

Each (task, recipe, budget, seed) is one `kft.train` run on the offline real model: batch 4,
`budget` optimizer steps, the task's training file (benchmarks/quality_tasks/, made by
scripts/make_quality_tasks.py; person_json is bundled), greedy answers to its held-out prompts
(never trained on) scored by the task's check, and the held-out loss. Recipes:

- defaults: kft's own defaults (whatever `kft train` uses when the config names nothing),
- tutorial: the Keras Gemma LoRA tutorial (rank 4, query+value, lr 5e-5 constant, decay 0.01),
- peft: transformers+PEFT defaults (`LoraConfig()`: r 8, alpha 8, PEFT's Gemma targets
  q_proj+v_proj; `Trainer`: lr 5e-5, linear decay, no warmup, no weight decay), run in kft,
  whose training matches transformers+PEFT's at equal settings (benchmarks/bench_job.py),
- rslora / loraplus: the defaults with `lora.rslora: true` / `lora.plus_ratio: 16`,
- any other name given as NAME=key:value,key:value (e.g. lr1e3=train.lr:1e-3).

Prints one row per task, recipe and budget (mean over seeds), then the mean held-out score per
recipe and budget, and last `quality: kft defaults X.X%, kft tutorial settings Y.Y%,
transformers+PEFT defaults Z.Z%` (mean held-out score at the smallest budget). `--rows` appends
each run's result as it finishes and skips runs already there, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS_DIR = HERE / "quality_tasks"

# (training source, held-out source, generated tokens, kft metric for the run's own summary)
TASKS = {
    "person_json": ("bundled:person_json", "bundled:person_json_heldout", 32, "json"),
    "topic": (str(TASKS_DIR / "topic.jsonl"), str(TASKS_DIR / "topic_heldout.jsonl"), 4, "exact"),
    "korean": (
        str(TASKS_DIR / "korean.jsonl"),
        str(TASKS_DIR / "korean_heldout.jsonl"),
        8,
        "exact",
    ),
    "words": (str(TASKS_DIR / "words.jsonl"), str(TASKS_DIR / "words_heldout.jsonl"), 24, "none"),
}
RECIPES = {
    "defaults": {},
    "tutorial": {
        "lora.rank": 4,
        "lora.alpha": None,
        "lora.targets": ["query", "value"],
        "train.lr": 5e-5,
        "train.schedule": "constant",
        "train.warmup_steps": 0,
        "train.weight_decay": 0.01,
    },
    "peft": {
        "lora.rank": 8,
        "lora.alpha": 8.0,
        "lora.targets": ["query", "value"],
        "train.lr": 5e-5,
        "train.schedule": "linear",
        "train.warmup_steps": 0,
        "train.weight_decay": 0.0,
    },
    "rslora": {"lora.rslora": True},
    "loraplus": {"lora.plus_ratio": 16.0},
}
LABELS = {
    "defaults": "kft defaults",
    "tutorial": "kft tutorial settings",
    "peft": "transformers+PEFT defaults",
}


def score(task: str, sample: dict) -> bool:
    from kft.evaluate import scoring

    answer = sample["after"]
    if task == "person_json":
        return scoring.correct("json", answer, sample["reference"])
    if task == "words":
        wanted = int(re.search(r"exactly (\d+)", sample["prompt"]).group(1))
        words = [w.strip() for w in answer.strip().split(",")]
        return len(words) == wanted and all(re.fullmatch(r"[a-z]+", w) for w in words)
    return answer.strip() == sample["reference"].strip()


def _recipe(spec: str) -> tuple[str, dict]:
    if "=" not in spec:
        return spec, RECIPES[spec]
    name, body = spec.split("=", 1)
    from kft.config import parse_set

    def number(value):
        try:  # YAML reads 1e-3 as text
            return float(value) if isinstance(value, str) else value
        except ValueError:
            return value

    pairs = (parse_set(item.replace(":", "=", 1)) for item in body.split(","))
    return name, {key: number(value) for key, value in pairs}


def run_one(
    model: str, task: str, overrides: dict, budget: int, seed: int, root: Path, seq_len: int = 80
) -> dict:
    import kft

    source, held, tokens, metric = TASKS[task]
    out = root / f"{task}-{budget}-{seed}-{time.time_ns()}"
    started = time.perf_counter()
    result = kft.train(
        None,
        **{
            "model.preset": model,
            "model.precision": "float32",
            "data.source": source,
            "data.eval_source": held,
            "data.template": "dolly",
            "data.seq_len": seq_len,
            "train.max_steps": budget,
            "train.batch_size": 4,
            "train.seed": seed,
            "train.log_every": max(1, budget // 2),
            "output.samples": 24,
            "output.measure_before": False,
            "output.sample_max_new_tokens": tokens,
            "output.metric": metric,
            "output.tensorboard": False,
            "output.dir": str(out),
            **overrides,
        },
    )
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return {
        "score": 100.0 * sum(score(task, s) for s in samples) / len(samples),
        "eval_loss": result.metrics.get("eval_loss_after"),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3_270m_gguf")
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--recipes", nargs="+", default=["defaults", "tutorial", "peft"])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seq-len", type=int, default=80)
    parser.add_argument("--json")
    parser.add_argument("--rows", help="append each run's row here; skip runs already in it")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print --rows as docs/quality.md's table, run nothing",
    )
    args = parser.parse_args(argv)
    if args.markdown:
        rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line]
        print(markdown(rows))
        return 0
    recipes = dict(_recipe(spec) for spec in args.recipes)
    done = []
    if args.rows and Path(args.rows).is_file():
        done = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line]
    root = Path(tempfile.mkdtemp(prefix="kft-quality-"))
    rows = []
    for budget in args.budgets:
        for task in args.tasks:
            for name, overrides in recipes.items():
                for seed in args.seeds:
                    key = dict(model=args.model, task=task, recipe=name, budget=budget, seed=seed)
                    previous = [r for r in done if all(r.get(k) == v for k, v in key.items())]
                    if previous:
                        rows.append(previous[0])
                        continue
                    row = {**key, "overrides": overrides}
                    row.update(
                        run_one(args.model, task, overrides, budget, seed, root, args.seq_len)
                    )
                    rows.append(row)
                    print("QUALITY-ROW " + json.dumps(row), flush=True)
                    if args.rows:
                        with open(args.rows, "a", encoding="utf-8") as f:
                            f.write(json.dumps(row) + "\n")
    report(rows, args.budgets, args.tasks, list(recipes))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def report(rows, budgets, tasks, recipes) -> None:
    def pick(**key):
        return [r for r in rows if all(r[k] == v for k, v in key.items())]

    print(f"\n{'task':<12} {'recipe':<14} {'steps':>5} {'held-out score':>15} {'eval loss':>10}")
    for budget in budgets:
        for task in tasks:
            for recipe in recipes:
                runs = pick(task=task, recipe=recipe, budget=budget)
                scores = ", ".join(f"{r['score']:.0f}" for r in runs)
                print(
                    f"{task:<12} {recipe:<14} {budget:>5} {_mean([r['score'] for r in runs]):>6.1f}% ({scores})"
                    f" {_mean([r['eval_loss'] for r in runs]):>10.4f}"
                )
    print()
    for budget in budgets:
        means = {r: _mean([x["score"] for x in pick(recipe=r, budget=budget)]) for r in recipes}
        print(
            f"mean held-out score at {budget} steps: "
            + ", ".join(f"{r} {m:.1f}%" for r, m in means.items())
        )
    small = min(budgets)
    means = {r: _mean([x["score"] for x in pick(recipe=r, budget=small)]) for r in recipes}
    print(
        "quality: "
        + ", ".join(f"{LABELS.get(r, r)} {means[r]:.1f}%" for r in recipes if r in LABELS)
    )


def markdown(rows) -> str:
    """One row per task and recipe: held-out score and eval loss at each budget (mean of seeds, the
    seeds' scores in brackets), then the mean score per recipe and budget."""
    budgets = sorted({r["budget"] for r in rows})
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]

    def cell(task, recipe, budget):
        runs = [r for r in rows if (r["task"], r["recipe"], r["budget"]) == (task, recipe, budget)]
        if not runs:
            return "-"
        scores = "/".join(f"{r['score']:.0f}" for r in runs)
        return f"{_mean([r['score'] for r in runs]):.1f}% ({scores}), {_mean([r['eval_loss'] for r in runs]):.3f}"

    head = (
        "| task | recipe | "
        + " | ".join(f"{b} steps: score (seeds), eval loss" for b in budgets)
        + " |"
    )
    lines = [head, "|---|---|" + "---|" * len(budgets)]
    for task in tasks:
        for recipe in recipes:
            lines.append(
                f"| {task} | {recipe} | "
                + " | ".join(cell(task, recipe, b) for b in budgets)
                + " |"
            )
    for recipe in recipes:
        means = []
        for b in budgets:
            runs = [r["score"] for r in rows if (r["recipe"], r["budget"]) == (recipe, b)]
            complete = len(runs) == len(tasks) * len({r["seed"] for r in rows})
            means.append(f"**{_mean(runs):.1f}%**" if runs and complete else "-")
        lines.append(f"| **mean** | {recipe} | " + " | ".join(means) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.exit(main())
