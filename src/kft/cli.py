"""The `kft` command: a thin shell over kft's Python API.

It parses and validates, then calls the same functions a notebook calls. Heavy imports
(keras, jax, tensorflow) happen inside commands so `--help` answers at once. A `KftError`
becomes one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import click

from kft import config as config_lib
from kft.core.errors import KftError
from kft.models.presets import PREPARED

# Flag -> config key. Any other key: --set section.key=value.
COMMON_FLAGS = {
    "preset": "model.preset",
    "data": "data.source",
    "rank": "lora.rank",
    "alpha": "lora.alpha",
    "seq_len": "data.seq_len",
    "batch_size": "train.batch_size",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "lr": "train.lr",
    "output_dir": "output.dir",
    "seed": "train.seed",
    "mesh": "train.mesh",
    "objective": "train.objective",
}


def _help(key: str) -> str:
    section, name = key.split(".")
    cls = config_lib.section_classes()[section]
    return f"[{key}] " + next(
        f.metadata["help"] for f in config_lib.dataclasses.fields(cls) if f.name == name
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kft")
def cli():
    """Fine-tune Gemma-family models with LoRA, the Keras way (Keras 3 + KerasHub on JAX)."""


@cli.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="YAML config file (defaults: the Keras Gemma LoRA tutorial).",
)
@click.option("--preset", help=_help("model.preset"))
@click.option("--data", help=_help("data.source"))
@click.option("--rank", type=int, help=_help("lora.rank"))
@click.option("--alpha", type=float, help=_help("lora.alpha"))
@click.option("--seq-len", type=int, help=_help("data.seq_len"))
@click.option("--batch-size", type=int, help=_help("train.batch_size"))
@click.option("--epochs", type=int, help=_help("train.epochs"))
@click.option("--max-steps", type=int, help=_help("train.max_steps"))
@click.option("--lr", type=float, help=_help("train.lr"))
@click.option("--output-dir", help=_help("output.dir"))
@click.option("--seed", type=int, help=_help("train.seed"))
@click.option("--mesh", metavar="BxM", help=_help("train.mesh"))
@click.option("--objective", metavar="sft|dpo|orpo", help=_help("train.objective"))
@click.option(
    "--coordinator",
    metavar="HOST:PORT",
    help="Multi-host: process 0's address (KERAS_DISTRIBUTION_JOB_ADDRESSES).",
)
@click.option(
    "--num-processes",
    type=int,
    help="Multi-host: how many processes (KERAS_DISTRIBUTION_NUM_PROCESSES).",
)
@click.option(
    "--process-id",
    type=int,
    help="Multi-host: this process's index, 0 writes the run (KERAS_DISTRIBUTION_PROCESS_ID).",
)
@click.option(
    "--overwrite", is_flag=True, help="Allow writing into a run folder that already holds files."
)
@click.option(
    "--resume",
    metavar="RUN_DIR|auto",
    help="Continue a run from its newest checkpoint ('auto': output.dir if it has one).",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override any config key (repeatable).",
)
def train(
    config_path, overwrite, resume, assignments, coordinator, num_processes, process_id, **flags
):
    """Fine-tune a Gemma preset with LoRA and write a run folder."""
    import os

    # Per-process settings, not part of the run's config: keras.distribution.initialize() reads them.
    for name, value in (
        ("JOB_ADDRESSES", coordinator),
        ("NUM_PROCESSES", num_processes),
        ("PROCESS_ID", process_id),
    ):
        if value is not None:
            os.environ[f"KERAS_DISTRIBUTION_{name}"] = str(value)
    overrides = dict(config_lib.parse_set(a) for a in assignments)
    overrides.update({COMMON_FLAGS[k]: v for k, v in flags.items() if v is not None})
    # A step budget given here replaces the file's epochs and vice versa (both in one place is an error).
    if flags["max_steps"] is not None and "train.epochs" not in overrides:
        overrides["train.epochs"] = None
    if flags["epochs"] is not None and "train.max_steps" not in overrides:
        overrides["train.max_steps"] = None
    if overwrite:
        overrides["output.overwrite"] = True
    if resume and resume != "auto" and config_path is None:
        config_path = _run_config(resume)
    config = config_lib.load(config_path, overrides)  # validated before anything heavy loads
    from kft.training.recipe import train as run_training

    result = run_training(config, resume=resume)
    click.echo(str(result.run_dir))


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--preset", help=_help("model.preset"))
@click.option("--rank", type=int, help=_help("lora.rank"))
@click.option("--seq-len", type=int, help=_help("data.seq_len"))
@click.option("--batch-size", type=int, help=_help("train.batch_size"))
@click.option("--objective", metavar="sft|dpo|orpo", help=_help("train.objective"))
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override any config key (repeatable).",
)
@click.option(
    "--device-memory",
    metavar="SIZE",
    help="Memory per device, e.g. 16GB (default: detected; on CPU the available RAM).",
)
@click.option(
    "--device",
    "accelerator",
    type=click.Choice(["cpu", "gpu", "gpu-bf16", "tpu"]),
    help="What computes (default: detected; 'gpu' with --device-memory). precision auto = bf16 on tpu/gpu-bf16.",
)
@click.option(
    "--devices", type=click.IntRange(1), default=1, show_default=True, help="Devices in the mesh."
)
@click.option(
    "--model-axis",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Devices the weights are sharded over (the rest split the batch).",
)
def plan(config_path, assignments, device_memory, accelerator, devices, model_axis, **flags):
    """Predict peak memory per device from the preset's config.json, before loading anything."""
    from kft import plan as plan_lib

    overrides = dict(config_lib.parse_set(a) for a in assignments)
    overrides.update({COMMON_FLAGS[k]: v for k, v in flags.items() if v is not None})
    config = config_lib.load(config_path, overrides)
    result = plan_lib.make(config, device_memory, devices, model_axis, accelerator)
    click.echo(plan_lib.render(result, devices, model_axis))


def _run_config(run_dir: str) -> str:
    import os

    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        raise KftError(f"--resume '{run_dir}' is not a kft run folder (no config.yaml)")
    return path


def _model_and_sampling_options(max_new_tokens: int):
    """The options `kft generate` and `kft chat` share: which model, and how to sample from it."""
    options = [
        click.option("--preset", help="Base preset (with --adapter, or to override the run's)."),
        click.option(
            "--adapter",
            "adapter_dir",
            type=click.Path(file_okay=False),
            help="An adapter folder (adapter.safetensors + adapter_config.json).",
        ),
        click.option(
            "--max-new-tokens", type=click.IntRange(1), default=max_new_tokens, show_default=True
        ),
        click.option(
            "--sampler",
            "strategy",
            type=click.Choice(["greedy", "random"]),
            default="greedy",
            show_default=True,
        ),
        click.option("--temperature", type=click.FloatRange(0), default=1.0, show_default=True),
        click.option(
            "--top-k",
            type=click.IntRange(0),
            default=0,
            help="Sample among the k most likely tokens (random sampler).",
        ),
        click.option(
            "--top-p",
            type=click.FloatRange(0, 1),
            default=0.0,
            help="Nucleus sampling threshold (random sampler).",
        ),
        click.option("--seed", type=int, default=0, show_default=True),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@cli.command()
@click.argument("prompts", nargs=-1, required=True)
@click.option(
    "--run",
    "run_dir",
    type=click.Path(file_okay=False),
    help="A kft run folder (base preset + adapter).",
)
@_model_and_sampling_options(max_new_tokens=64)
@click.option("--raw", is_flag=True, help="Send prompts as they are, without the run's template.")
def generate(
    prompts,
    run_dir,
    preset,
    adapter_dir,
    max_new_tokens,
    strategy,
    temperature,
    top_k,
    top_p,
    seed,
    raw,
):
    """Generate from a fine-tuned model: base preset + LoRA adapter."""
    import kft

    lm = kft.load(run_dir=run_dir, preset=preset, adapter_dir=adapter_dir)
    outputs = kft.generate(
        lm,
        list(prompts),
        max_new_tokens=max_new_tokens,
        template=None if raw else "auto",
        strategy=strategy,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )
    for prompt, output in zip(prompts, outputs):
        if len(prompts) > 1:
            click.echo(f"### {prompt}")
        click.echo(output)


@cli.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@_model_and_sampling_options(max_new_tokens=128)
def chat(run_dir, preset, adapter_dir, max_new_tokens, strategy, temperature, top_k, top_p, seed):
    """Chat with a fine-tuned model, turn after turn (/reset, /exit)."""
    import kft
    from kft.generation import chat as chat_lib
    from kft.generation import samplers

    lm = kft.load(run_dir=run_dir, preset=preset, adapter_dir=adapter_dir)
    lm.compile(sampler=samplers.make_sampler(strategy, temperature, top_k, top_p, seed))
    chat_lib.run(lm, write=click.echo, max_new_tokens=max_new_tokens)


@cli.command("export")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, exists=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["keras", "hf", "peft", "gguf", "gguf-lora"]),
    required=True,
    help="keras: merged Keras preset; hf: merged transformers checkpoint; peft: PEFT adapter; "
    "gguf: merged model for llama.cpp / Ollama with a Modelfile; gguf-lora: the LoRA adapter alone "
    "as a llama.cpp adapter GGUF.",
)
@click.option(
    "--quant",
    type=click.Choice(["f32", "f16", "bf16", "q8_0", "q4_0"]),
    default="f16",
    show_default=True,
    help="With --format gguf or gguf-lora: the weights' encoding (norms and biases stay f32).",
)
@click.option(
    "--out", required=True, type=click.Path(), help="Folder to write (must be new or empty)."
)
@click.option(
    "--preset", help="Base preset, if not the one recorded in the run's adapter_config.json."
)
@click.option(
    "--base", is_flag=True, help="Export the base model alone (the base for a PEFT adapter)."
)
@click.option(
    "--with-base",
    is_flag=True,
    help="With --format peft: also export the base model into OUT/base and name it as the adapter's "
    "base (AutoPeftModelForCausalLM.from_pretrained(OUT) then works offline); with --format gguf-lora: "
    "also write the base model as OUT/base.gguf.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing export folder.")
def export_cmd(run_dir, fmt, quant, out, preset, base, with_base, overwrite):
    """Export a run: merged Keras preset, transformers checkpoint, PEFT adapter, or GGUF."""
    from kft.export import export

    click.echo(
        str(
            export(
                run_dir,
                fmt,
                out,
                preset=preset,
                base=base,
                overwrite=overwrite,
                with_base=with_base,
                quant=quant,
            )
        )
    )


@cli.command()
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--to",
    required=True,
    metavar="URI",
    help="kaggle://OWNER/MODEL/keras/VARIANT or hf://OWNER/REPO",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate by reloading, print files and the model card, upload nothing.",
)
def publish(folder, to, dry_run):
    """Upload a run (as a merged Keras preset) or an export folder, with its model card."""
    from kft.export.publish import publish as run_publish

    run_publish(folder, to, dry_run=dry_run, echo=click.echo)


@cli.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--base", is_flag=True, help="Measure the base model without the adapter.")
@click.option(
    "--metric",
    type=click.Choice(["none", "exact", "json"]),
    help="Override the run's output.metric.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    help="Also write the result (with generations) as JSON.",
)
def eval_cmd(run_dir, base, metric, out_path):
    """Re-measure a run on its eval split: loss, greedy answers and the task metric."""
    import json

    from kft.evaluate.evaluation import evaluate_run

    result = evaluate_run(run_dir, base=base, metric=metric)
    if out_path:
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump(result, f, ensure_ascii=False, indent=2)
    click.echo(json.dumps({k: v for k, v in result.items() if k != "generations"}))


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="With several runs: the comparison plot to write.",
    default="compare.png",
    show_default=True,
)
def report(run_dirs, out):
    """Print runs' summaries; draw a run's loss.png, or several runs on one plot."""
    from kft.training import report as report_lib

    click.echo(report_lib.table(list(run_dirs)))
    if len(run_dirs) == 1:
        click.echo(str(report_lib.plot_run(run_dirs[0])))
    else:
        click.echo(str(report_lib.plot_runs(list(run_dirs), out)))


@cli.command()
@click.argument("name", type=click.Choice(sorted(PREPARED)))
def prepare(name):
    """Build a kft-prepared preset into the cache (once) and print its folder."""
    from kft.models import presets

    click.echo(str(presets.prepare(name)))


@cli.command("config")
@click.argument("config_path", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--reference", is_flag=True, help="Print every key with its default and meaning (Markdown)."
)
def config_cmd(config_path, reference):
    """Validate a config file and print it resolved (or the key reference)."""
    if reference:
        click.echo(config_lib.reference_markdown())
        return
    click.echo(config_lib.to_yaml(config_lib.load(config_path)), nl=False)


def main(argv=None):
    """Entry point: user mistakes become one line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="kft", standalone_mode=False)
    except KftError as e:
        label = {3: "interrupted (resumable)", 4: "stopped"}.get(e.exit_code, "error")
        click.echo(f"kft: {label}: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("kft: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    sys.exit(0)


if __name__ == "__main__":
    main()
