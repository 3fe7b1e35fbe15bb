"""How many bits a quantized base needs for LoRA gradients within cosine 0.99 of the float base's.

    python benchmarks/gradient_bits.py                                  # tiny models, every family (~2 min)
    python benchmarks/gradient_bits.py --model gemma3_270m_gguf --variants int4,bits-4,bits-5,bits-6,gptq-4

The probe of tests/test_quantize.py (tiny random backbones, one batch, LoRA r4 with the same A in
every copy, B = 0) or, with --model gemma3_270m_gguf, the one of benchmarks/quantized_gradients.py (the
real 270M, 8 main-job examples, LoRA r8). Each variant changes every kernel kft quantizes and prints
the loss's change from float, the kernels' relative RMS error and the LoRA-B gradient cosine:

  int4     kft's int4 (Keras' int4 layers, groups of 64, least-squares ranges): the reference
  bits-B   the kernels rounded to B-bit codes as kft's int4 rounds them (Keras' groups of 64 rows,
           least-squares ranges; embeddings per row), kept float; bits-4 reproduces int4
  bound-4  the kernels plus white Gaussian noise of bits-4's squared error / (2 pi e / 12): the
           least squared error of any 4-bit code, scalar or vector, on uniformly distributed
           weights (Shannon's lower bound; the tiny models' weights are glorot-uniform). It does
           not bound the real model, whose weights are not uniform.
  gptq-4   4-bit GPTQ (Keras' `gptq_quantize_matrix`: error feedback through each layer's input
           Hessian), groups of 64 along the input features, kept float; the Hessians from each
           layer's inputs in the float model on batches apart from the probe's (tiny: 16 more
           random batches; the 270M: the next 64 main-job examples), enough for full rank
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

GROUP = 64
SLB_GAIN = (
    2 * 3.141592653589793 * 2.718281828459045 / 12
)  # uniform scalar code over Shannon's bound


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny (every family) or gemma3_270m_gguf")
    parser.add_argument("--families", default="gemma,gemma2,gemma3,gemma4")
    parser.add_argument(
        "--variants", default="int4,bits-4,bound-4,gptq-4,bits-5,bits-6,bits-7,bits-8"
    )
    args = parser.parse_args()

    from kft.core import backend

    backend.setup()
    variants = args.variants.split(",")
    if args.model == "tiny":
        from quantize_helpers import batch, tiny_backbone

        for family in args.families.split(","):
            calibration = [batch(seed)[0] for seed in range(1, 17)]
            report(family, tiny_backbone(family), batch(), calibration, variants, rank=4, alpha=8.0)
    else:
        base, probe_batch, calibration = real_model(args.model)
        report(args.model, base, probe_batch, calibration, variants, rank=8, alpha=16.0)


def real_model(name: str):
    import numpy as np

    from kft.config import DataConfig
    from kft.data import dataset
    from kft.models import presets
    from kft.quant import frozen_base

    task, _, _ = frozen_base.load(str(presets.prepare(name)), "float32")
    config = DataConfig(source="bundled:person_json", template="dolly", seq_len=80)
    split = dataset.build(
        dataset.load_records(config), task.preprocessor.tokenizer, config, 0
    ).train
    rows = np.arange(8)
    calibration = [split.inputs(np.arange(start, start + 8)) for start in range(8, 72, 8)]
    return (
        task.backbone,
        (split.inputs(rows), split.targets[rows], split.loss_weights[rows]),
        calibration,
    )


def report(name, base, probe_batch, calibration, variants, rank, alpha):
    import keras
    import numpy as np
    from quantize_helpers import clone, cosine, loss_and_lora_grads

    from kft.models import lora

    def probe(change, source=None):
        model = clone(base)
        errors = change(model) if change else []
        keras.utils.set_random_seed(0)
        lora.enable(model, rank, alpha, ["all-linear"])
        factors = lora.lora_variables(model)
        for path, variable in (
            factors.items() if source is not None else ()
        ):  # the same LoRA A everywhere
            variable.assign(source[path])
        loss, grads = loss_and_lora_grads(model, *probe_batch)
        return loss, grads, {p: np.asarray(v.numpy()) for p, v in factors.items()}, errors

    float_loss, float_grads, source, _ = probe(None)
    print(f"{name}: float loss {float_loss:.4f}", flush=True)
    inputs = None
    for variant in variants:
        if variant == "int4":
            change = kft_int4
        elif variant.startswith("bits-"):
            change = lambda model, bits=int(variant[5:]): round_kernels(model, bits)  # noqa: E731
        elif variant == "bound-4":
            change = lambda model: noisy_kernels(model, 4)  # noqa: E731
        elif variant == "gptq-4":
            inputs = inputs or layer_inputs(clone(base), calibration)
            change = lambda model: gptq_kernels(model, 4, inputs)  # noqa: E731
        else:
            raise SystemExit(f"unknown variant {variant}")
        loss, grads, _, errors = probe(change, source)
        rms = f", kernels' relative RMS error {np.mean(errors):.2%}" if errors else ""
        print(
            f"{name} {variant}: loss {abs(loss - float_loss) / float_loss:.2e} from float{rms}, "
            f"LoRA-B gradient cosine {cosine(grads, float_grads):.4f}",
            flush=True,
        )


def kft_int4(model) -> list:
    """kft's own int4 (real Keras int4 layers); no per-kernel errors to report."""
    from kft.quant import quantize

    quantize.apply(model, "int4")
    return []


def kernels(model):
    """(layer, reduced axes) for every kernel kft quantizes; an Embedding's reduced axes are None."""
    import keras
    from keras.src.layers.core.einsum_dense import _analyze_quantization_info

    from kft.quant import quantize

    wanted = quantize.decoder_filter(model)
    for layer in model._flatten_layers():
        if type(layer) is keras.layers.Embedding and wanted(layer):
            yield layer, None
        elif type(layer) in (keras.layers.Dense, keras.layers.EinsumDense) and wanted(layer):
            yield (
                layer,
                [0]
                if type(layer) is keras.layers.Dense
                else list(_analyze_quantization_info(layer.equation, layer.input_spec.ndim)[1]),
            )


def _weights(layer):
    return (
        layer.embeddings
        if hasattr(layer, "embeddings") and not hasattr(layer, "kernel")
        else layer.kernel
    )


def rounded(layer, reduced, bits: int):
    """`layer`'s weights rounded to `bits`-bit codes, as Keras and kft lay out int4."""
    import numpy as np

    from kft.quant import int4_groups

    w = np.asarray(_weights(layer), np.float32)
    top = 2 ** (bits - 1)
    if reduced is None:  # Keras' int4 Embedding: symmetric, one scale per row
        scale = np.abs(w).max(-1, keepdims=True) / (top - 1) + 1e-12
        return np.clip(np.round(w / scale), -top, top - 1) * scale
    rows = int(np.prod([w.shape[a] for a in reduced]))
    codes, scale, zero = int4_groups.fit(w.reshape(rows, -1), GROUP, (-top, top - 1))
    group = np.arange(rows) // GROUP
    return ((codes.astype(np.float32) - zero[group]) * scale[group]).reshape(w.shape)


def _assign(layer, value, errors):
    import numpy as np

    variable = _weights(layer)
    w = np.asarray(variable, np.float32)
    errors.append(float(np.sqrt(np.mean((value - w) ** 2) / np.mean(w**2))))
    variable.assign(value.astype(np.float32))


def round_kernels(model, bits: int) -> list:
    errors = []
    for layer, reduced in list(kernels(model)):
        _assign(layer, rounded(layer, reduced, bits), errors)
    return errors


def noisy_kernels(model, bits: int) -> list:
    import numpy as np

    rng = np.random.default_rng(0)
    errors = []
    for layer, reduced in list(kernels(model)):
        w = np.asarray(_weights(layer), np.float32)
        variance = np.mean((rounded(layer, reduced, bits) - w) ** 2) / SLB_GAIN
        _assign(layer, w + rng.normal(0.0, np.sqrt(variance), w.shape), errors)
    return errors


def layer_inputs(model, batches) -> dict:
    """{layer path: [its inputs in eager float forward passes over `batches`]} for kft's kernels."""
    import numpy as np

    seen, layers = {}, [layer for layer, reduced in kernels(model) if reduced is not None]
    for layer in layers:

        def hook(x, *rest, _layer=layer, _call=layer.call, **kwargs):
            seen.setdefault(_layer.path, []).append(np.asarray(x, np.float32))
            return _call(x, *rest, **kwargs)

        layer.call = hook
    for inputs in batches:
        inputs = dict(inputs)
        if "position_ids" in model.input:
            length = inputs["token_ids"].shape[1]
            inputs["position_ids"] = np.broadcast_to(
                np.arange(length, dtype="int32"), inputs["token_ids"].shape
            )
        model(inputs)
    return seen


def gptq_kernels(model, bits: int, inputs: dict) -> list:
    """GPTQ-rounded kernels (Keras' algorithm), kept float. Layers never called (embeddings, and
    Gemma 4's feed-forward projections, which their block multiplies by itself) are rounded as
    bits-B rounds them."""
    import numpy as np
    from keras import ops
    from keras.quantizers import GPTQConfig
    from keras.src.quantizers.gptq import gptq_quantize_matrix
    from keras.src.quantizers.quantizers import GPTQQuantizer

    config = GPTQConfig(dataset=None, tokenizer=None, weight_bits=bits, group_size=GROUP)
    quantizer = GPTQQuantizer(config)
    errors = []
    for layer, reduced in list(kernels(model)):
        if (
            layer.path not in inputs
        ):  # embeddings; Gemma 4's feed-forward, whose block reads `.kernel`
            _assign(layer, rounded(layer, reduced, bits), errors)
            continue
        w = np.asarray(layer.kernel, np.float32)
        kept = [a for a in range(w.ndim) if a not in reduced]
        moved = np.transpose(w, kept + reduced)
        out_in = moved.reshape(-1, int(np.prod([w.shape[a] for a in reduced])))  # [out, in]
        hessian = np.zeros((out_in.shape[1],) * 2)
        for x in inputs[layer.path]:
            x = x.reshape(-1, out_in.shape[1])  # the reduced axes are the input's last ones here
            hessian += 2.0 * x.T @ x
        hessian /= sum(x.size // out_in.shape[1] for x in inputs[layer.path])
        diagonal = np.diag(hessian).copy()
        diagonal[diagonal == 0] = 1.0
        hessian[np.diag_indices_from(hessian)] = diagonal + 0.01 * diagonal.mean()
        codes, scale, zero, g_idx = gptq_quantize_matrix(
            ops.convert_to_tensor(out_in),
            ops.convert_to_tensor(np.linalg.inv(hessian)),
            blocksize=128,
            group_size=GROUP,
            compute_scale_zero=quantizer.find_params,
        )
        codes, scale, zero, g_idx = (np.asarray(v) for v in (codes, scale, zero, g_idx))
        g_idx = g_idx.astype(np.int64)
        value = (codes - zero[:, g_idx]) * scale[:, g_idx]
        _assign(layer, np.transpose(value.reshape(moved.shape), np.argsort(kept + reduced)), errors)
    return errors


if __name__ == "__main__":
    main()
