"""Warm greedy generation with and without the screened argmax (kft.generation.screened_argmax), one process.

    python benchmarks/bench_screened_argmax.py            # Gemma 3 270M, the job's 60 held-out prompts, ~2 min

The prompts and token budget of benchmarks/bench_job.py (60 held-out person_json prompts, 16 new
tokens). Rounds alternate the two ways (each rebuilds the generate program, then times warm
calls of `sampling.generate_ids`); the last line:
`screened argmax: warm call X.XX s vs Y.YY s full (Z.ZZx), identical ids N/60`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gemma3_270m_gguf")
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=2, help="timed warm calls per round and way")
    args = parser.parse_args()

    from kft.core import backend

    backend.setup()
    from kft.config import DataConfig
    from kft.data import templates
    from kft.generation import samplers, sampling
    from kft.quant import frozen_base

    template = templates.from_config(DataConfig(template="dolly"))
    path = REPO / "src" / "kft" / "data" / "bundled" / "person_json_heldout.jsonl"
    records = [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    prompts = [
        templates.split_for_generation(template.render(r))[0] for r in records[: args.prompts]
    ]
    task = frozen_base.load(args.preset, "float32")[0]
    task.compile(sampler=samplers.make_sampler("greedy"))
    tokenizer = task.preprocessor.tokenizer

    times, ids = {"screened": [], "full": []}, {}
    for round_ in range(args.rounds):
        for way, switch in (("screened", "1"), ("full", "0")):
            os.environ["KFT_SCREENED_ARGMAX"] = switch
            task.generate_function = None  # the program is rebuilt: with or without the screening
            ids[way] = sampling.generate_ids(task, tokenizer, prompts, args.new_tokens)
            for _ in range(args.calls):
                started = time.perf_counter()
                sampling.generate_ids(task, tokenizer, prompts, args.new_tokens)
                times[way].append(time.perf_counter() - started)
            print(
                f"round {round_ + 1}, {way}: "
                + ", ".join(f"{t:.2f}" for t in times[way][-args.calls :])
                + " s",
                flush=True,
            )
    screened, full = statistics.median(times["screened"]), statistics.median(times["full"])
    same = sum(a == b for a, b in zip(ids["screened"], ids["full"]))
    print(
        f"screened argmax: warm call {screened:.2f} s vs {full:.2f} s full ({full / screened:.2f}x), "
        f"identical ids {same}/{len(prompts)}"
    )


if __name__ == "__main__":
    main()
