"""A fine-tuned model back from disk: base preset + adapter, and text generation from it."""

from __future__ import annotations

from pathlib import Path

from kft import config as config_lib
from kft.core.errors import KftError
from kft.data import templates
from kft.generation import samplers, sampling
from kft.models import adapter
from kft.quant import frozen_base
from kft.quant import quantize as quantize_lib


def load_tuned(run_dir=None, preset=None, adapter_dir=None, precision=None, quantize=None):
    """The base preset named by the adapter (or `preset`) with the adapter's LoRA weights applied.

    The base is quantized as it was in training (adapter_config.json's `quantize`) unless
    `quantize` says otherwise: exports pass "none" to merge into the float base."""
    folder = Path(adapter_dir or run_dir or "")
    if not (run_dir or adapter_dir):
        raise KftError("give a run folder (--run) or an adapter folder (--adapter)")
    if not folder.is_dir():
        raise KftError(f"'{folder}' is not a folder; give a kft run folder")
    meta = adapter.read_config(folder)
    run_config = _run_config(folder)
    precision = precision or run_config.get("model", {}).get("precision") or "auto"
    options = quantize_lib.rebuild_options(meta, folder) if quantize is None else {}
    quantize = quantize or meta.get("quantize", "none")
    task, _, _ = frozen_base.load(preset or meta["base_preset"], precision, quantize, **options)
    adapter.merge_start(folder, task.backbone)  # the run it started from (model.init_adapter)
    adapter.apply(folder, task.backbone)
    task.kft_template = templates.for_tokenizer(
        _run_template(run_config, meta, folder), task.preprocessor.tokenizer
    )
    return task


def _run_config(folder: Path) -> dict:
    """The run's config.yaml as written (not validated again: its data file need not be here)."""
    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    try:
        raw = config_lib.read_yaml(str(path))
    except KftError as e:
        raise KftError(f"{e}; copy the run folder again, or train it again") from None
    missing = [s for s in config_lib.SECTIONS if not isinstance(raw.get(s), dict) or not raw[s]]
    if missing:  # kft writes every section of the resolved config
        raise KftError(
            f"{path} lacks its {', '.join(missing)} section(s) (cut short, or not written by kft); "
            "copy the run folder again, or train it again"
        )
    return raw


def _run_template(run_config: dict, meta: dict, folder: Path):
    data = run_config.get("data")
    if data:
        try:
            return templates.from_config(config_lib.DataConfig(**data))
        except TypeError as e:
            raise KftError(
                f"{folder / 'config.yaml'} has data keys this kft does not know ({e}); "
                "it was written by another version: update kft, or train the run again"
            ) from None
    return templates.Template(name=meta.get("template", "custom"), columns={})


def generate_text(
    task,
    prompts,
    max_new_tokens=64,
    template=None,
    strategy="greedy",
    temperature=1.0,
    top_k=0,
    top_p=0.0,
    seed=0,
):
    """Completions for `prompts`, wrapped by `template` ('auto' = the run's own) unless None."""
    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    if template == "auto":
        template = getattr(task, "kft_template", None)
    if template is not None:
        prompts = [template.wrap_prompt(p) for p in prompts]
    task.compile(sampler=samplers.make_sampler(strategy, temperature, top_k, top_p, seed))
    out = sampling.generate(task, task.preprocessor.tokenizer, prompts, max_new_tokens)
    return out[0] if single else out
