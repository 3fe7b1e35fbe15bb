"""An experiment, not a kft mode: the main job on a GPTQ-rounded 4-bit base.

    python scripts/gptq_main_job.py RUN_DIR      # ~10 minutes on 2 CPU cores (GPTQ ~5, the job ~4)

Runs `kft train --config configs/gemma3_270m_person_json.yaml --set model.quantize=int4` with kft's
int4 replaced by scripts/gradient_bits.py's `gptq-4`: every kernel kft quantizes is rounded by Keras'
GPTQ to 4-bit codes in groups of 64 along its input features and kept float (the same numbers an
int4 layer holding those codes would compute with). The Hessians come from each layer's inputs in
the float model on the first 64 training examples. The run's before/after measurement is on that
base; its adapter is not: a reload rebuilds kft's own int4 (the adapter says int4).
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))
CONFIG = str(REPO / "configs" / "gemma3_270m_person_json.yaml")
EXAMPLES = 64


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    from kft import backend

    backend.setup()
    import time

    import numpy as np

    import gradient_bits
    from kft import cli, config as config_lib, data, quantize
    from quantize_helpers import clone

    kft_apply = quantize.apply

    def gptq_apply(task, mode, **options):
        if mode != "int4":
            return kft_apply(task, mode, **options)
        start = time.time()
        c = config_lib.load(CONFIG)
        records, eval_records = data.load_sources(c.data)
        train = data.build(records, task.preprocessor.tokenizer, c.data, c.train.seed, eval_records=eval_records).train
        batches = [train.inputs(np.arange(row, row + 8)) for row in range(0, EXAMPLES, 8)]
        errors = gradient_bits.gptq_kernels(task.backbone, 4, gradient_bits.layer_inputs(clone(task.backbone), batches))
        print(f"gptq: {len(errors)} kernels rounded in {time.time() - start:.0f} s "
              f"(relative RMS error {np.mean(errors):.2%})", file=sys.stderr, flush=True)
        return len(errors)

    quantize.apply = gptq_apply
    cli.main(["train", "--config", CONFIG, "--output-dir", sys.argv[1], "--set", "model.quantize=int4"])


if __name__ == "__main__":
    main()
