"""The model card (README.md) for an export or an upload, written from the run folder."""

from __future__ import annotations

from pathlib import Path

from kft import config as config_lib
from kft import families
from kft.core import files


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return files.read_jsonl(path, "copy the run folder again, or train it again")


def render(run_dir: str | Path, fmt: str, samples: int = 3) -> str:
    """Markdown describing the base model, data, LoRA and training settings, results and samples."""
    run = Path(run_dir)
    config = config_lib.read_yaml(str(run / "config.yaml"))
    fix = "copy the run folder again, or train it again"
    adapter = files.read_json(run / "adapter_config.json", fix)
    summary = files.read_json(run / "summary.json", fix) if (run / "summary.json").is_file() else {}
    data, train = config["data"], config["train"]
    stats = summary.get("data", {})
    usage = {
        "keras": "import keras_hub\n"
        'lm = keras_hub.models.CausalLM.from_preset("PATH")\n'
        'print(lm.generate("...", max_length=128))',
        "hf": "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        'model = AutoModelForCausalLM.from_pretrained("PATH")\n'
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        "peft": "from peft import PeftModel\n"
        'model = PeftModel.from_pretrained(base_model, "PATH")  # base: the HF export of the base',
        "gguf": "# llama.cpp\n"
        "llama-cli -m PATH/model.gguf -cnv\n"
        "# Ollama (the Modelfile beside it carries the chat turns and stop marker)\n"
        "ollama create my-model -f PATH/Modelfile && ollama run my-model",
        "gguf-lora": "# llama.cpp: the adapter over the base model's GGUF (export it with --with-base,\n"
        "# or `kft export --base --format gguf`); Ollama: the Modelfile names both\n"
        "llama-cli -m PATH/base.gguf --lora PATH/adapter.gguf -cnv\n"
        "ollama create my-model -f PATH/Modelfile && ollama run my-model",
    }[fmt]
    lines = [
        f"# {adapter['family'].capitalize()} fine-tuned with LoRA (kft)",
        "",
        f"LoRA fine-tune of `{adapter['base_preset']}` ({adapter['family']}) made with "
        f"kft {adapter.get('kft_version', '')} (Keras 3 + KerasHub on JAX). "
        f"Format: {fmt} ({'LoRA merged into the weights' if fmt not in ('peft', 'gguf-lora') else 'LoRA adapter'}).",
        "",
        "## Usage",
        "",
        "```bash" if fmt.startswith("gguf") else "```python",
        usage,
        "```",
        "",
        "## Training data",
        "",
        f"- Source: `{data['source']}`"
        + (f" (held out: `{data['eval_source']}`)" if data.get("eval_source") else ""),
        f"- Examples: {stats.get('train_examples', '?')} for training, {stats.get('eval_examples', 0)} for evaluation; "
        f"{stats.get('trained_tokens', '?')} trained tokens",
        f"- Template: `{data['template']}`; loss on {data['loss_on']} tokens; sequence length {data['seq_len']}",
        "",
        "## Training procedure",
        "",
        f"- LoRA: rank {adapter['rank']}, alpha {adapter['alpha']}"
        + (" (rsLoRA: alpha / sqrt(rank))" if adapter.get("rslora") else "")
        + f", on {', '.join(adapter['targets'])}"
        + (
            f"; LoRA+ ratio {config['lora']['plus_ratio']}"
            if config["lora"].get("plus_ratio")
            else ""
        ),
        f"- Trainable parameters: {summary.get('trainable_parameters', '?'):,} of {summary.get('parameters', '?'):,}"
        if summary
        else "- Trainable parameters: see the run",
        f"- Optimizer: AdamW, lr {train['lr']}, weight decay {train['weight_decay']}, {train['schedule']} schedule, "
        f"warmup {train['warmup_steps']} steps, clip norm {train['clip_norm']}",
        f"- Batch {train['batch_size']} x accumulation {train['grad_accum']}, "
        f"{summary.get('optimizer_steps', '?')} optimizer steps, seed {train['seed']}, precision {adapter['dtype']}",
        "",
        "## Results",
        "",
    ]
    results = [
        (k, v)
        for k, v in summary.items()
        if k.endswith(("_loss", "_before", "_after")) and v is not None
    ]
    lines += [
        f"- {k.replace('_', ' ')}: {v:.4f}"
        if isinstance(v, float)
        else f"- {k.replace('_', ' ')}: {v}"
        for k, v in results
    ] or ["- (no metrics recorded)"]
    if (run / "loss.png").is_file():
        lines += ["", "![Training loss, eval loss before/after and learning rate](loss.png)"]
    shown = _read_jsonl(run / "samples.jsonl")[:samples]
    if shown:
        lines += ["", "## Sample generations (greedy)", ""]
        for s in shown:
            lines += [
                f"**Prompt:**\n```\n{s['prompt'].rstrip()}\n```",
                f"- before: {s['before'].strip()!r}",
                f"- after: {s['after'].strip()!r}",
                "",
            ]
    lines += ["", "## License", "", families.get(adapter["family"]).license, ""]
    return "\n".join(lines)
