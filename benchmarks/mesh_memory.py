"""Weight bytes per device under kft's layouts for real Gemma shapes, and step time on 8 simulated devices.

    python benchmarks/mesh_memory.py            # both parts
    python benchmarks/mesh_memory.py --no-timing

Part 1 needs no weights: each backbone is built *abstract* (variables with paths and shapes, no
values: kft.models.model.weights_from_preset_only), kft.distribute.layouts lays it out on a 1x8 and a 2x4 mesh of 8
simulated CPU devices, and the bytes each device would hold are read from abstract arrays carrying
those NamedShardings (`sharding.shard_shape`). Compared with 16 GB, the HBM of a TPU v5e chip and
of a T4. Base weights in bfloat16 (KerasHub's mixed_bfloat16 keeps float32 variables: twice this).

Part 2 times LoRA training steps of a tiny Gemma (8 query / 1 KV heads) on one CPU device and on
meshes of 8 simulated CPU devices. The simulated devices share this machine's cores, so the ratio
says nothing about TPUs or GPUs; it shows only the overhead of partitioning on CPU.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("KFT_XLA_CACHE", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

# Architecture of each model as KerasHub's backbone takes it (from the Hugging Face configs;
# KerasHub's GemmaBackbone counts both gated halves in intermediate_dim).
MODELS = {
    "Gemma 2B (gemma_2b_en)": (
        "GemmaBackbone",
        dict(
            vocabulary_size=256000,
            num_layers=18,
            num_query_heads=8,
            num_key_value_heads=1,
            hidden_dim=2048,
            intermediate_dim=32768,
            head_dim=256,
        ),
    ),
    "Gemma 2 9B": (
        "GemmaBackbone",
        dict(
            vocabulary_size=256000,
            num_layers=42,
            num_query_heads=16,
            num_key_value_heads=8,
            hidden_dim=3584,
            intermediate_dim=28672,
            head_dim=256,
            use_post_ffw_norm=True,
            use_post_attention_norm=True,
        ),
    ),
    "Gemma 3 4B (text)": (
        "Gemma3Backbone",
        dict(
            vocabulary_size=262144,
            image_size=None,
            num_layers=34,
            num_query_heads=8,
            num_key_value_heads=4,
            hidden_dim=2560,
            intermediate_dim=10240,
            head_dim=256,
            use_query_key_norm=True,
        ),
    ),
    "Gemma 3 12B (text)": (
        "Gemma3Backbone",
        dict(
            vocabulary_size=262144,
            image_size=None,
            num_layers=48,
            num_query_heads=16,
            num_key_value_heads=8,
            hidden_dim=3840,
            intermediate_dim=15360,
            head_dim=256,
            use_query_key_norm=True,
        ),
    ),
    "Gemma 4 31B (text)": (
        "Gemma4Backbone",
        dict(
            vocabulary_size=262144,
            image_size=None,
            num_layers=60,
            num_query_heads=32,
            num_key_value_heads=16,
            num_global_key_value_heads=4,
            hidden_dim=5376,
            intermediate_dim=21504,
            head_dim=256,
            global_head_dim=512,
            sliding_window_size=1024,
            sliding_window_pattern=6,
            final_logit_soft_cap=30.0,
        ),
    ),
}
DEVICE_GB = 16


def abstract_weights(class_name: str, kwargs: dict) -> dict:
    """{path: (shape, itemsize)} of a bfloat16 backbone built without values."""
    import keras_hub
    import numpy as np

    from kft.models.model import weights_from_preset_only

    with weights_from_preset_only():
        backbone = getattr(keras_hub.models, class_name)(**kwargs, dtype="bfloat16")
    return {v.path: (tuple(v.shape), np.dtype(v.dtype).itemsize) for v in backbone.weights}


def per_device_from_shardings(weights: dict, mesh_shape: tuple) -> int:
    """Bytes on the fullest device, from abstract arrays carrying kft's NamedShardings."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from kft.distribute import layouts

    mesh = Mesh(np.array(jax.devices()).reshape(mesh_shape), layouts.AXES)
    specs = layouts.specs(
        {p: s for p, (s, _) in weights.items()}, dict(zip(layouts.AXES, mesh_shape))
    )
    total = 0
    for path, (shape, itemsize) in weights.items():
        found = layouts.matches(specs, path)
        spec = specs[found[0]] if found else (None,) * len(shape)
        array = jax.ShapeDtypeStruct(
            shape, "bfloat16", sharding=NamedSharding(mesh, PartitionSpec(*spec))
        )
        total += math.prod(array.sharding.shard_shape(array.shape)) * itemsize
    return total


def memory_table() -> list[dict]:
    rows = []
    for name, (cls, kwargs) in MODELS.items():
        weights = abstract_weights(cls, kwargs)
        total = sum(math.prod(s) * b for s, b in weights.values())
        row = {
            "model": name,
            "params_b": round(sum(math.prod(s) for s, _ in weights.values()) / 1e9, 2),
            "bf16_gb": round(total / 1e9, 2),
        }
        for mesh in ((1, 8), (2, 4)):
            held = per_device_from_shardings(weights, mesh)
            row[f"{mesh[0]}x{mesh[1]}_gb_per_device"] = round(held / 1e9, 2)
            row[f"{mesh[0]}x{mesh[1]}_share_of_16gb"] = round(held / (DEVICE_GB * 1e9), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def step_times(steps: int = 8) -> dict:
    """Seconds per optimizer step (after the first, which compiles) of a tiny run per mesh."""
    import kft
    from kft.models.tiny import build_tiny_preset

    root = Path(tempfile.mkdtemp(prefix="kft-mesh-"))
    preset = build_tiny_preset(
        "gemma", root / "tiny_8q1kv", num_query_heads=8, num_key_value_heads=1
    )
    times = {}
    for mesh in ("single", "data", "2x4", "1x8"):
        kind, text = {"single": ("single", ""), "data": ("data", "")}.get(mesh, ("model", mesh))
        result = kft.train(
            **{
                "model.preset": str(preset),
                "model.precision": "float32",
                "data.source": "bundled:tiny_facts",
                "data.seq_len": 64,
                "lora.targets": ["all-linear"],
                "train.epochs": None,
                "train.max_steps": steps,
                "train.batch_size": 8,
                "train.log_every": 1,
                "train.distribution": kind,
                "train.mesh": text,
                "output.samples": 0,
                "output.tensorboard": False,
                "output.dir": str(root / mesh),
            }
        )
        rows = [
            json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        times[mesh] = round((rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / (len(rows) - 1), 4)
    times.update(
        {f"{m}_vs_single": round(times[m] / times["single"], 2) for m in ("data", "2x4", "1x8")}
    )
    print(json.dumps({"seconds_per_step": times}), flush=True)
    return times


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-timing", action="store_true", help="Only the memory table.")
    args = parser.parse_args()
    from kft.core import backend

    backend.setup()
    memory_table()
    if not args.no_timing:
        step_times()
