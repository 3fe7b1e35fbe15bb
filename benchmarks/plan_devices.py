"""Which KerasHub presets fit a T4 and a v5e chip, by `kft plan` (sizes only): docs/quantization.md's table.

    python benchmarks/plan_devices.py [--presets gemma4_2b,gemma2_9b_en,gemma_7b_en]

Defaults of `kft train` (LoRA r4 on query/value, batch 1 x 256). T4: 16 GB, no bfloat16 (float32).
An int4 cell says how `model.int4_rounding: auto` rounds there: GPTQ where its work at load fits, else
the nearest codes.
v5e: one chip, 16 GB HBM, bfloat16 compute (precision auto on a TPU). The last column is what an int4
base takes at load (float32 variables on both): with GPTQ, host memory and the disk where its float
decoder kernels wait (kft.quant.parking); with the nearest codes, host memory.
"""

import argparse

DEVICES = {
    "T4 (16 GB, float32)": ("gpu", {"model.precision": "float32"}),
    "v5e chip (16 GB, bf16 compute)": ("tpu", {}),
}


def main(argv=None):
    from kft import config as config_lib
    from kft import plan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="gemma4_2b,gemma2_9b_en,gemma_7b_en")
    args = parser.parse_args(argv)
    print(
        "| preset | "
        + " | ".join(f"{d} none / int8 / int4" for d in DEVICES)
        + " | at load, int4: GPTQ / nearest |"
    )
    print("|---|" + "---|" * (len(DEVICES) + 1))
    for preset in args.presets.split(","):
        cells = []
        for accelerator, sets in DEVICES.values():
            parts = []
            for mode in ("none", "int8", "int4"):
                c = config_lib.load(None, {"model.preset": preset, "model.quantize": mode, **sets})
                p = plan.make(c, "16GB", accelerator=accelerator)
                rounding = (" (GPTQ)" if p.quantizing else " (nearest)") if mode == "int4" else ""
                parts.append(f"{p.peak:.1f} {'fits' if p.fits else 'no'}{rounding}")
            cells.append(" / ".join(parts))
        gptq = config_lib.load(
            None,
            {
                "model.preset": preset,
                "model.quantize": "int4",
                "model.int4_rounding": "gptq",
                **DEVICES["T4 (16 GB, float32)"][1],
            },
        )
        host = plan.make(gptq, "16GB", accelerator="gpu")
        cells.append(
            f"{host.host:.1f} GB RAM + {host.disk:.1f} GB disk / {host.host_as_it_loads:.1f} GB RAM"
        )
        print(f"| `{preset}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
