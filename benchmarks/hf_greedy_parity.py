"""A run's `hf` (or `gguf`) export answers the held-out prompts as kft did: transformers' greedy
answers from the exported checkpoint against the `after` answers in the run's samples.jsonl, token
for token, and (with --metric json) how many of them parse to the reference JSON.

    python benchmarks/hf_greedy_parity.py --run RUN_DIR [--format gguf --quant q8_0] [--json out.json]

Prints how many answers are identical; the prompts are encoded as kft encodes them (start token as
the model's preprocessor adds it) and decoding stops at the tokenizer's stop tokens."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--json")
    parser.add_argument("--format", default="hf", choices=["hf", "gguf"])
    parser.add_argument("--quant", default="f32", choices=["f32", "f16", "q8_0"])
    args = parser.parse_args(argv)
    import kft
    from kft.data import encoding
    from kft.export import export
    from kft.generation.sampling import stop_token_ids

    run = Path(args.run)
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    task = kft.load(str(run))
    tokenizer = task.preprocessor.tokenizer
    import torch
    import transformers

    started = time.perf_counter()
    if args.format == "gguf":
        out = export(
            str(run),
            "gguf",
            str(run / f"gguf-parity-{args.quant}"),
            quant=args.quant,
            overwrite=True,
        )
        print(f"gguf {args.quant} export: {time.perf_counter() - started:.0f} s")
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(out), gguf_file="model.gguf", dtype=torch.float32
        ).eval()
    else:
        out = export(str(run), "hf", str(run / "hf-parity"), overwrite=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(out), dtype=torch.float32
        ).eval()
    stops = set(stop_token_ids(tokenizer))
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    longest = config["output"]["sample_max_new_tokens"]  # kft's answers stop there too
    same, parsed, started = 0, 0, time.perf_counter()
    for sample in samples:
        ids = encoding.with_start(tokenizer, [sample["prompt"]])[0]
        with torch.no_grad():
            generated = model.generate(
                torch.tensor([ids], dtype=torch.long),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                do_sample=False,
                max_new_tokens=longest,
                eos_token_id=sorted(stops),
                pad_token_id=tokenizer.pad_token_id,
            )[0, len(ids) :].tolist()
        new = [t for t in generated if t not in stops][: len(generated)]
        if any(t in stops for t in generated):
            new = generated[: min(i for i, t in enumerate(generated) if t in stops)]
        answer = tokenizer.detokenize(new)
        answer = answer if isinstance(answer, str) else answer.numpy().decode("utf-8")
        same += answer == sample["after"]
        try:
            parsed += json.loads(answer) == json.loads(sample["reference"])
        except ValueError:
            pass
    result = {
        "prompts": len(samples),
        "identical": same,
        "json_match": 100.0 * parsed / len(samples),
        "seconds": time.perf_counter() - started,
    }
    print(f"{args.format} export greedy answers identical to kft's: {same}/{len(samples)}")
    print(f"{args.format} export answers' JSON match: {result['json_match']:.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(result))
    return 0 if same == len(samples) else 1


if __name__ == "__main__":
    sys.exit(main())
