"""The parts of a training run a preference objective (dpo, orpo) adds, on the recipe's run state:
DPO's reference log-probs (computed once before the first step, saved, read back on resume) and
the held-out pairs' evaluation while training. kft.training.recipe calls them in order."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kft.config import Config
from kft.data import preference
from kft.evaluate import evaluation
from kft.generation import decode_kernels, screened_argmax


def compute_reference(c: Config, run, out: Path) -> None:
    """DPO's reference: every training answer's summed log-prob under the model before its first
    step (the policy then is the reference: LoRA's B is 0, or the SFT run's adapter continues),
    computed once on the pairs unpacked and carried in the batches."""
    outputs = evaluation.pair_outputs(
        run.fit_model, preference.unpacked(run.dataset.train), c.train.batch_size, "reference"
    )
    run.dataset.train = preference.with_reference(run.dataset.train, outputs[:, 0])
    save_reference(out, run)


def save_reference(out: Path, run) -> None:
    preference.save_reference(
        out, getattr(run.dataset.train, "reference", None), run.eval_reference
    )


def load_reference(run_dir: Path, run) -> None:
    arrays = preference.load_reference(run_dir)
    if "train" in arrays:
        run.dataset.train = preference.with_reference(run.dataset.train, arrays["train"])
    run.eval_reference = arrays.get("eval")


def after_reference(c: Config, run) -> dict:
    return {"reference": run.eval_reference} if c.train.objective != "sft" else {}


def evaluation_while_training(c: Config, run):
    """Evaluation while training a preference objective: the held-out pairs' loss and figures
    against their reference (the before-measurement), and the metric on the first eval_samples
    prompts where output.metric is set."""
    t, metric = c.train, c.output.metric
    pairs = run.dataset.eval
    n = min(t.eval_samples, len(pairs.prompts)) if metric != "none" else 0
    prompts = replace(pairs.chosen, prompts=pairs.prompts[:n], references=pairs.references[:n])
    subset = replace(pairs, chosen=prompts)

    def evaluate():
        result = evaluation.measure_pairs(
            run.task,
            run.fit_model,
            subset,
            t.objective,
            t.beta,
            t.orpo_lambda,
            metric,
            t.batch_size,
            c.output.sample_max_new_tokens,
            reference=run.eval_reference,
            label="evaluating",
        )
        decode_kernels.release(run.task.backbone)  # not kept while training
        screened_argmax.release(run.task.backbone)
        figures = dict(result["pairs"])
        row = {"eval_loss": figures.pop("loss")}
        row.update({f"eval_{k}": v for k, v in figures.items()})
        return {**row, **({metric: result["score"]} if n else {})}

    return evaluate
