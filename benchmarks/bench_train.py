"""Side-by-side LoRA training benchmark: kft (Keras + JAX) vs transformers + PEFT (Trainer).

    python benchmarks/bench_train.py --model gemma3_270m_gguf      # the offline real model (~6 min on 2 CPU cores)
    python benchmarks/bench_train.py --model tiny                  # a one-minute version
    python benchmarks/bench_train.py --packing 1                   # kft with data.packing (transformers unchanged)

Both sides train the same model (same weights: the HF form of the prepared preset), LoRA r=4 on
q/v, float32, batch 4, on the same synthetic examples whose lengths follow Dolly-15k's
(log-normal, median ~110 tokens, capped at --seq-len) with loss on the response half. Each side
runs in its own process: kft with its own data path and defaults (length-grouped batches cut to
a multiple of 64, loss only at trained positions), transformers with its standard Trainer and
dynamic padding. After warm-up steps, it reports real
(non-pad) tokens/s, s/step, peak RSS, first-step (compile) time; then greedy generation speed.
The last line is machine-readable: `kft/hf: tokens/s 1.62x, peak memory 0.55x`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

DOLLY_MEDIAN, DOLLY_SIGMA = (
    110,
    0.8,
)  # log-normal fit of Dolly-15k's instruction+response token lengths


def examples(n: int, seq_len: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """(token ids starting with BOS, prompt length) pairs with Dolly-like lengths."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(
        rng.lognormal(np.log(DOLLY_MEDIAN), DOLLY_SIGMA, n).astype(int), 16, seq_len + 1
    )
    out = []
    for length in lengths:
        ids = [2, *rng.integers(10, vocab, length - 1).tolist()]
        out.append((ids, max(1, length // 2)))
    return out


def preset_paths(model: str) -> tuple[str, str]:
    """(Keras preset, HF folder) for the benchmark model, prepared if needed."""
    from kft.core import backend
    from kft.models import presets

    if model == "tiny":
        folder = backend.cache_dir() / "bench" / "tiny-hf"
        if not (folder / "config.json").is_file():
            import transformers

            config = transformers.Gemma3TextConfig(
                vocab_size=640,
                hidden_size=128,
                intermediate_size=256,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=1,
                head_dim=32,
                query_pre_attn_scalar=32,
                sliding_window=64,
            )
            transformers.Gemma3ForCausalLM(config).save_pretrained(folder)
            tiny = presets.prepare("tiny_gemma3")
            (folder / "tokenizer.model").write_bytes(
                (tiny / "assets/tokenizer/vocabulary.spm").read_bytes()
            )
        return str(folder), str(folder)
    keras_preset = presets.prepare(model)
    from kft.models.gguf_preset import hf_folder

    return str(keras_preset), str(hf_folder(keras_preset))


def run_kft(args) -> dict:
    from kft.core import backend

    backend.setup()
    import keras

    from kft.config import TrainConfig
    from kft.data import dataset
    from kft.evaluate import evaluation
    from kft.generation import sampling
    from kft.models import lora
    from kft.quant import frozen_base
    from kft.training import optim

    keras.utils.set_random_seed(0)
    task, _, _ = frozen_base.load(args.keras_preset, "float32")
    rows = examples(args.examples, args.seq_len, task.backbone.vocabulary_size)
    sequences = [(ids, [0.0] * prompt + [1.0] * (len(ids) - prompt)) for ids, prompt in rows]
    # data.packing: several examples per row, each attending only to itself (kft's packed split).
    split = (dataset._packed_split if args.packing else dataset._to_split)(
        sequences, args.seq_len, 0
    )
    lora.enable(task.backbone, args.rank, None, ["query", "value"])
    steps = args.warmup + args.steps
    optimizer, _ = optim.make_optimizer(TrainConfig(lr=1e-4, batch_size=args.batch_size), steps)
    fit_model = evaluation.compile_task(task, optimizer, args.kft_logits)
    batches = dataset.batches(
        split,
        args.batch_size,
        steps,
        seed=0,
        trained_only=args.kft_logits == "trained",
        pad_to_multiple=args.pad_to_multiple,
        group_by_length=args.group_by_length,
    )
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # wait for the step to finish
            times.append(time.perf_counter() - self.t)

    keras.Model.fit(fit_model, batches, epochs=1, verbose=0, shuffle=False, callbacks=[Timer()])
    tokens = [batches.tokens(i) for i in range(steps)]
    started = time.perf_counter()
    computed = [batches[i][0]["token_ids"].size for i in range(steps)]
    batch_ms = (
        1000 * (time.perf_counter() - started) / steps
    )  # the input pipeline's share of a step
    result = {**summarise(times, tokens, args.warmup, computed), "batch_ms": round(batch_ms, 2)}
    prompt = "Instruction:\nWrite a short story about a lighthouse.\n\nResponse:\n"
    sampling.generate(
        task, task.preprocessor.tokenizer, [prompt], args.new_tokens
    )  # compile (same shapes)
    started = time.perf_counter()
    out = sampling.generate(task, task.preprocessor.tokenizer, [prompt], args.new_tokens)
    new = len(task.preprocessor.tokenizer(out[0]))
    result["gen_tokens_per_s"] = round(new / (time.perf_counter() - started), 2)
    return result


def run_hf(args) -> dict:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        args.hf_folder, dtype=torch.float32, attn_implementation="sdpa"
    )
    rows = examples(args.examples, args.seq_len, hf.config.vocab_size)
    peft_model = get_peft_model(
        hf,
        LoraConfig(
            r=args.rank,
            lora_alpha=args.rank,
            target_modules=["q_proj", "v_proj"],
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        ),
    )

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            ids, prompt = rows[i]
            return {"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]}

    times, tokens, computed = [], [], []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    standard = transformers.DataCollatorForSeq2Seq(
        transformers.AutoTokenizer.from_pretrained(args.hf_folder),
        padding=True,
        label_pad_token_id=-100,
    )

    def collator(
        features,
    ):  # the standard dynamic-padding collator, counting real tokens as kft does
        batch = standard(features)
        tokens.append(int(batch["attention_mask"].sum()) - len(features))
        computed.append(int(batch["input_ids"].numel()) - len(features))
        return batch

    steps = args.warmup + args.steps
    training_args = transformers.TrainingArguments(
        output_dir=os.path.join(args.tmp, "hf"),
        max_steps=steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-4,
        weight_decay=0.01,
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=peft_model,
        args=training_args,
        train_dataset=Rows(),
        data_collator=collator,
        callbacks=[Timer()],
    )
    trainer.train()
    result = summarise(times, tokens, args.warmup, computed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.hf_folder)
    ids = tokenizer(
        "Instruction:\nWrite a short story about a lighthouse.\n\nResponse:\n", return_tensors="pt"
    )
    merged = peft_model.eval()
    with torch.no_grad():
        merged.generate(**ids, max_new_tokens=args.new_tokens, do_sample=False)
        started = time.perf_counter()
        out = merged.generate(
            **ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False
        )
    result["gen_tokens_per_s"] = round(
        (out.shape[1] - ids["input_ids"].shape[1]) / (time.perf_counter() - started), 2
    )
    return result


def summarise(times: list[float], tokens: list[int], warmup: int, computed: list[int]) -> dict:
    """Steady-state figures. A timed step over 2.5x the median compiled a new batch shape (kft's
    length buckets): it is left out of the rates and reported as `compiles`/`compile_s`.
    `padding_pct`: the share of the timed steps' input positions that were padding."""
    timed, timed_tokens = times[warmup:], tokens[warmup : len(times)]
    timed_computed = computed[warmup : len(times)]
    median = float(np.median(timed))
    keep = [i for i, t in enumerate(timed) if t <= 2.5 * median]
    compiled = [t for i, t in enumerate(timed) if i not in keep]
    return {
        "first_step_s": round(times[0], 2),
        "compiles": len(compiled),
        "compile_s": round(sum(compiled), 1),
        "s_per_step": round(float(np.mean([timed[i] for i in keep])), 3),
        "tokens_per_s": round(sum(timed_tokens[i] for i in keep) / sum(timed[i] for i in keep), 1),
        "padding_pct": round(100 * (1 - sum(timed_tokens) / sum(timed_computed)), 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3_270m_gguf", help="gemma3_270m_gguf or tiny")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps (default 10 real, 20 tiny)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument(
        "--kft-logits",
        choices=["trained", "all"],
        default="trained",
        help="kft's train.logits_on (all = KerasHub's plain full-vocabulary path)",
    )
    parser.add_argument(
        "--pad-to-multiple",
        type=int,
        default=64,
        help="kft's train.pad_to_multiple (0 = pad to seq-len)",
    )
    parser.add_argument(
        "--group-by-length", type=int, default=1, help="kft's train.group_by_length (1/0)"
    )
    parser.add_argument(
        "--packing",
        type=int,
        default=0,
        help="kft's data.packing (1/0); transformers keeps its standard dynamic padding",
    )
    parser.add_argument("--side", choices=["kft", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--keras-preset", help=argparse.SUPPRESS)
    parser.add_argument("--hf-folder", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default="/tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 20 if args.model == "tiny" else 10
    if args.side:
        result = run_kft(args) if args.side == "kft" else run_hf(args)
        print("RESULT " + json.dumps(result))
        return
    keras_preset, hf_folder = preset_paths(args.model)
    results = {}
    for side in ("kft", "hf"):
        command = [
            sys.executable,
            __file__,
            "--side",
            side,
            "--keras-preset",
            keras_preset,
            "--hf-folder",
            hf_folder,
            *[
                f"--{k.replace('_', '-')}={v}"
                for k, v in vars(args).items()
                if k
                in (
                    "model",
                    "steps",
                    "warmup",
                    "batch_size",
                    "seq_len",
                    "rank",
                    "examples",
                    "new_tokens",
                    "kft_logits",
                    "pad_to_multiple",
                    "group_by_length",
                    "packing",
                )
            ],
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        )
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            sys.exit(f"{side} side failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        results[side] = json.loads(line[len("RESULT ") :])
    k, h = results["kft"], results["hf"]
    print(
        f"model {args.model}, kft logits_on={args.kft_logits} pad_to_multiple={args.pad_to_multiple} "
        f"group_by_length={args.group_by_length} packing={args.packing}, LoRA r={args.rank} q/v, fp32, "
        f"batch {args.batch_size}, Dolly-like lengths "
        f"(cap {args.seq_len}), {args.steps} timed steps after {args.warmup} warm-up"
    )
    print(
        "| | real tokens/s | s/step | padding (%) | peak RSS (GB) | first step (s) | later compiles (s) | "
        "generate (new tokens/s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in (("kft", k), ("transformers+PEFT", h)):
        print(
            f"| {name} | {r['tokens_per_s']} | {r['s_per_step']} | {r['padding_pct']} | {r['peak_rss_gb']} | "
            f"{r['first_step_s']} | {r['compiles']} ({r['compile_s']}) | {r['gen_tokens_per_s']} |"
        )
    print(f"(kft builds a batch in {k['batch_ms']} ms of its {1000 * k['s_per_step']:.0f} ms step)")
    print(
        f"kft/hf: tokens/s {k['tokens_per_s'] / h['tokens_per_s']:.2f}x, peak memory "
        f"{k['peak_rss_gb'] / h['peak_rss_gb']:.2f}x, generate {k['gen_tokens_per_s'] / h['gen_tokens_per_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
