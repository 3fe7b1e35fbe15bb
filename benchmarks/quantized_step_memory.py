"""XLA's temporaries in a LoRA step on a quantized base: Keras' int8/int4 calls against kft's.

    python benchmarks/quantized_step_memory.py [--layers 8] [--rows 2 --length 128]

A made-up Gemma 3 whose decoder is most of it (hidden 1024, feed-forward 4096, vocabulary 256),
float32, LoRA r4 on every linear layer. For each base, the temporaries XLA assigns (its compiled
memory analysis, on this machine's backend) for the forward pass alone and for the loss and LoRA
gradients. Keras' calls dequantize each kernel from the stored codes alone, so nothing stops XLA
from doing all of them first; kft's make each one where it is used (kft.quant.kernels_where_used).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args(argv)
    from kft.core import backend

    backend.setup()
    import jax
    from test_kernels_where_used import _float_decoder_bytes, _step, _temporaries, _wide_backbone

    print(f"{jax.default_backend()}: {args.layers} layers, batch {args.rows} x {args.length}")
    print(
        "| base | calls | forward temporaries (GB) | gradient temporaries (GB) | float decoder (GB) |"
    )
    print("|---|---|---|---|---|")
    for mode, keras_calls in (
        ("none", False),
        ("int8", True),
        ("int8", False),
        ("int4", True),
        ("int4", False),
    ):
        backbone = _wide_backbone(mode, keras_calls=keras_calls, layers=args.layers)
        forward, gradient, values = _step(backbone, args.rows, args.length)
        decoder = _float_decoder_bytes(backbone) if mode != "none" else 0
        calls = "" if mode == "none" else ("Keras'" if keras_calls else "kft's")
        print(
            f"| {mode} | {calls} | {_temporaries(forward, values) / 1e9:.3f} "
            f"| {_temporaries(gradient, values) / 1e9:.3f} | {decoder / 1e9:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
