"""Which quantized layers move a tiny model's loss and LoRA gradients: quantize one kind at a time.

    python scripts/quantized_layer_kinds.py --family gemma4     # about a minute on 2 CPU cores

The tiny backbone of tests/test_quantize.py (random weights), LoRA r4 on every linear layer with
the same A in every copy, B = 0. For int8 and int4 (kft's defaults: weights only, groups of 64,
least-squares ranges) it quantizes all of kft's layers, all but some, or one kind only, and prints
the loss's relative change and the cosine of the LoRA-B gradients with the float base's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="gemma4", choices=("gemma", "gemma2", "gemma3", "gemma4"))
    args = parser.parse_args()

    from kft import backend

    backend.setup()
    import keras
    import numpy as np

    from kft import lora, quantize
    from kft.errors import KftError
    from quantize_helpers import batch, clone, cosine, loss_and_lora_grads, tiny_backbone

    base = tiny_backbone(args.family)
    kft_layers = quantize.decoder_filter(base)

    def probe(mode, wanted, source=None):
        model = clone(base)
        if mode != "none":
            quantize.apply(model, mode, filters=wanted)
        lora.enable(model, 4, 8.0, ["all-linear"])
        if source is not None:
            for path, variable in lora.lora_variables(model).items():
                variable.assign(source[path])
        loss, grads = loss_and_lora_grads(model, *batch())
        return loss, grads, {p: np.asarray(v.numpy()) for p, v in lora.lora_variables(model).items()}

    def only(*names):
        return lambda layer: kft_layers(layer) and any(name in layer.path for name in names)

    variants = {
        "all (kft's default)": kft_layers,
        "all but embeddings": lambda layer: kft_layers(layer) and type(layer) is not keras.layers.Embedding,
        "all but per-layer inputs": lambda layer: kft_layers(layer) and "per_layer" not in layer.path,
        "attention only": only("attention"),
        "feed-forward only": only("ffw"),
        "query only": only("query"), "key only": only("key"), "value only": only("value"),
        "attention output only": only("attention_output"),
    }
    float_loss, float_grads, source = probe("none", None)
    print(f"{args.family}: float loss {float_loss:.4f}")
    for mode in ("int8", "int4"):
        for name, wanted in variants.items():
            try:
                loss, grads, _ = probe(mode, wanted, source)
            except KftError as error:  # no layer of that kind in this family
                print(f"{mode} {name}: {type(error).__name__}: {str(error)[:80]}")
                continue
            print(f"{mode} {name}: loss {abs(loss - float_loss) / float_loss:.2e} from float, "
                  f"LoRA-B gradient cosine {cosine(grads, float_grads):.4f}", flush=True)


if __name__ == "__main__":
    main()
