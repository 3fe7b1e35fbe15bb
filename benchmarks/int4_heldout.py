"""The main job's held-out loss before training on a float, an int4 and a GPTQ-rounded int4 base.

    python benchmarks/int4_heldout.py [--bases float,least-squares,gptq] [--json OUT]   # ~3 min on 2 CPU cores

Each base is built as `kft train` builds it for configs/gemma3_270m_person_json.yaml (GPTQ calibrated
on the first `model.calibration_examples` training examples at `train.seed` 0) and scored on the 64
held-out people with LoRA off: the loss per answer token, as the run's "eval loss" before training.
"""

import argparse
import json
import sys
import time
from pathlib import Path

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "gemma3_270m_person_json.yaml")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", default="float,least-squares,gptq")
    parser.add_argument("--json", help="also write {base: held-out loss} here")
    args = parser.parse_args()
    from kft.core import backend

    backend.setup()
    from kft import config as config_lib
    from kft.data import dataset
    from kft.quant import frozen_base
    from kft.training import recipe

    c = config_lib.load(CONFIG)
    records, held_out = dataset.load_sources(c.data)
    losses = {}
    for base in args.bases.split(","):
        start = time.time()
        mode, rounding = ("none", "least-squares") if base == "float" else ("int4", base)
        options = (
            {}
            if mode == "none"
            else {
                "int4_rounding": rounding,
                "calibration": lambda task: recipe._calibration(c, records, held_out, {}, task),
            }
        )
        task, _, _ = frozen_base.load(c.model.preset, c.model.precision, mode, **options)
        split = dataset.build(
            records, task.preprocessor.tokenizer, c.data, c.train.seed, eval_records=held_out
        ).eval
        losses[base] = held_out_loss(task.backbone, split)
        print(
            f"{base}: held-out loss {losses[base]:.4f} ({time.time() - start:.0f} s with loading)",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(losses) + "\n")


def held_out_loss(backbone, split, rows: int = 16) -> float:
    import jax
    import numpy as np

    trainable, frozen = backbone.trainable_variables, backbone.non_trainable_variables
    embedding = [i for i, v in enumerate(trainable) if v is backbone.token_embedding.embeddings][0]

    @jax.jit
    def logits(values, frozen_values, inputs):
        hidden, _ = backbone.stateless_call(values, frozen_values, inputs)
        return backbone.token_embedding.stateless_call(
            [values[embedding]], [], hidden, reverse=True
        )[0]

    values, frozen_values = [v.value for v in trainable], [v.value for v in frozen]
    total = weight = 0.0
    for start in range(0, len(split), rows):
        index = slice(start, start + rows)
        z = np.asarray(logits(values, frozen_values, split.inputs(index)), np.float64)
        top = z.max(-1)
        log_normaliser = np.log(np.exp(z - top[..., None]).sum(-1)) + top
        target = np.take_along_axis(z, split.targets[index][..., None], -1)[..., 0]
        total += float(((log_normaliser - target) * split.loss_weights[index]).sum())
        weight += float(split.loss_weights[index].sum())
    return total / weight


if __name__ == "__main__":
    sys.exit(main())
