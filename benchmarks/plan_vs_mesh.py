"""`kft plan` per device against what XLA allocates per device, on meshes of 8 simulated CPU devices.

    python benchmarks/plan_vs_mesh.py                   # ~3 minutes on 2 CPU cores
    python benchmarks/plan_vs_mesh.py --quantize int4   # the base quantized (nearest codes), laid out after

A small Gemma 3 (4 layers, hidden 256, 8 query / 2 KV heads, feed-forward 1024) saved as a real
preset, LoRA r8 on every linear layer, float32, batch 8 x 256 with every position trained (the
plan's worst case). For each mesh kft sets up the distribution as `kft train` does, builds the
training step Keras runs (`train_step`, the state donated, kft's shardings) and reads XLA's own
accounting of one device's buffers for it (`compiled.memory_analysis()`: arguments + outputs -
aliased + temporaries). The plan's figure is its per-device peak without the fixed runtime line
(`plan.CPU_RUNTIME_GB`, the Python/JAX process itself, which is not a device buffer) and, with
`--quantize`, without the float base a CPU's allocator keeps after quantizing (host memory too).
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("KFT_XLA_CACHE", "0")

import argparse  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

MESHES = ("1x1", "8x1", "2x4", "1x8")


def measure(
    preset: str, mesh: str, batch: int, seq_len: int, quantize: str = "none"
) -> tuple[float, float]:
    """(planned GB, XLA-measured GB) per device for one training step on `mesh`."""
    import jax
    import keras
    import numpy as np
    from keras.src.backend.jax.trainer import _distribute_data

    from kft import config as config_lib
    from kft import plan
    from kft.distribute import distribution
    from kft.evaluate import evaluation
    from kft.models import lora
    from kft.quant import frozen_base
    from kft.quant import quantize as quantize_lib
    from kft.training import optim

    c = config_lib.from_dict(
        {
            "model": {
                "preset": preset,
                "precision": "float32",
                "quantize": quantize,
                "int4_rounding": "least-squares",
            },
            "lora": {"rank": 8, "targets": ["all-linear"]},
            "data": {"seq_len": seq_len, "loss_on": "all"},
            "train": {
                "batch_size": batch,
                "mesh": "" if mesh == "1x1" else mesh,
                "distribution": "single"
                if mesh == "1x1"
                else ("data" if mesh.endswith("x1") else "model"),
            },
        }
    )
    keras.distribution.set_distribution(None)
    mesh_plan = distribution.setup(preset, "float32", c.train, quantize, c.model.int4_block_size)
    devices, model_axis = mesh_plan.mesh[0] * mesh_plan.mesh[1], mesh_plan.mesh[1]
    planned = plan.make(
        c, device_memory=16e9, devices=devices, model_axis=model_axis, accelerator="cpu"
    )
    task, _, _ = frozen_base.load(preset, "float32", quantize, **quantize_lib.options(c))
    lora.enable(task.backbone, 8, None, ["all-linear"])
    optimizer, _ = optim.make_optimizer(c.train, 10)
    fit_model = evaluation.compile_task(task, optimizer, "trained")
    tokens = np.random.default_rng(0).integers(4, 600, (batch, seq_len + 1)).astype("int32")
    from kft.data.dataset import gather_trained

    positions, targets, weights = gather_trained(
        np.ones((batch, seq_len), "float32"), tokens[:, 1:]
    )
    x = {
        "token_ids": tokens[:, :-1],
        "padding_mask": np.ones((batch, seq_len), bool),
        "positions": positions,
        "targets": targets,
    }
    fit_model.train_on_batch(x, targets, sample_weight=weights)  # builds optimizer and metrics
    state = fit_model._get_jax_state(
        trainable_variables=True,
        non_trainable_variables=True,
        optimizer_variables=True,
        metrics_variables=True,
        purge_model_variables=False,
    )
    shardings = (
        (None, fit_model._get_state_sharding_spec()) if keras.distribution.distribution() else None
    )
    step = jax.jit(fit_model.train_step, donate_argnums=0, out_shardings=shardings)
    memory = step.lower(state, _distribute_data((x, targets, weights))).compile().memory_analysis()
    measured = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )
    keras.distribution.set_distribution(None)
    host = plan.CPU_RUNTIME_GB + sum(
        gb for label, gb in planned.lines if label.startswith("float base read")
    )
    return planned.training - host, measured / 1e9  # the train step: training, not measuring


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--quantize", default="none", choices=("none", "int8", "int4"))
    args = parser.parse_args()
    from kft.core import backend

    backend.setup()
    from kft.models.tiny import build_tiny_preset

    folder = Path(tempfile.mkdtemp(prefix="kft-plan-mesh-")) / "gemma3"
    preset = str(
        build_tiny_preset(
            "gemma3",
            folder,
            num_layers=4,
            hidden_dim=256,
            intermediate_dim=1024,
            num_query_heads=8,
            num_key_value_heads=2,
            head_dim=32,
        )
    )
    print(
        f"Gemma 3, 4 layers, hidden 256, LoRA r8 all-linear, float32, {args.quantize} base, batch {args.batch} x "
        f"{args.seq_len}, 8 simulated CPU devices"
    )
    print(
        "| mesh (batch x model) | planned per device (GB) | XLA per device (GB) | planned/measured |"
    )
    print("|---|---|---|---|")
    for mesh in MESHES:
        planned, measured = measure(preset, mesh, args.batch, args.seq_len, args.quantize)
        print(f"| {mesh} | {planned:.3f} | {measured:.3f} | {planned / measured:.2f} |", flush=True)


if __name__ == "__main__":
    main()
