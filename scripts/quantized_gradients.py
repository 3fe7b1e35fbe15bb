"""LoRA gradients on a quantized base against the float base, on the real Gemma 3 270M.

    python scripts/quantized_gradients.py                    # int8 and int4 (Keras' int4 groups of 128)
    python scripts/quantized_gradients.py --int4-block 32    # int4 in groups of 32

One batch of 8 main-job examples (bundled:person_json, seq_len 80), LoRA r8/alpha 16 on every
linear layer with the same A in every copy, B = 0: prints each base's loss and the cosine of its
LoRA-B gradients with the float base's (about 8 minutes on 2 CPU cores: full-vocabulary logits).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int4-block", type=int, default=None, help="int4 group size (default: kft's)")
    parser.add_argument("--modes", default="int8,int4")
    args = parser.parse_args()

    from kft import backend

    backend.setup()
    import keras
    import numpy as np

    from kft import data, lora, model, presets, quantize
    from kft.config import DataConfig
    from quantize_helpers import clone, cosine, loss_and_lora_grads

    if args.int4_block:
        quantize.INT4_BLOCK_SIZE = args.int4_block
    task, _, _ = model.load(str(presets.prepare("gemma3_270m_gguf")), "float32")
    config = DataConfig(source="bundled:person_json", template="dolly", seq_len=80)
    split = data.build(data.load_records(config), task.preprocessor.tokenizer, config, 0).train
    rows = np.arange(8)
    batch = (split.inputs(rows), split.targets[rows], split.loss_weights[rows])
    results, source = {}, None
    for mode in ("none", *args.modes.split(",")):
        backbone = clone(task.backbone)
        quantize.apply(backbone, mode)
        keras.utils.set_random_seed(0)
        lora.enable(backbone, 8, 16.0, ["all-linear"])
        factors = lora.lora_variables(backbone)
        source = source or {p: v.numpy() for p, v in factors.items()}
        for path, variable in factors.items():
            variable.assign(source[path])
        results[mode] = loss_and_lora_grads(backbone, *batch)
        del backbone
    base_loss, base_grads = results.pop("none")
    print(f"none: loss {base_loss:.4f}")
    for mode, (loss, grads) in results.items():
        block = f" (groups of {quantize.INT4_BLOCK_SIZE})" if mode == "int4" else ""
        print(f"{mode}{block}: loss {loss:.4f} ({abs(loss - base_loss) / base_loss:.1%} from float), "
              f"LoRA-B gradient cosine {cosine(grads, base_grads):.4f}")


if __name__ == "__main__":
    main()
