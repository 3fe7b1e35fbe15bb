"""Measuring a model on an eval split: loss on its trained tokens, greedy answers, a task metric."""

from __future__ import annotations

from kft import data, sampling, scoring


def compile_task(task, optimizer=None) -> None:
    """Compile with the token-mean loss (sum of weighted losses / sum of weights) and a greedy sampler."""
    import keras

    task.compile(
        optimizer=optimizer or "adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
        sampler=sampling.make_sampler("greedy"),
    )


def eval_loss(task, split: data.Split, batch_size: int) -> float:
    """Mean loss per trained target token over `split` (Keras' own loss, as in training)."""
    import keras

    result = keras.Model.evaluate(task, split.inputs(), split.targets, sample_weight=split.loss_weights,
                                  batch_size=batch_size, verbose=0, return_dict=True)
    return float(result["loss"])


def measure(task, split: data.Split, metric: str, batch_size: int, max_new_tokens: int, with_loss: bool) -> dict:
    """{'loss'?, 'generations', 'score'} of `task` (compiled with a greedy sampler) on `split`."""
    generations = sampling.generate(task, task.preprocessor.tokenizer, split.prompts, max_new_tokens)
    result = {"generations": generations, "score": scoring.score(metric, generations, split.references)}
    if with_loss:
        result["loss"] = eval_loss(task, split, batch_size)
    return result


def evaluate_run(run_dir, base: bool = False, metric: str | None = None) -> dict:
    """Re-measure a run's eval split (or its sample prompts) with its adapter, or with the bare base model."""
    from pathlib import Path

    from kft import config as config_lib, loading, model

    c = config_lib.load(str(Path(run_dir) / "config.yaml"))
    records, eval_records = data.load_sources(c.data)
    task = model.load(c.model.preset, c.model.precision)[0] if base else loading.load_tuned(run_dir)
    dataset = data.build(records, task.preprocessor.tokenizer, c.data, c.train.seed, num_prompts=c.output.samples,
                         eval_records=eval_records)
    compile_task(task)
    split = dataset.eval or dataset.train
    metric = metric or c.output.metric
    result = measure(task, split, metric, c.train.batch_size, c.output.sample_max_new_tokens,
                     with_loss=dataset.eval is not None)
    return {"model": "base" if base else "tuned", "metric": metric, "examples": len(split.prompts), **result}
