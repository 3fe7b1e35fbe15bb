"""A whole small fine-tuning job, timed end to end: kft vs transformers + PEFT.

    python benchmarks/bench_job.py                      # Gemma 3 270M (the offline real model), ~5 min on 2 CPU cores
    python benchmarks/bench_job.py --steps 2 --prompts 8  # a quick look

The job a new user runs: Gemma 3 270M, the bundled person_json task (320 training records, the
held-out person_json_heldout for evaluation), LoRA r4 on q/v, 10 optimizer steps of batch 8,
and before and after training the held-out loss and greedy answers (max 16 new tokens) to 60
held-out prompts, scored as JSON. Each side runs in its own process, started the way a user
starts it: kft as `kft train --config JOB.yaml`, transformers+PEFT as a plain script (a
training loop, `generate` on the left-padded batch of all prompts). Phases are timed from the
process start: start-up + load, before-measure, train, after-measure (its answers part: kft
computes the answers' examples' held-out loss in the same pass, kft.evaluate.answers_and_loss). Then
generation alone, warm, on the base model, each side in its own process (after one untimed call,
the median of three identical calls). The last line:
`kft/hf: job wall X.XXx, after-measure Y.YYx, generate Z.ZZx, train tokens/s W.WWx`: job wall is
kft's wall time over transformers' (below 1 = kft faster); the others are speeds (above 1 = kft
faster): after-measure and generate are transformers' times over kft's, train tokens/s counts
real tokens over the steps after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRESET = "gemma3_270m_gguf"


def job_config(args, run_dir: Path) -> dict:
    return {
        "model": {"preset": args.keras_preset, "precision": "float32"},
        "lora": {"rank": 4, "alpha": 4, "targets": ["query", "value"]},
        "data": {
            "source": "bundled:person_json",
            "eval_source": "bundled:person_json_heldout",
            "template": "dolly",
            "seq_len": 80,
        },
        "train": {
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "log_every": 1,
            "weight_decay": 0.0,
        },
        "output": {
            "dir": str(run_dir),
            "samples": args.prompts,
            "sample_max_new_tokens": args.new_tokens,
            "metric": "json",
            "tensorboard": False,
        },
    }


def run_kft(args, tmp: Path) -> dict:
    """`kft train` in a fresh process; phases from the times its progress lines arrive."""
    import yaml

    run_dir = tmp / "kft-run"
    config = tmp / "job.yaml"
    config.write_text(yaml.safe_dump(job_config(args, run_dir)), encoding="utf-8")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kft.cli", "train", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    marks, lines = {}, []
    for line in proc.stdout:
        now = time.perf_counter() - started
        lines.append(line)
        if " parameters, " in line and "load" not in marks:
            # printed after loading, data and LoRA, right before the first measurement
            marks["load"] = now
        elif line.startswith("kft: training ") and "steps" in line and "before" not in marks:
            marks["before"] = now
        elif line.startswith(f"step {args.steps}/{args.steps}") and "train" not in marks:
            marks["train"] = now
        elif line.startswith(f"kft: measuring after: {args.prompts}/{args.prompts} prompts"):
            marks["after_generate"] = now
        elif line.startswith("kft: training loss") and "after" not in marks:
            marks["after"] = now
    if proc.wait() != 0:
        sys.exit("kft train failed:\n" + "".join(lines[-40:]))
    marks["end"] = time.perf_counter() - started
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # Real tokens of the steps after the first, from each step's tokens/s and duration.
    steady = rows[1:]
    tokens = sum(
        r["tokens_per_s"] * (r["elapsed_s"] - p["elapsed_s"]) for p, r in zip(rows, steady)
    )
    seconds = rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]
    return {
        "load_s": marks["load"],
        "before_s": marks["before"] - marks["load"],
        "train_s": marks["train"] - marks["before"],
        "after_s": marks["after"] - marks["train"],
        "generate_s": marks["after_generate"] - marks["train"],
        "wall_s": marks["end"],
        "train_tokens_per_s": tokens / seconds,
        "compiles": summary.get("xla"),
        "score_before": summary.get("json_before"),
        "score_after": summary.get("json_after"),
        "loss_before": summary.get("eval_loss_before"),
        "loss_after": summary.get("eval_loss_after"),
    }


def run_hf(args) -> dict:
    """transformers + PEFT as a user writes it: load, measure, a training loop, measure."""
    started = time.perf_counter()
    import numpy as np
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from kft.config import DataConfig
    from kft.data import templates
    from kft.evaluate import scoring

    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.hf_folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.hf_folder, dtype=torch.float32, attn_implementation="sdpa"
    )
    model = get_peft_model(
        model,
        LoraConfig(
            r=4,
            lora_alpha=4,
            target_modules=["q_proj", "v_proj"],
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        ),
    )
    template = templates.from_config(DataConfig(template="dolly"))

    def read(name: str) -> list[dict]:
        path = REPO / "src" / "kft" / "data" / "bundled" / f"{name}.jsonl"
        return [
            json.loads(line)
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]

    def encode(record: dict) -> tuple[list[int], list[int]]:
        ids, labels = [tokenizer.bos_token_id], [-100]
        for text, trainable in template.render(record):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if trainable else [-100] * len(piece)
        ids, labels = ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]
        return ids[: args.seq_len + 1], labels[: args.seq_len + 1]

    train, held = [encode(r) for r in read("person_json")], read("person_json_heldout")
    held_encoded = [encode(r) for r in held]
    prompts, references = [], []
    for record in held[: args.prompts]:
        prompt, reference = templates.split_for_generation(template.render(record))
        prompts.append(prompt)
        references.append(reference)
    tokenizer.padding_side = "left"
    marks = {"load": time.perf_counter() - started}

    def pad(rows, value):
        width = max(len(r) for r in rows)
        return torch.tensor([r + [value] * (width - len(r)) for r in rows])

    def measure() -> dict:
        model.eval()
        with torch.no_grad():
            t = time.perf_counter()
            batch = tokenizer(prompts, return_tensors="pt", padding=True)
            out = model.generate(**batch, max_new_tokens=args.new_tokens, do_sample=False)
            answers = tokenizer.batch_decode(
                out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
            )
            generate_s = time.perf_counter() - t
            total = count = 0.0
            for i in range(0, len(held_encoded), args.batch_size):
                rows = held_encoded[i : i + args.batch_size]
                ids, labels = (
                    pad([r[0] for r in rows], tokenizer.pad_token_id),
                    pad([r[1] for r in rows], -100),
                )
                logits = model(
                    input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long()
                ).logits
                losses = torch.nn.functional.cross_entropy(
                    logits[:, :-1].flatten(0, 1),
                    labels[:, 1:].flatten(),
                    ignore_index=-100,
                    reduction="sum",
                )
                total += float(losses)
                count += float((labels[:, 1:] != -100).sum())
        return {
            "generate_s": generate_s,
            "loss": total / count,
            "score": scoring.score("json", answers, references),
        }

    before = measure()
    marks["before"] = time.perf_counter() - started
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0
    )
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train))
    step_times, step_tokens = [], []
    for step in range(args.steps):
        t = time.perf_counter()
        rows = [train[j] for j in order[step * args.batch_size : (step + 1) * args.batch_size]]
        ids, labels = (
            pad([r[0] for r in rows], tokenizer.pad_token_id),
            pad([r[1] for r in rows], -100),
        )
        mask = torch.tensor([[1] * len(r[0]) + [0] * (ids.shape[1] - len(r[0])) for r in rows])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step_times.append(time.perf_counter() - t)
        step_tokens.append(int(mask.sum()) - len(rows))  # real input tokens, as kft counts them
    marks["train"] = time.perf_counter() - started
    after = measure()
    marks["after"] = time.perf_counter() - started
    return {
        "load_s": marks["load"],
        "before_s": marks["before"] - marks["load"],
        "train_s": marks["train"] - marks["before"],
        "after_s": marks["after"] - marks["train"],
        "generate_s": after["generate_s"],
        "train_tokens_per_s": sum(step_tokens[1:]) / sum(step_times[1:]),
        "score_before": before["score"],
        "score_after": after["score"],
        "loss_before": before["loss"],
        "loss_after": after["loss"],
    }


def generate_only(args) -> dict:
    """Warm greedy generation alone (the issue's "generate, warm, batch of 60"): the job's held-out
    prompts, base model, after one untimed call the median of `--generate-repeats` identical calls.
    In kft's job the after-training answers share one pass with their examples' loss, so the job's
    phases cannot show it."""
    import time

    from kft.config import DataConfig
    from kft.data import templates

    template = templates.from_config(DataConfig(template="dolly"))
    path = REPO / "src" / "kft" / "data" / "bundled" / "person_json_heldout.jsonl"
    records = [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    prompts = [
        templates.split_for_generation(template.render(r))[0] for r in records[: args.prompts]
    ]
    if args.side == "kft-generate":
        from kft.core import backend

        backend.setup()
        from kft.evaluate import evaluation
        from kft.generation import samplers, sampling
        from kft.quant import frozen_base

        task = frozen_base.load(args.keras_preset, "float32")[0]
        task.compile(sampler=samplers.make_sampler("greedy"))

        def run():
            return sampling.generate(
                task,
                task.preprocessor.tokenizer,
                prompts,
                args.new_tokens,
                batch_size=evaluation.GENERATE_BATCH,
            )
    else:
        import torch
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(args.hf_folder, padding_side="left")
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            args.hf_folder, dtype=torch.float32, attn_implementation="sdpa"
        ).eval()

        def run():
            with torch.no_grad():
                batch = tokenizer(prompts, return_tensors="pt", padding=True)
                out = hf.generate(**batch, max_new_tokens=args.new_tokens, do_sample=False)
                return tokenizer.batch_decode(
                    out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
                )

    run()
    times = []
    for _ in range(args.generate_repeats):
        started = time.perf_counter()
        answers = run()
        times.append(time.perf_counter() - started)
    return {"generate_s": statistics.median(times), "generate_all_s": times, "answers": answers}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=80)
    parser.add_argument(
        "--generate-repeats",
        type=int,
        default=3,
        help="timed warm calls of generation alone (median)",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--side", choices=["hf", "kft-generate", "hf-generate"], help=argparse.SUPPRESS
    )
    parser.add_argument("--keras-preset", help=argparse.SUPPRESS)
    parser.add_argument("--hf-folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "hf":
        print("RESULT " + json.dumps(run_hf(args)))
        return
    if args.side:
        print("RESULT " + json.dumps(generate_only(args)))
        return
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "kft.cli", "prepare", PRESET],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        sys.exit(f"kft prepare {PRESET} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    args.keras_preset = done.stdout.strip().splitlines()[-1]
    from kft.models.gguf_preset import hf_folder

    args.hf_folder = str(hf_folder(Path(args.keras_preset)))
    results = {}
    with tempfile.TemporaryDirectory(prefix="kft-bench-job-") as tmp:
        results["kft"] = run_kft(args, Path(tmp))
        started = time.perf_counter()
        command = [
            sys.executable,
            __file__,
            "--side",
            "hf",
            "--keras-preset",
            args.keras_preset,
            "--hf-folder",
            args.hf_folder,
            *[
                f"--{k.replace('_', '-')}={v}"
                for k, v in vars(args).items()
                if k in ("steps", "batch_size", "prompts", "new_tokens", "seq_len", "lr")
            ],
        ]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            sys.exit(f"hf side failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        results["hf"] = {
            **json.loads(line[len("RESULT ") :]),
            "wall_s": time.perf_counter() - started,
        }
    for side in ("kft-generate", "hf-generate"):
        command = [
            sys.executable,
            __file__,
            "--side",
            side,
            "--keras-preset",
            args.keras_preset,
            "--hf-folder",
            args.hf_folder,
            f"--prompts={args.prompts}",
            f"--new-tokens={args.new_tokens}",
            f"--generate-repeats={args.generate_repeats}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            sys.exit(f"{side} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        results[side] = json.loads(line[len("RESULT ") :])
    k, h = results["kft"], results["hf"]
    print(
        f"Gemma 3 270M, person_json ({args.prompts} held-out prompts, {args.new_tokens} new tokens), LoRA r4 q/v, "
        f"{args.steps} steps of batch {args.batch_size}, fp32"
    )
    print(
        "| | start-up + load (s) | before-measure (s) | train (s) | after-measure (s) | of it answers (s) | "
        "job wall (s) | train tokens/s | held-out loss | JSON match (%) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in (("kft", k), ("transformers+PEFT", h)):
        print(
            f"| {name} | {r['load_s']:.1f} | {r['before_s']:.1f} | {r['train_s']:.1f} | {r['after_s']:.1f} | "
            f"{r['generate_s']:.1f} | {r['wall_s']:.1f} | {r['train_tokens_per_s']:.1f} | "
            f"{r['loss_before']:.3f} -> {r['loss_after']:.3f} | {r['score_before']:.1f} -> {r['score_after']:.1f} |"
        )
    if k.get("compiles"):
        print(f"kft XLA compiles: {k['compiles']}")
    # kft's "answers" also computes those 60 examples' held-out loss (one pass, kft.evaluate.answers_and_loss).
    kg, hg = results["kft-generate"], results["hf-generate"]
    same = sum(a == b for a, b in zip(kg["answers"], hg["answers"]))
    print(
        f"generate alone (warm, {args.prompts} prompts, base model): kft {kg['generate_s']:.1f} s, "
        f"transformers {hg['generate_s']:.1f} s (medians of {args.generate_repeats}: kft "
        f"{', '.join(f'{t:.1f}' for t in kg['generate_all_s'])}, transformers "
        f"{', '.join(f'{t:.1f}' for t in hg['generate_all_s'])}); identical answers {same}/{len(hg['answers'])}"
    )
    print(
        f"kft/hf: job wall {k['wall_s'] / h['wall_s']:.2f}x, after-measure {h['after_s'] / k['after_s']:.2f}x, "
        f"generate {hg['generate_s'] / kg['generate_s']:.2f}x, "
        f"train tokens/s {k['train_tokens_per_s'] / h['train_tokens_per_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
