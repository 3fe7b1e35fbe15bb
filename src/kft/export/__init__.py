"""`kft export`: a run's fine-tuned model as a merged Keras preset, a transformers checkpoint, a
PEFT adapter, a merged GGUF or a GGUF LoRA adapter (plus the base model alone, the adapters' base).

Output is written to a hidden sibling folder and renamed into place at the end, so a failed
export leaves nothing half-written where the user looks.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from kft.core.errors import KftError
from kft.export import gguf, hf, merge, model_card, peft
from kft.generation import loading
from kft.models import adapter, lora, model, presets
from kft.quant import frozen_base

FORMATS = ("keras", "hf", "peft", "gguf", "gguf-lora")
ADAPTERS = ("peft", "gguf-lora")


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise KftError(f"--out '{out}' is a file; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise KftError(
            f"--out '{out}' already holds files; choose another folder or pass --overwrite"
        )


def export(
    run_dir: str | None,
    fmt: str,
    out: str,
    preset: str | None = None,
    base: bool = False,
    overwrite: bool = False,
    with_base: bool = False,
    quant: str = "f16",
) -> Path:
    """Write the export; return its folder. `base=True` exports the base preset without the adapter.

    A PEFT adapter names its base (`base_model_name_or_path`): with `with_base`, the base model is
    exported into OUT/base and named by that folder; otherwise the Hugging Face twin of the
    preset (see presets.hf_twin), if it has one."""

    if fmt not in FORMATS:
        raise KftError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if base and fmt in ADAPTERS:
        raise KftError(
            f"--base exports the base model alone; a {fmt} export needs the run's adapter "
            f"(the base for it: --with-base, or `kft export --base --format {fmt.split('-')[0].replace('peft', 'hf')}`)"
        )
    if with_base and fmt not in ADAPTERS:
        raise KftError(
            "--with-base goes with --format peft or gguf-lora (the adapter and its base model together)"
        )
    out = Path(out).expanduser()
    _check_out(out, overwrite)
    meta = adapter.read_config(run_dir) if run_dir else {}
    if meta.get("init_adapter") and fmt in ADAPTERS and not with_base:
        raise KftError(
            f"{run_dir} trained its LoRA on top of another run's (model.init_adapter): the adapter "
            f"fits that merged model, not {meta['base_preset']}; add --with-base (the merged model is "
            "written as the base), or export the merged model: --format hf, keras or gguf"
        )
    if base:
        if not (preset or meta):
            raise KftError("--base needs a run folder (its base preset) or --preset")
        if run_dir:  # the model the run trained on: with the adapter it started from
            task = _start_model(run_dir, preset or meta["base_preset"])
            family = model.family_of(task.backbone)
        else:
            task, family, _ = frozen_base.load(preset, "float32")
    else:
        if not run_dir:
            raise KftError("give the run folder to export")
        # A quantized run's LoRA merges into the float base, never into integer kernels.
        task = loading.load_tuned(
            run_dir=run_dir, preset=preset, precision="float32", quantize="none"
        )
        family = model.family_of(task.backbone)
    if fmt.startswith("gguf"):
        gguf.check(family, quant)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        print(
            f"kft: writing {fmt} export of {'the base model' if base else run_dir}",
            file=sys.stderr,
            flush=True,
        )
        if fmt == "peft":
            base_preset = preset or meta["base_preset"]
            base_ref = str((out / "base").absolute()) if with_base else presets.hf_twin(base_preset)
            peft.write(task.backbone, meta, base_ref, partial)
            if with_base:
                base_task = _start_model(run_dir, base_preset)
                base_family = model.family_of(base_task.backbone)
                hf.write(
                    base_task.backbone,
                    base_task.preprocessor.tokenizer,
                    base_family,
                    partial / "base",
                )
            elif base_ref is None:
                print(
                    f"kft: '{base_preset}' has no known Hugging Face twin; adapter_config.json names no base "
                    "(export it with --with-base, or load the adapter onto `kft export --base --format hf`)",
                    file=sys.stderr,
                    flush=True,
                )
        elif fmt == "gguf-lora":
            _gguf_lora(task, family, meta, preset, partial, quant, with_base, run_dir)
        else:
            merge.merge_lora(task.backbone)
            if fmt == "keras":
                task.save_to_preset(str(partial))
            elif fmt == "gguf":
                tokenizer = task.preprocessor.tokenizer
                chat = gguf.chat_of(meta.get("template", ""), tokenizer, family)
                written = _gguf_file(task, family, partial, quant, chat, "model")
                (partial / "Modelfile").write_text(gguf.modelfile(written, chat, tokenizer))
            else:
                hf.write(task.backbone, task.preprocessor.tokenizer, family, partial)
        if not base:
            (partial / "README.md").write_text(model_card.render(run_dir, fmt), encoding="utf-8")
            if (Path(run_dir) / "loss.png").is_file():
                shutil.copy2(Path(run_dir) / "loss.png", partial / "loss.png")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def _start_model(run_dir, preset: str):
    """The float model a run's LoRA was trained on: the base preset, with the adapter it started
    from merged in (model.init_adapter)."""
    task = frozen_base.load(preset, "float32")[0]
    adapter.merge_start(run_dir, task.backbone)
    return task


def _gguf_lora(
    task, family: str, meta: dict, preset, folder: Path, quant: str, with_base: bool, run_dir
):
    """adapter.gguf (+ base.gguf with `with_base`) and a Modelfile naming both."""
    tokenizer = task.preprocessor.tokenizer
    config = hf.hf_config(task.backbone, family, tokenizer)
    written = gguf.write_lora(
        task.backbone,
        config,
        family,
        lora.scale(meta["rank"], meta["alpha"], meta.get("rslora", False)),
        folder,
        quant,
    )
    chat = gguf.chat_of(meta.get("template", ""), tokenizer, family)
    if with_base:
        base_task = _start_model(run_dir, preset or meta["base_preset"])
        _gguf_file(base_task, family, folder, quant, chat, "base")
    (folder / "Modelfile").write_text(
        gguf.modelfile(folder / "base.gguf", chat, tokenizer, adapter=written)
    )


def _gguf_file(task, family: str, folder: Path, quant: str, chat, name: str) -> Path:
    """folder/NAME.gguf from `task`, through a transformers export staged beside it."""
    staged = folder / f".{name}-hf"
    hf.write(task.backbone, task.preprocessor.tokenizer, family, staged)
    try:
        return gguf.write(staged, family, folder, quant, name=name, chat=chat)
    finally:
        shutil.rmtree(staged)
