"""Measuring a model on an eval split: loss on its trained tokens, greedy answers, a task metric."""

from __future__ import annotations

from kft import config as config_lib
from kft.data import dataset, preference
from kft.distribute import distribution
from kft.evaluate import answers_and_loss, scoring
from kft.generation import loading, samplers, sampling
from kft.models import adapter
from kft.quant import frozen_base, quantize


def compile_task(task, optimizer=None, logits_on: str = "all"):
    """Compile for training and loss: the token-mean loss (sum of weighted losses / sum of weights).

    Returns the model to fit and evaluate: `task` itself (full-vocabulary logits, Keras' sparse
    cross-entropy), or (logits_on="trained") a wrapper that computes the loss only at trained
    positions (see trained_logits). The task also gets a greedy sampler.
    """
    import keras

    from kft.core.errors import KftError
    from kft.models.trained_logits import PositionLoss, TrainedPositionsLM

    task.compile(sampler=samplers.make_sampler("greedy"))
    _build_preprocessor(task)
    if (
        logits_on == "trained"
        and optimizer is not None
        and task.backbone.token_embedding.trainable_weights
    ):
        # The trained-position loss gives the token embeddings no gradient (kft's LoRA freezes them).
        raise KftError(
            "train.logits_on: trained cannot train the token embeddings; set train.logits_on: all"
        )
    if logits_on == "trained":
        model, loss = TrainedPositionsLM(task), PositionLoss()
    else:
        model = task
        loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        )
    keras.Model.compile(model, optimizer=optimizer or "adam", loss=loss)
    _build_compiled_loss(model)
    return model


def compile_preference(task, optimizer, objective: str, beta: float, orpo_lambda: float):
    """Compile for preference tuning (kft.models.preference): the model to fit returns each answer's
    summed log-prob; the loss is DPO's or ORPO's, with reward accuracy, margin and the answers'
    log-probs as metrics. The task also gets a greedy sampler."""
    import keras

    from kft.models import preference as objectives  # not kft.data.preference (the pairs)

    task.compile(sampler=samplers.make_sampler("greedy"))
    _build_preprocessor(task)
    model = objectives.PreferenceLM(task)
    keras.Model.compile(
        model,
        optimizer=optimizer or "adam",
        loss=objectives.PreferenceLoss(objective, beta, orpo_lambda),
        metrics=objectives.metrics(objective, beta, orpo_lambda),
    )
    targets, outputs = (
        keras.KerasTensor((None,), "float32"),
        keras.KerasTensor((None, 2), "float32"),
    )
    for compiled in (model._compile_loss, model._compile_metrics):
        if compiled is not None and not compiled.built:
            compiled.build(targets, outputs)
    return model


def _build_compiled_loss(model) -> None:
    """Build Keras' compiled loss and metrics from placeholders. Keras builds them on the first train
    or test call with a symbolic pass over the whole model (`Trainer._symbolic_build`: ~2 s on the
    270M, every command); kft's losses and the task's metric need no more than these."""
    import keras

    targets = keras.KerasTensor((None, None), "int32")
    vocabulary = () if uses_trained_positions(model) else (model.backbone.vocabulary_size,)
    predictions = keras.KerasTensor((None, None, *vocabulary), "float32")
    for compiled in (model._compile_loss, model._compile_metrics):
        if compiled is not None and not compiled.built:
            compiled.build(targets, predictions)


def _build_preprocessor(task) -> None:
    """Build the task's preprocessor and its tokenizer and packer (they hold no weights): Keras'
    `test_on_batch` traces the whole model again (`_symbolic_build`, ~1 s per batch on the 270M)
    while any sublayer is unbuilt, and kft feeds token ids, so they never build themselves."""
    preprocessor = getattr(task, "preprocessor", None)
    if preprocessor is None:
        return
    if not preprocessor.built:
        preprocessor.build(None)  # makes the packer
    for layer in preprocessor._flatten_layers():
        if not layer.built:
            layer.build(None)


def uses_trained_positions(model) -> bool:
    from kft.models.trained_logits import TrainedPositionsLM

    return isinstance(model, TrainedPositionsLM)


# Prompts per generate call (fewer where their attention cache would not fit: sampling.CACHE_BUDGET);
# one chunk of 60 prompts is 1.1 s faster than two of 30 on the 270M (CPU).
GENERATE_BATCH = 64
# Eval batches hold this many times the training batch: a forward pass keeps no activations for a
# backward one, and bigger batches run faster (270M held-out pass on CPU: 10.5 s at 8 rows, 9.9 s at 16).
EVAL_BATCH_SCALE = 2


def eval_loss(model, split: dataset.Split, batch_size: int, label: str = "measuring") -> float:
    """Mean loss per trained target token over `split`: sum of weighted token losses / sum of weights.

    `batch_size` is the training batch; eval batches hold EVAL_BATCH_SCALE times as many rows."""
    total, weight = _loss_sums(model, split, batch_size, label)
    return total / weight if weight else float("nan")


def _loss_sums(model, split: dataset.Split, batch_size: int, label: str) -> tuple[float, float]:
    import keras

    from kft.core.progress import Counter

    batches = dataset.eval_batches(
        split, EVAL_BATCH_SCALE * batch_size, uses_trained_positions(model)
    )
    progress = Counter(f"{label}: eval loss", len(batches), "batches")
    total = weight = 0.0
    for x, y, w in batches:
        batch_weight = float(w.sum())
        if batch_weight > 0:
            x, y, w = distribution.local_batch(
                x, y, w
            )  # padded to the batch axis; this process's rows
            total += (
                keras.Model.test_on_batch(model, x, y, sample_weight=w, return_dict=True)["loss"]
                * batch_weight
            )
            weight += batch_weight
        progress.advance()
    progress.close()
    return total, weight


def measure(
    task,
    model,
    split: dataset.Split,
    metric: str,
    batch_size: int,
    max_new_tokens: int,
    with_loss: bool,
    label: str = "measuring",
) -> dict:
    """{'loss'?, 'generations', 'score', 'xla'}: greedy answers of `task`, loss of `model` (see compile_task).

    The sample prompts' examples get their answers and loss from one prefill where that applies
    (see answers_and_loss); the other examples go through the loss pass. Progress is reported as
    `kft: LABEL: 32/64 prompts` (one bar in a notebook)."""
    import jax

    from kft.core.compiles import Compiles
    from kft.core.progress import Counter

    tokenizer = task.preprocessor.tokenizer
    with Compiles() as compiles:
        progress = Counter(label, len(split.prompts), "prompts")
        one_pass = with_loss and uses_trained_positions(model) and jax.process_count() == 1
        prompts = answers_and_loss.rows_for(split, tokenizer) if one_pass else None
        total = weight = 0.0
        covered = 0
        if prompts is not None:
            ids, total, weight, covered = answers_and_loss.measure(
                task, split, prompts, max_new_tokens, GENERATE_BATCH, progress
            )
            generations = [sampling.detokenize(tokenizer, new) for new in ids]
        else:
            generations = sampling.generate(
                task,
                tokenizer,
                split.prompts,
                max_new_tokens,
                batch_size=GENERATE_BATCH,
                progress=progress,
            )
        progress.close()
        result = {
            "generations": generations,
            "score": scoring.score(metric, generations, split.references),
        }
        if with_loss:
            rest = split.select(slice(covered, None))
            if len(rest):
                rest_total, rest_weight = _loss_sums(model, rest, batch_size, label)
                total, weight = total + rest_total, weight + rest_weight
            result["loss"] = total / weight if weight else float("nan")
    result["xla"] = compiles.as_dict()  # a second measurement with the same shapes compiles nothing
    return result


def pair_outputs(model, pairs, batch_size: int, label: str = "measuring"):
    """(2N, 2) NumPy: [summed log-prob, answer tokens] of every pair's chosen and rejected answer
    (rows 2i, 2i+1) under `model` (compile_preference's)."""
    import keras
    import numpy as np

    from kft.core.progress import Counter

    batches = list(preference.eval_batches(pairs, EVAL_BATCH_SCALE * batch_size))
    progress = Counter(f"{label}: answer log-probs", len(pairs), "pairs")
    outputs = []
    for x, y, w, real in batches:
        x, y, w = distribution.local_batch(x, y, w)
        out = np.asarray(keras.Model.predict_on_batch(model, x), dtype="float32")
        outputs.append(out[: 2 * real])
        progress.advance(real)
    progress.close()
    return np.concatenate(outputs)


def measure_pairs(
    task,
    model,
    pairs,
    objective: str,
    beta: float,
    orpo_lambda: float,
    metric: str,
    batch_size: int,
    max_new_tokens: int,
    reference=None,
    label: str = "measuring",
) -> dict:
    """measure()'s generations and metric on the pairs' prompts (the chosen answer the reference
    text), and `pairs`: preference.summary of the held-out pairs against `reference` (the summed
    log-probs before training; None: this measurement is the reference). `outputs` holds the
    answers' log-probs (the reference of a later measurement); `pairs["loss"]` is the objective's
    loss on them."""
    from kft.models import preference as objectives  # not kft.data.preference (the pairs)

    result = measure(task, model, pairs.chosen, metric, batch_size, max_new_tokens, False, label)
    outputs = pair_outputs(model, pairs, batch_size, label)
    reference = outputs[:, 0] if reference is None else reference
    result["pairs"] = objectives.summary(objective, outputs, reference, beta, orpo_lambda)
    result["pairs"]["loss"] = float(
        objectives.loss(objective, outputs, reference, beta, orpo_lambda)
    )
    result["outputs"] = outputs
    return result


def evaluate_run(run_dir, base: bool = False, metric: str | None = None) -> dict:
    """Re-measure a run's eval split (or its sample prompts) with its adapter, or with the bare base model."""
    from pathlib import Path

    c = config_lib.load(str(Path(run_dir) / "config.yaml"))
    records, eval_records = dataset.load_sources(c.data)
    if base:  # the base the run trained on: as its adapter records it (int4 rounding, calibration)
        options = quantize.rebuild_options(adapter.read_config(run_dir), run_dir)
        task = frozen_base.load(c.model.preset, c.model.precision, c.model.quantize, **options)[0]
        adapter.merge_start(run_dir, task.backbone)  # model.init_adapter's run: part of the base
    else:
        task = loading.load_tuned(run_dir)
    t = c.train
    built = (dataset.build if t.objective == "sft" else preference.build)(
        records,
        task.preprocessor.tokenizer,
        c.data,
        t.seed,
        num_prompts=c.output.samples,
        eval_records=eval_records,
    )
    split = built.eval or built.train
    metric = metric or c.output.metric
    if t.objective != "sft":  # preference pairs: against the reference the run saved
        import sys

        split = preference.unpacked(split)
        model = compile_preference(task, None, t.objective, t.beta, t.orpo_lambda)
        reference = None if base else preference.saved_reference(run_dir, len(split))
        if reference is None and not base and t.objective == "dpo":
            print(
                f"kft: warning: {run_dir} holds no reference log-probs for these {len(split)} pairs; "
                "DPO's rewards are measured against this model itself (0)",
                file=sys.stderr,
                flush=True,
            )
        result = measure_pairs(
            task,
            model,
            split,
            t.objective,
            t.beta,
            t.orpo_lambda,
            metric,
            t.batch_size,
            c.output.sample_max_new_tokens,
            reference=reference,
        )
        result.pop("outputs")
        return {
            "model": "base" if base else "tuned",
            "metric": metric,
            "examples": len(split.prompts),
            **result,
        }
    model_for_loss = compile_task(task, logits_on=c.train.logits_on)
    result = measure(
        task,
        model_for_loss,
        split,
        metric,
        c.train.batch_size,
        c.output.sample_max_new_tokens,
        with_loss=built.eval is not None,
    )
    return {
        "model": "base" if base else "tuned",
        "metric": metric,
        "examples": len(split.prompts),
        **result,
    }
