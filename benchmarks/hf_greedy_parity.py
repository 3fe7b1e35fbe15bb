"""A run's `hf` (or `gguf`) export answers the held-out prompts as kft did: transformers' (or
llama.cpp's) greedy answers from the exported checkpoint against the `after` answers in the run's
samples.jsonl, token for token, and how many of them parse to the reference JSON.

    python benchmarks/hf_greedy_parity.py --run RUN_DIR [--format gguf --quant q8_0] [--json out.json]
    python benchmarks/hf_greedy_parity.py --run RUN_DIR --format gguf-lora --runtime llamacpp

`--runtime llamacpp` (llama-cpp-python, the kft[llamacpp] extra) runs the GGUF in llama.cpp itself,
with an f32 KV cache; `--format gguf-lora` is the base model's GGUF with the run's adapter GGUF.

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
    parser.add_argument("--format", default="hf", choices=["hf", "gguf", "gguf-lora"])
    parser.add_argument("--runtime", default="transformers", choices=["transformers", "llamacpp"])
    parser.add_argument("--quant", default="f32", choices=["f32", "f16", "bf16", "q8_0", "q4_0"])
    args = parser.parse_args(argv)
    import kft
    from kft.data import encoding
    from kft.export import export
    from kft.generation.sampling import stop_token_ids

    run = Path(args.run)
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    task = kft.load(str(run))
    tokenizer = task.preprocessor.tokenizer
    if args.runtime == "transformers" and args.format == "gguf-lora":
        parser.error("--format gguf-lora runs in llama.cpp: add --runtime llamacpp")
    if args.runtime == "llamacpp" and args.format == "hf":
        parser.error("llama.cpp runs GGUF: --format gguf or gguf-lora")
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    longest = config["output"]["sample_max_new_tokens"]  # kft's answers stop there too
    stops = set(stop_token_ids(tokenizer))
    started = time.perf_counter()
    out = export(
        str(run),
        args.format,
        str(run / f"{args.format}-parity-{args.quant}"),
        quant=args.quant,
        overwrite=True,
        with_base=args.format == "gguf-lora",
    )
    print(f"{args.format} {args.quant} export: {time.perf_counter() - started:.0f} s")
    if args.runtime == "llamacpp":
        generate = _llama_cpp(out, args.format, stops, longest)
    else:
        generate = _transformers(out, args.format, stops, longest, tokenizer.pad_token_id)
    same, parsed, started = 0, 0, time.perf_counter()
    for sample in samples:
        ids = encoding.with_start(tokenizer, [sample["prompt"]])[0]
        generated = generate(ids)
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
    where = f"{args.format} {args.quant} export in {args.runtime}"
    print(f"{where}: greedy answers identical to kft's: {same}/{len(samples)}")
    print(f"{where}: answers' JSON match: {result['json_match']:.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(result))
    return 0 if same == len(samples) else 1


def _transformers(out: Path, fmt: str, stops: set, longest: int, pad: int):
    import torch
    import transformers

    extra = {"gguf_file": "model.gguf"} if fmt == "gguf" else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(out), dtype=torch.float32, **extra
    ).eval()

    def generate(ids: list[int]) -> list[int]:
        with torch.no_grad():
            return model.generate(
                torch.tensor([ids], dtype=torch.long),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                do_sample=False,
                max_new_tokens=longest,
                eos_token_id=sorted(stops),
                pad_token_id=pad,
            )[0, len(ids) :].tolist()

    return generate


def _llama_cpp(out: Path, fmt: str, stops: set, longest: int):
    import llama_cpp

    files = (
        {"model_path": str(out / "base.gguf"), "lora_path": str(out / "adapter.gguf")}
        if fmt == "gguf-lora"
        else {"model_path": str(out / "model.gguf")}
    )
    # type_k/type_v 0: an f32 KV cache, not llama.cpp's default f16
    model = llama_cpp.Llama(**files, n_ctx=1024, type_k=0, type_v=0, seed=0, verbose=False)

    def generate(ids: list[int]) -> list[int]:
        model.reset()
        generated = []
        for token in model.generate(ids, temp=0.0, reset=True):
            generated.append(int(token))
            if token in stops or len(generated) == longest:
                break
        return generated

    return generate


if __name__ == "__main__":
    sys.exit(main())
