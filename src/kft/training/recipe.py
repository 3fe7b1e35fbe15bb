"""The LoRA fine-tuning recipe, top to bottom.

config -> run folder -> data records -> model -> examples -> LoRA -> compile -> samples before
-> fit -> samples after -> adapter + config + metrics in the run folder.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from kft import config as config_lib
from kft import plan
from kft.config import Config
from kft.core import backend
from kft.core.errors import KftError
from kft.data import dataset as data_lib
from kft.data import packing, preference
from kft.distribute import distribution
from kft.evaluate import evaluation
from kft.generation import decode_kernels, screened_argmax
from kft.models import adapter, lora, model
from kft.quant import frozen_base, gptq, quantize
from kft.training import optim, pair_run, report, step_ahead


@dataclass
class TrainResult:
    task: object  # the fine-tuned keras_hub CausalLM, LoRA enabled
    run_dir: Path
    metrics: dict = field(default_factory=dict)
    # what `fit` trained: the task, or its trained-positions wrapper (holds the optimizer)
    fit_model: object = None


def run_dir_for(config: Config) -> Path:
    """The run folder `output.dir` names, checked (not yet created) so a bad path fails before any work."""
    name = Path(config.model.preset.rstrip("/")).name.replace(":", "_") or "model"
    folder = Path(
        config.output.dir.format(preset=name, time=datetime.now().strftime("%Y%m%d-%H%M%S"))
    ).expanduser()
    if folder.exists() and not folder.is_dir():
        raise KftError(f"output.dir '{folder}' is a file; choose a folder path")
    if folder.is_dir() and any(folder.iterdir()) and not config.output.overwrite:
        raise KftError(
            f"output.dir '{folder}' already holds files; choose another folder or pass --overwrite"
        )
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError
        tempfile.TemporaryFile(
            dir=existing
        ).close()  # os.access says yes to root even where writes fail
    except OSError:
        raise KftError(
            f"cannot write to output.dir '{folder}': '{existing}' is not a writable folder"
        ) from None
    return folder


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _report(metrics: dict, run_dir: Path, shown: int = 3) -> None:
    """The end-of-run summary: losses, the metric, and a few before/after samples."""
    print(
        f"kft: training loss {metrics['first_loss']:.4f} -> {metrics['final_loss']:.4f}", flush=True
    )
    if "eval_loss_after" in metrics:
        before = f"{metrics['eval_loss_before']:.4f} -> " if "eval_loss_before" in metrics else ""
        print(f"kft: eval loss {before}{metrics['eval_loss_after']:.4f}")
    if "pairs_reward_accuracy_after" in metrics:
        m = metrics
        print(
            f"kft: {m['pairs_measured_on']} pairs: chosen preferred {100 * m['pairs_preferred_before']:.1f}% -> "
            f"{100 * m['pairs_preferred_after']:.1f}%, reward accuracy "
            f"{100 * m['pairs_reward_accuracy_before']:.1f}% -> {100 * m['pairs_reward_accuracy_after']:.1f}% "
            f"(margin {m['pairs_reward_margin_before']:.3f} -> {m['pairs_reward_margin_after']:.3f})",
            flush=True,
        )
    name = metrics["metric"]
    if f"{name}_after" in metrics:
        before = f"{metrics[f'{name}_before']:.1f}% -> " if f"{name}_before" in metrics else ""
        print(f"kft: {name} match {before}{metrics[f'{name}_after']:.1f}%")
    with open(run_dir / "samples.jsonl", encoding="utf-8") as f:
        for line in list(f)[:shown]:
            sample = json.loads(line)
            print(
                f"--- prompt:\n{sample['prompt'].rstrip()}\n--- before: {sample['before'].strip()!r}\n"
                f"--- after:  {sample['after'].strip()!r}"
            )
    print(f"kft: adapter, samples, metrics and {report.LOSS_PNG} saved to {run_dir}", flush=True)


def _resolve(config, overrides) -> Config:
    if isinstance(config, Config):
        return config_lib.from_dict(config_lib.apply_overrides(config.to_dict(), overrides))
    if isinstance(config, dict):
        return config_lib.from_dict(config_lib.apply_overrides(config, overrides))
    return config_lib.load(config, overrides)


def _resume_point(c: Config, resume: str | None) -> tuple[Config, Path, Path | None]:
    """(config, run folder, checkpoint to continue from or None) for a fresh or resumed run."""
    from kft.training import checkpoint

    if resume is None:
        return c, run_dir_for(c), None
    run_dir = Path(c.output.dir if resume == "auto" else resume).expanduser()
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        if resume == "auto":
            return c, run_dir_for(c), None
        raise KftError(f"--resume '{resume}' is not a kft run folder (no config.yaml)")
    saved = config_lib.load(str(saved_path))
    changed = config_lib.differences(saved, c)
    if changed:
        raise KftError(
            f"cannot resume {run_dir} with a different config ({'; '.join(changed)}); "
            "start a new run (--output-dir) or undo the changes"
        )
    latest = checkpoint.latest(run_dir)
    if latest is None:
        if resume == "auto":
            return c, run_dir_for(replace(c, output=replace(c.output, overwrite=True))), None
        raise KftError(
            f"{run_dir} has no complete checkpoint to resume from; start it again with --overwrite"
        )
    return c, run_dir, latest


def train(
    config: Config | dict | str | None = None, resume: str | None = None, **overrides
) -> TrainResult:
    """Fine-tune with LoRA as `config` says (a Config, a dict, or a YAML path; dotted overrides allowed).

    `resume` continues a run from its newest checkpoint: a run folder, or "auto" for
    `output.dir` if it holds one (else a fresh start). A config change that would alter the
    result is refused.
    """
    if resume not in (None, "auto") and config is None:
        config = (
            str(Path(resume) / "config.yaml") if (Path(resume) / "config.yaml").is_file() else None
        )
    c = _resolve(config, overrides)
    backend.setup()
    distribution.connect()  # multi-host: join the other processes before any JAX work
    import keras  # only after backend.setup() has chosen JAX

    from kft.core.compiles import Compiles

    xla = Compiles().start()
    c, run_dir, resume_from = _resume_point(c, resume)
    run_dir, out = distribution.run_folder(
        run_dir
    )  # out: where this process writes (process 0: run_dir)

    keras.utils.set_random_seed(c.train.seed)
    run = _load_base_and_data(c, _start_adapter(c, run_dir, resume_from))
    _open_run_folder(c, run, run_dir, out)  # only now, with data and model known good
    keras.utils.set_random_seed(c.train.seed)  # LoRA A initialisation
    _enable_lora(c, run)
    _compile(c, run)
    before = _measure_before_or_resume(c, run, run_dir, out, resume_from)
    _fit(c, run, run_dir, out, resume_from)
    after = run.measure(label="measuring after", **pair_run.after_reference(c, run))
    return _save(c, run, run_dir, out, before, after, xla)


@dataclass
class _Run:
    """What the phases of `train` hand each other."""

    task: object
    family: str
    policy: str
    dataset: object
    mesh_plan: object
    rounding: str
    per_epoch: int
    metrics: dict = field(default_factory=dict)
    optimizer_steps: int = 0
    micro_steps: int = 0
    optimizer: object = None
    schedule: object = None
    fit_model: object = None
    prompt_split: object = None
    measure: object = None
    batches: object = None
    compiling: object = None
    start_micro: int = 0
    rows: list = field(default_factory=list)
    tracker: object = None
    periodic: object = None
    eval_reference: object = None  # preference runs: held-out answers' log-probs before training
    start_adapter: object = None  # model.init_adapter's folder (resuming: the run's own copy)
    continued: dict | None = (
        None  # its adapter config where its LoRA goes on training (a quantized base)
    )


def _start_adapter(c: Config, run_dir: Path, resume_from) -> Path | None:
    """The adapter to merge into the base (model.init_adapter): resuming, the run's own copy (the
    folder it names may have moved or changed since)."""
    if not c.model.init_adapter:
        return None
    own = run_dir / adapter.INIT_ADAPTER
    if resume_from is not None and (own / adapter.CONFIG).is_file():
        return own
    return _init_run(c.model.init_adapter)


def _load_base_and_data(c: Config, start_adapter: Path | None = None) -> _Run:
    """The records, the device mesh, the frozen base (quantized and placed as the config says) and
    the tokenized dataset."""
    continued = start_adapter and adapter.continuing(start_adapter, c.model, c.lora)
    records, eval_records = data_lib.load_sources(c.data)
    mesh_plan = distribution.setup(
        c.model.preset,
        c.model.precision,
        c.train,  # before the preset loads
        c.model.quantize,
        c.model.int4_block_size,
    )
    devices = mesh_plan.mesh[0] * mesh_plan.mesh[1]
    plan.check_before_training(c, devices=devices, model_axis=mesh_plan.mesh[1])
    built = {}  # the run's dataset, where GPTQ's calibration built it first
    if continued:  # the quantized base rebuilt as the adapter to continue records
        rounding = continued.get("int4_rounding", "least-squares")
        options = quantize.rebuild_options(continued, start_adapter)
    else:  # config.yaml keeps `auto`; the adapter records what it resolved to
        rounding = plan.int4_rounding(c, devices, mesh_plan.mesh[1])
        calibration = functools.partial(_calibration, c, records, eval_records, built)
        options = quantize.options(c, calibration, rounding)
    task, family, policy = frozen_base.load(
        c.model.preset, c.model.precision, c.model.quantize, **options
    )
    if continued:
        print(
            f"kft: continuing {c.model.init_adapter}'s LoRA on its {c.model.quantize} base "
            "(integer kernels cannot hold it merged)",
            flush=True,
        )
    elif start_adapter is not None:  # the SFT run to start from, folded into the float base
        merged = adapter.merge(start_adapter, task.backbone)
        print(
            f"kft: merged {c.model.init_adapter}'s LoRA into the base ({merged} layers)", flush=True
        )
    weights_per_device = distribution.verify(task, mesh_plan)
    model.check_seq_len(task.backbone, c.data.seq_len)
    dataset = built.get("dataset") or _builder(c)(
        records,
        task.preprocessor.tokenizer,
        c.data,
        c.train.seed,
        num_prompts=c.output.samples,
        eval_records=eval_records,
    )
    # A batch larger than the data is refused here, before the run folder exists.
    per_epoch = data_lib.steps_per_epoch(dataset.train, c.train.batch_size)
    run = _Run(task, family, policy, dataset, mesh_plan, rounding, per_epoch)
    run.start_adapter, run.continued = start_adapter, continued or None
    run.metrics = {
        "family": family,
        "dtype_policy": policy,
        "parameters": 0,
        "trainable_parameters": 0,
        "optimizer_steps": 0,
        "data": dataset.stats,
        "metric": c.output.metric,
        "distribution": mesh_plan.kind,
        "mesh": f"{mesh_plan.mesh[0]}x{mesh_plan.mesh[1]}",
        "weight_bytes_per_device": weights_per_device,
    }
    return run


def _builder(c: Config):
    """The dataset builder for the objective: SFT examples, or preference pairs."""
    return data_lib.build if c.train.objective == "sft" else preference.build


def _init_run(folder: str) -> Path:
    path = Path(folder).expanduser()
    if not (path / adapter.CONFIG).is_file():
        raise KftError(
            f"model.init_adapter '{folder}' is not a finished kft run (no {adapter.CONFIG}); "
            "name the run folder of a finished training run"
        )
    return path


def _open_run_folder(c: Config, run: _Run, run_dir: Path, out: Path) -> None:
    """The run folder with its config.yaml (and a copy of model.init_adapter's adapter), and one line
    on the data."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config_lib.to_yaml(c), encoding="utf-8")
    copy = out / adapter.INIT_ADAPTER
    if run.start_adapter is not None and run.start_adapter.resolve() != copy.resolve():
        source = run.start_adapter  # a copy: the run stays loadable where the first one is gone
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir()
        for name in (adapter.CONFIG, adapter.WEIGHTS, "config.yaml", quantize.CALIBRATION_FILE):
            if (source / name).is_file():
                shutil.copy2(source / name, copy / name)
        if (source / adapter.INIT_ADAPTER).is_dir():
            shutil.copytree(source / adapter.INIT_ADAPTER, copy / adapter.INIT_ADAPTER)
    print(f"kft: run folder {run_dir}", flush=True)
    s = run.dataset.stats
    unit = "pairs" if s.get("pairs") else "examples"
    print(
        f"kft: {s['train_examples']} training / {s['eval_examples']} eval {unit}; "
        f"{s['overlong']} longer than seq_len {c.data.seq_len} ({s['overlong_action']}); "
        f"{s['trained_tokens']} of {s['train_tokens']} tokens carry loss",
        flush=True,
    )
    if c.data.packing:
        row = c.data.seq_len * (
            2 if s.get("pairs") else 1
        )  # a pair row: the room of one unpacked pair
        print(
            f"kft: packed {s['train_examples']} training {unit} into {s['packed_rows']} rows of {row} "
            f"({100 * packing.padding_share(run.dataset.train.padding_mask):.1f}% padding)",
            flush=True,
        )


def _enable_lora(c: Config, run: _Run) -> None:
    adapted = lora.enable(
        run.task.backbone, c.lora.rank, c.lora.alpha, c.lora.targets, c.lora.rslora
    )
    if run.continued:  # model.init_adapter on a quantized base: its factors are the start
        adapter.load_weights(run.start_adapter, run.task.backbone, run.continued)
    total, trainable = lora.parameter_counts(run.task)
    print(
        f"kft: {run.family} model, {total:,} parameters, {trainable:,} trainable ({100 * trainable / total:.3f}%) "
        f"in {len(adapted)} LoRA layers (rank {c.lora.rank}, alpha {lora.alpha_of(c.lora.rank, c.lora.alpha):g})",
        flush=True,
    )
    run.metrics.update(parameters=total, trainable_parameters=trainable)


def _compile(c: Config, run: _Run) -> None:
    """The optimizer and its schedule, the model `fit` trains, and the before/after measurement:
    samples (and the metric) on eval prompts when there is an eval split, else on training ones."""
    run.optimizer_steps = c.train.max_steps or max(
        1, run.per_epoch * (c.train.epochs or 1) // c.train.grad_accum
    )
    run.micro_steps = run.optimizer_steps * c.train.grad_accum
    run.metrics["optimizer_steps"] = run.optimizer_steps
    run.optimizer, run.schedule = optim.make_optimizer(
        c.train, run.optimizer_steps, c.lora.plus_ratio
    )
    run.prompt_split = run.dataset.eval or run.dataset.train
    if c.train.objective != "sft":  # pairs are measured unpacked
        run.prompt_split = preference.unpacked(run.prompt_split)
    if c.train.eval_every and run.dataset.eval is None:
        raise KftError(
            "train.eval_every needs held-out data: set data.eval_source, or data.eval_fraction (e.g. 0.1)"
        )
    t = c.train
    if t.objective != "sft":
        import jax

        if jax.process_count() > 1:
            raise KftError(
                f"train.objective {t.objective} runs on one host for now (its answers' log-probs are "
                "gathered on each process); use several devices of one host, or train.objective sft"
            )
        run.fit_model = evaluation.compile_preference(
            run.task, run.optimizer, t.objective, t.beta, t.orpo_lambda
        )
        run.measure = functools.partial(
            evaluation.measure_pairs,
            run.task,
            run.fit_model,
            run.prompt_split,
            t.objective,
            t.beta,
            t.orpo_lambda,
            c.output.metric,
            t.batch_size,
            c.output.sample_max_new_tokens,
        )
        return
    run.fit_model = evaluation.compile_task(run.task, run.optimizer, c.train.logits_on)
    run.measure = functools.partial(
        evaluation.measure,
        run.task,
        run.fit_model,
        run.prompt_split,
        c.output.metric,
        c.train.batch_size,
        c.output.sample_max_new_tokens,
        with_loss=run.dataset.eval is not None,
    )


def _measure_before_or_resume(c: Config, run: _Run, run_dir: Path, out: Path, resume_from) -> dict:
    """The before-measurement (while the first train step compiles on a second thread), or, resuming,
    the one saved and the checkpoint's state."""
    from kft.training import checkpoint

    if resume_from is None:
        if c.train.objective == "dpo":
            pair_run.compute_reference(c, run, out)
        run.batches = _batches(c, run.dataset, run.micro_steps, run.start_micro)
        run.compiling = step_ahead.start(run.fit_model, run.batches)
        if c.output.measure_before or c.train.objective != "sft":  # pairs: the reference
            before = run.measure(label="measuring before")
        else:  # output.measure_before: false
            before = {"generations": [""] * len(run.prompt_split.prompts), "score": None}
        if "outputs" in before:  # the held-out pairs' reference log-probs, for after training
            run.eval_reference = before.pop("outputs")[:, 0]
            pair_run.save_reference(out, run)
        (out / "before.json").write_text(
            json.dumps(before, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        return before
    before = json.loads((run_dir / "before.json").read_text(encoding="utf-8"))
    if c.train.objective != "sft":
        pair_run.load_reference(run_dir, run)
    run.optimizer.build(run.fit_model.trainable_variables)
    resume_from, state = checkpoint.restore_newest(run_dir, run.fit_model)
    run.start_micro, run.rows = state["micro_step"], state["metrics"]
    print(
        f"kft: resuming from {resume_from.name} (step {state['optimizer_step']} of {run.optimizer_steps})",
        flush=True,
    )
    return before


def _fit(c: Config, run: _Run, run_dir: Path, out: Path, resume_from) -> None:
    """Keras' fit over the micro-batches left, with progress, checkpoints, W&B and TensorBoard."""
    import keras

    from kft.core.progress import Progress
    from kft.training import checkpoint, tracking

    if run.batches is None:
        run.batches = _batches(c, run.dataset, run.micro_steps, run.start_micro)
    progress_cb = Progress(
        run.batches,
        run.micro_steps,
        c.train.grad_accum,
        c.train.log_every,
        run.schedule,
        out / "metrics.jsonl",
        start_micro=run.start_micro,
        records=run.rows,
    )
    checkpoint_cb = checkpoint.Checkpointer(
        out,
        c.train.checkpoint_every,
        c.train.checkpoint_keep,
        c.train.grad_accum,
        run.micro_steps,
        run.start_micro,
        progress_cb,
    )
    run.tracker = tracking.start(
        c.output.wandb if out == run_dir else "", out, c.to_dict(), resuming=resume_from is not None
    )
    run.periodic = _periodic_eval(c, run, out, progress_cb)
    # Progress first, then evaluations: a checkpoint, and W&B, get the metrics rows of their step.
    callbacks = [
        progress_cb,
        *([run.periodic] if run.periodic else []),
        checkpoint_cb,
        *tracking.callbacks(run.tracker, progress_cb),
    ]
    if c.output.tensorboard:
        callbacks.append(
            keras.callbacks.TensorBoard(str(out / "tensorboard"), update_freq=c.train.log_every)
        )
    print(
        f"kft: training {run.optimizer_steps} steps (batch {c.train.batch_size} x accumulation "
        f"{c.train.grad_accum})",
        flush=True,
    )
    started = time.perf_counter()
    # The decode programs' kept copies (kernels, bfloat16 vocabulary): not while training.
    decode_kernels.release(run.task.backbone)
    screened_argmax.release(run.task.backbone)
    step_ahead.finish(run.compiling)
    if run.start_micro < run.micro_steps:
        # shuffle=False: Keras would reorder a PyDataset's batches, and our order is part of what resumes.
        keras.Model.fit(
            run.fit_model, run.batches, epochs=1, verbose=0, callbacks=callbacks, shuffle=False
        )
    _stop_if_interrupted(checkpoint_cb, run_dir)
    run.metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    losses = [r["loss"] for r in progress_cb.records if "loss" in r]
    run.metrics["first_loss"], run.metrics["final_loss"] = losses[0], losses[-1]
    if run.periodic:
        run.metrics.update(run.periodic.summary())
        if c.train.keep_best:
            from kft.training import periodic_eval

            step = periodic_eval.restore_best(out, run.task.backbone)
            run.metrics["adapter_step"] = step
            print(
                f"kft: the run's adapter is step {step}'s, the best {run.periodic.key} of "
                f"{run.metrics['evaluations']} evaluations (the last step's is in checkpoints/)",
                flush=True,
            )


def _periodic_eval(c: Config, run: _Run, out: Path, progress_cb):
    """The evaluations while training (train.eval_every), or None."""
    if not c.train.eval_every:
        return None
    from kft.training import periodic_eval  # a keras.callbacks.Callback: after backend.setup()

    split, metric = run.dataset.eval, c.output.metric
    if c.train.objective != "sft":
        evaluate = pair_run.evaluation_while_training(c, run)
    elif metric == "none":

        def evaluate():
            loss = evaluation.eval_loss(run.fit_model, split, c.train.batch_size, "evaluating")
            return {"eval_loss": loss}
    else:
        n = min(c.train.eval_samples, len(split.prompts))
        subset = replace(split, prompts=split.prompts[:n], references=split.references[:n])

        def evaluate():
            result = evaluation.measure(
                run.task,
                run.fit_model,
                subset,
                metric,
                c.train.batch_size,
                c.output.sample_max_new_tokens,
                with_loss=True,
                label="evaluating",
            )
            decode_kernels.release(run.task.backbone)  # not kept while training
            screened_argmax.release(run.task.backbone)
            return {"eval_loss": result["loss"], metric: result["score"]}

    key, higher = periodic_eval.measure_key(c.train.keep_best, metric)
    return periodic_eval.PeriodicEval(
        evaluate,
        c.train.eval_every,
        c.train.grad_accum,
        run.start_micro,
        run.micro_steps,
        progress_cb,
        out,
        key,
        higher,
        c.train.early_stop,
        bool(c.train.keep_best),
        periodic_eval.tensorboard_scalars(out / "tensorboard" / "eval")
        if c.output.tensorboard
        else None,
    )


def _save(
    c: Config, run: _Run, run_dir: Path, out: Path, before: dict, after: dict, xla
) -> TrainResult:
    """Samples, the adapter (and GPTQ's calibration), summary.json, loss.png, W&B's summary, the report."""
    from kft.training import tracking

    metrics = run.metrics
    after.pop("outputs", None)
    for when, result in (("before", before), ("after", after)):
        if "loss" in result:
            metrics[f"eval_loss_{when}"] = result["loss"]
        for key, value in result.get("pairs", {}).items():  # held-out pairs (preference runs)
            metrics[f"pairs_{key}_{when}"] = value
            metrics["pairs_measured_on"] = (
                "held-out" if run.dataset.eval is not None else "training"
            )
        if result["score"] is not None:
            metrics[f"{c.output.metric}_{when}"] = result["score"]
    samples = [
        {"prompt": p, "reference": r, "before": b, "after": a}
        for p, r, b, a in zip(
            run.prompt_split.prompts,
            run.prompt_split.references,
            before["generations"],
            after["generations"],
        )
    ]
    _write_jsonl(out / "samples.jsonl", samples)
    adapter.save(
        out,
        run.task.backbone,
        {
            "base_preset": c.model.preset,
            "family": run.family,
            "rank": c.lora.rank,
            "alpha": lora.alpha_of(c.lora.rank, c.lora.alpha),
            "rslora": c.lora.rslora,
            "targets": lora.target_names(c.lora.targets),
            "dtype": run.policy,
            "template": c.data.template,
            "objective": c.train.objective,
            **(
                {"continued_from": adapter.INIT_ADAPTER}
                if run.continued
                else {"init_adapter": adapter.INIT_ADAPTER}
                if c.model.init_adapter
                else {}
            ),
            **quantize.settings(c.model.quantize, c.model.int4_block_size, run.rounding),
        },
    )
    quantize.save_calibration(out, run.task)
    metrics["xla"] = {**xla.stop().as_dict(), "before": before.get("xla"), "after": after["xla"]}
    metrics["host_peak_gb"] = round(backend.host_peak_gb(), 3)  # this process's resident peak
    (out / "summary.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    report.plot_run(out)
    tracking.finish(run.tracker, metrics, samples)
    _report(metrics, out)
    return TrainResult(task=run.task, run_dir=run_dir, metrics=metrics, fit_model=run.fit_model)


def _calibration(c: Config, records, eval_records, built: dict, task) -> dict:
    """GPTQ's calibration inputs (`model.int4_rounding: gptq`): the first training examples, as the
    training split orders them. Without packing, the dataset built for them is the run's own: it
    goes into `built`, so the records are not tokenized twice."""

    dataset = _builder(c)(
        records,
        task.preprocessor.tokenizer,
        replace(c.data, packing=False),
        c.train.seed,
        num_prompts=c.output.samples,
        eval_records=eval_records,
    )
    if not c.data.packing:
        built["dataset"] = dataset
    split = dataset.train.chosen if c.train.objective != "sft" else dataset.train
    return gptq.calibration_inputs(split, c.model.calibration_examples)


def _batches(c: Config, dataset, micro_steps: int, start_micro: int):
    """The training micro-batches from `start_micro` on, as this process feeds them (its rows of every global batch)."""
    return distribution.local_batches(
        data_lib.batches(
            dataset.train,
            c.train.batch_size,
            micro_steps,
            c.train.seed,
            start=start_micro,
            trained_only=c.train.logits_on == "trained",
            pad_to_multiple=c.train.pad_to_multiple,
            group_by_length=c.train.group_by_length,
            program_cost_steps=data_lib.PROGRAM_COST_STEPS,
        )
    )


def _stop_if_interrupted(checkpoint_cb, run_dir: Path) -> None:
    from kft.training import checkpoint

    if checkpoint_cb.diverged_at is not None:
        last = checkpoint.latest(run_dir)
        raise checkpoint.Diverged(
            f"the loss became NaN/Inf at step {checkpoint_cb.diverged_at}; training stopped. Last good checkpoint: "
            f"{last or 'none'}. Lower train.lr, set train.clip_norm, or use model.precision float32"
        )
    if checkpoint_cb.signal_received:
        raise checkpoint.Interrupted(
            f"interrupted by {checkpoint_cb.signal_received}; checkpoint {checkpoint.latest(run_dir).name} written. "
            f"Resume with: kft train --resume {run_dir}"
        )
