"""LoRA gradients on a quantized base against the float base, on the real Gemma 3 270M.

    python benchmarks/quantized_gradients.py                          # int8, int4 (kft's), int4-full, nf4
    python benchmarks/quantized_gradients.py --int4-block 32 --modes int4

Modes: int8 and int4 as kft quantizes (int4: groups of --int4-block rows, least-squares ranges);
int4-full: the same groups with Keras' own full ranges; nf4: a reference, not a kft mode, the
kernels rounded to bitsandbytes' NF4 code (QLoRA's 4-bit) in blocks of --int4-block and kept float.

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
    parser.add_argument(
        "--int4-block", type=int, default=None, help="int4 group size (default: kft's)"
    )
    parser.add_argument("--modes", default="int8,int4,int4-full,nf4")
    args = parser.parse_args()

    from kft.core import backend

    backend.setup()
    import keras
    import numpy as np
    from quantize_helpers import clone, cosine, loss_and_lora_grads

    from kft import config as config_lib
    from kft.config import DataConfig
    from kft.data import dataset
    from kft.models import lora, presets
    from kft.quant import frozen_base, quantize

    block = args.int4_block or config_lib.INT4_BLOCK_SIZE
    task, _, _ = frozen_base.load(str(presets.prepare("gemma3_270m_gguf")), "float32")
    config = DataConfig(source="bundled:person_json", template="dolly", seq_len=80)
    split = dataset.build(
        dataset.load_records(config), task.preprocessor.tokenizer, config, 0
    ).train
    rows = np.arange(8)
    batch = (split.inputs(rows), split.targets[rows], split.loss_weights[rows])
    results, source = {}, None
    for mode in ("none", *args.modes.split(",")):
        backbone = clone(task.backbone)
        if mode == "nf4":
            round_to_nf4(backbone, block)
        elif mode.startswith("int4"):
            quantize.apply(
                backbone,
                "int4",
                int4_block_size=block,
                int4_ranges="full" if mode == "int4-full" else "least-squares",
            )
        else:
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
        groups = f" (groups of {block})" if mode in ("int4", "int4-full", "nf4") else ""
        print(
            f"{mode}{groups}: loss {loss:.4f} ({abs(loss - base_loss) / base_loss:.1%} from float), "
            f"LoRA-B gradient cosine {cosine(grads, base_grads):.4f}"
        )


# bitsandbytes' NF4 code (QLoRA): 16 quantiles of a normal distribution, scaled by each block's absmax.
NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]


def round_to_nf4(backbone, block: int) -> None:
    """Round the kernels kft would quantize to NF4 in blocks of `block` along the contracted axes (as
    bitsandbytes blocks a torch weight's rows), in place, kept float."""
    import keras
    import numpy as np
    from keras.src.layers.core.einsum_dense import _analyze_quantization_info

    from kft.quant import quantize

    code = np.array(NF4, np.float32)
    wanted = quantize.decoder_filter(backbone)
    for layer in backbone._flatten_layers():
        if type(layer) not in (keras.layers.Dense, keras.layers.EinsumDense) or not wanted(layer):
            continue
        kernel = np.asarray(layer.kernel)
        reduced = (
            [0]
            if type(layer) is keras.layers.Dense
            else list(_analyze_quantization_info(layer.equation, layer.input_spec.ndim)[1])
        )
        kept = [a for a in range(kernel.ndim) if a not in reduced]
        moved = np.transpose(kernel, kept + reduced)
        rows = moved.reshape(-1, int(np.prod([kernel.shape[a] for a in reduced])))
        pad = -rows.shape[1] % block
        blocks = np.pad(rows, ((0, 0), (0, pad))).reshape(rows.shape[0], -1, block)
        absmax = np.abs(blocks).max(-1, keepdims=True) + 1e-12
        nearest = np.abs(blocks[..., None] / absmax[..., None] - code).argmin(-1)
        rounded = (code[nearest] * absmax).reshape(rows.shape[0], -1)[:, : rows.shape[1]]
        layer.kernel.assign(np.transpose(rounded.reshape(moved.shape), np.argsort(kept + reduced)))


if __name__ == "__main__":
    main()
