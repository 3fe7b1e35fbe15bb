"""Checks that need several devices, run in a child process with 8 simulated CPU devices.

The rest of the suite runs with one device in the pytest process, and JAX fixes its device count
when it starts, so tests/test_distribution.py launches this file:

    python tests/distributed_checks.py fast|grid|train_grid  OUT.json  [PRESET_ROOT]

and asserts on the JSON it writes. (Multi-process runs go through `kft train` itself.)
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("KFT_XLA_CACHE", "0")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

HEADS = {"8/1": (8, 1), "4/1": (4, 1), "8/4": (8, 4), "16/8": (16, 8), "16/16": (16, 16)}
MESHES = ("1x2", "2x4", "1x8", "8x1", "data")
FAST_HEADS, FAST_MESHES = ("8/1", "16/8"), ("2x4", "1x8", "data")


def preset(root: Path, heads: str, family: str = "gemma") -> str:
    """A tiny preset with `heads` query/KV heads (built once into root)."""
    from kft.models.tiny import build_tiny_preset

    q, kv = HEADS[heads]
    folder = root / f"{family}_{q}q{kv}kv"
    if not (folder / "config.json").is_file():
        build_tiny_preset(family, folder, num_query_heads=q, num_key_value_heads=kv)
    return str(folder)


def layout_case(path: str, mesh: str) -> dict:
    """Build under the distribution; report layouts, LoRA and optimizer placement, bytes per device."""
    import keras

    from kft.config import TrainConfig
    from kft.distribute import distribution, layouts
    from kft.evaluate import evaluation
    from kft.models import lora
    from kft.quant import frozen_base
    from kft.training import optim

    kind, mesh_text = ("data", "") if mesh == "data" else ("model", mesh)
    plan = distribution.setup(
        path, "float32", TrainConfig(distribution=kind, mesh=mesh_text, batch_size=8)
    )
    task, _, _ = frozen_base.load(path, "float32")
    held = distribution.verify(task, plan)
    current = keras.distribution.distribution()
    patterns = list(current._layout_map) if plan.kind == "model" else []
    base = {p: s for p, s in layouts.weight_shapes(task).items() if layouts.is_base_weight(p, s)}
    lora.enable(task.backbone, 2, None, ["all-linear"])
    optimizer, _ = optim.make_optimizer(TrainConfig(grad_accum=2), 4)
    fit_model = evaluation.compile_task(task, optimizer, "trained")
    optimizer.build(fit_model.trainable_variables)
    factors = lora.lora_variables(task.backbone)
    devices = plan.mesh[0] * plan.mesh[1]  # every device of the mesh holds a full copy
    return {
        "plan": plan.kind,
        "mesh": list(plan.mesh),
        "base_match_counts": {p: len(layouts.matches(patterns, p)) for p in base}
        if patterns
        else {},
        "lora_factors": len(factors),
        "lora_replicated": all(
            v.value.sharding.is_fully_replicated and len(v.value.sharding.device_set) == devices
            for v in factors.values()
        ),
        "optimizer_variables": len(optimizer.variables),
        "optimizer_replicated": all(
            v.value.sharding.is_fully_replicated and len(v.value.sharding.device_set) == devices
            for v in optimizer.variables
        ),
        "sharded_base": sum(
            not v.value.sharding.is_fully_replicated for v in task.backbone.weights
        ),
        "bytes_per_device": held,
    }


def train_case(path: str, mesh: str, out: Path, **overrides) -> dict:
    """A short LoRA run (float32, trained-positions loss, grad accumulation, a short eval batch)."""
    from safetensors.numpy import load_file

    import kft

    kind, mesh_text = {"single": ("single", ""), "data": ("data", "")}.get(mesh, ("model", mesh))
    settings = {
        "model.preset": path,
        "model.precision": "float32",
        "data.source": "bundled:tiny_facts",
        "data.template": "dolly",
        "data.seq_len": 64,
        "data.max_examples": 44,
        "data.eval_fraction": 0.25,
        "lora.rank": 4,
        "lora.alpha": 8.0,
        "lora.targets": ["all-linear"],
        "train.epochs": None,
        "train.max_steps": 3,
        "train.batch_size": 8,
        "train.grad_accum": 2,
        "train.lr": 0.01,
        "train.log_every": 1,
        "train.distribution": kind,
        "train.mesh": mesh_text,
        "output.samples": 1,
        "output.sample_max_new_tokens": 4,
        "output.tensorboard": False,
        "output.dir": str(out / mesh),
        **overrides,
    }
    result = kft.train(**settings)
    tensors = load_file(str(result.run_dir / "adapter.safetensors"))
    meta = json.loads((result.run_dir / "adapter_config.json").read_text())
    return {
        "losses": [r["loss"] for r in json_rows(result.run_dir)],
        "int4_rounding": meta.get("int4_rounding"),
        "eval_loss_after": result.metrics.get("eval_loss_after"),
        "pairs_after": {  # preference runs: the held-out pairs' figures
            k: v
            for k, v in result.metrics.items()
            if k.startswith("pairs_") and k.endswith("_after")
        },
        "mesh": result.metrics["mesh"],
        "adapter": {k: v.ravel().tolist() for k, v in tensors.items()},
        "adapter_dtypes": sorted({str(v.dtype) for v in tensors.values()}),
        "samples": (result.run_dir / "samples.jsonl").is_file(),
    }


def fact_pairs(path: Path, short: bool = False) -> str:
    """The bundled fact table as preference pairs (chosen: the fact's answer; rejected: the next's);
    `short`: a prompt column and one-word answers (data.template text), two pairs a packed row."""
    from kft.data.bundled import FOLDER

    rows = [json.loads(line) for line in open(FOLDER / "tiny_facts.jsonl", encoding="utf-8")]
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            answers = [r["response"] for r in (row, rows[(i + 1) % len(rows)])]
            if short:
                answers = [a.split()[-1] for a in answers]
            pair = {"prompt" if short else "instruction": row["instruction"], "chosen": answers[0]}
            f.write(json.dumps({**pair, "rejected": answers[1]}) + "\n")
    return str(path)


def built_first(root: Path) -> str | None:
    """The error a distribution set after the model was built gets (None if accepted)."""
    from kft.distribute import distribution
    from kft.quant import frozen_base

    path = preset(root, "8/1")
    task, _, _ = frozen_base.load(path, "float32")  # built on one device, with no distribution
    try:
        from kft.config import TrainConfig

        distribution.verify(
            task, distribution.setup(path, "float32", TrainConfig(distribution="model", mesh="1x8"))
        )
    except Exception as e:  # noqa: BLE001 - the test checks the type and message
        return f"{type(e).__name__}: {e}"
    return None


def placement_case(root: Path, mesh: str = "") -> dict:
    """A GPTQ int4 base loaded as on a GPU/TPU machine, device 7 playing the host and device 1 the
    accelerator (kft.distribute.placement), alone or under a model-parallel `mesh` on the first devices: where
    the quantization ran, what each device held at most while it did beyond what it ends with, where
    the variables ended, and whether the logits equal a one-device load's."""
    import jax
    import keras
    import numpy as np

    from kft.config import TrainConfig
    from kft.distribute import distribution, placement
    from kft.models.tiny import build_tiny_preset
    from kft.quant import frozen_base, int4_refit

    path = (
        root / "gemma3_12_layers"
    )  # enough blocks that one block's float weights are a small part
    if not (path / "config.json").is_file():
        build_tiny_preset(
            "gemma3", path, num_layers=12, hidden_dim=128, intermediate_dim=512, head_dim=32
        )
    path = str(path)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 250, size=(12, 16)).astype("int32")
    mask = np.arange(16)[None, :] < rng.integers(6, 17, size=(12, 1))
    calibration = {"token_ids": ids * mask, "padding_mask": mask}
    probe = {"token_ids": ids[:2], "padding_mask": np.ones((2, 16), bool)}

    def load():
        task, _, _ = frozen_base.load(
            path, "float32", "int4", int4_rounding="gptq", calibration=calibration
        )
        return task

    host, accelerator = jax.devices()[-1], jax.devices()[1]
    keras.distribution.set_distribution(None)
    with jax.default_device(host):  # the references stay off the devices watched below
        expected = np.asarray(load()(probe))
        float_decoder = sum(
            v.value.nbytes
            for v in frozen_base.load(path, "float32")[0].backbone.weights
            if v.path.startswith("decoder_block")
        )
    if mesh:
        distribution.setup(
            path, "float32", TrainConfig(distribution="model", mesh=mesh, batch_size=4), "int4"
        )
    seen = {"hessians": set(), "codes": set(), "peak": {}}
    refit, devices = int4_refit.refit, placement._devices

    def held():  # bytes per device, each buffer once (a shard's `data` is another live array on the same buffer)
        buffers = {}
        for a in jax.live_arrays():
            for shard in a.addressable_shards:
                buffers[shard.device, shard.data.unsafe_buffer_pointer()] = shard.data.nbytes
        sizes = {}
        for (device, _), size in buffers.items():
            sizes[device] = sizes.get(device, 0) + size
        return sizes

    def watched(layer, float_kernel, hessian=None):
        seen["hessians"].add(str(getattr(hessian, "device", None)))
        seen["codes"].add(str(layer._kernel.value.device))
        for device, size in held().items():
            seen["peak"][device] = max(seen["peak"].get(device, 0), size)
        return refit(layer, float_kernel, hessian)

    placement._devices, int4_refit.refit = (lambda: (host, accelerator)), watched
    try:
        task = load()
    finally:
        placement._devices, int4_refit.refit = devices, refit
    final = held()
    beyond = {
        str(d): (peak - final.get(d, 0)) / float_decoder
        for d, peak in seen["peak"].items()
        if d != host
    }
    logits = np.asarray(task(probe))
    keras.distribution.set_distribution(None)
    return {
        "hessians": sorted(seen["hessians"]),
        "codes": sorted(seen["codes"]),
        "accelerator": str(accelerator),
        # what each device held, beyond what it ends with, while the base was rounded
        "peak_beyond_final": beyond,
        "variables": sorted({str(d) for v in task.variables for d in v.value.sharding.device_set}),
        "sharded": sum(not v.value.sharding.is_fully_replicated for v in task.variables),
        "specs": {
            v.path: [a for a in getattr(v.value.sharding, "spec", ())]
            for v in task.variables
            if v.path.startswith("decoder_block_0/attention/")
        },
        "logits_equal": bool(np.array_equal(logits, expected)),
        "logits_rel": float(np.abs(logits - expected).max() / np.abs(expected).max()),
    }


def quantized_mesh_case(root: Path, family: str, mode: str, mesh: str) -> dict:
    """A tiny `family` preset's `mode` base (int4 rounded by GPTQ) laid out on `mesh` (kft.distribute.placement):
    its logits against a one-device load's, and how many variables are sharded."""
    import keras
    import numpy as np

    from kft.config import TrainConfig
    from kft.distribute import distribution
    from kft.models.tiny import build_tiny_preset
    from kft.quant import frozen_base

    keras.distribution.set_distribution(None)  # the cases before leave theirs set
    path = root / f"{family}_default"
    if not (path / "config.json").is_file():
        build_tiny_preset(family, path)
    ids = np.random.default_rng(0).integers(3, 200, (4, 12)).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
    if family == "gemma4":
        x["position_ids"] = np.tile(np.arange(12, dtype="int32"), (4, 1))
    options = {"int4_rounding": "gptq", "calibration": dict(x)} if mode == "int4" else {}
    expected = np.asarray(frozen_base.load(str(path), "float32", mode, **options)[0](x))
    plan = distribution.setup(
        str(path), "float32", TrainConfig(distribution="model", mesh=mesh, batch_size=8), mode
    )
    task = frozen_base.load(str(path), "float32", mode, **options)[0]
    distribution.verify(task, plan)
    logits = np.asarray(task(x))
    keras.distribution.set_distribution(None)
    return {
        "logits_rel": float(np.abs(logits - expected).max() / np.abs(expected).max()),
        "sharded": sum(not v.value.sharding.is_fully_replicated for v in task.variables),
    }


def json_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main(check: str, out_file: str, root: str) -> None:
    from kft.core import backend

    backend.setup()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    results = {}
    if check == "fast":  # first, while no distribution is set
        results["placement"] = placement_case(root)
        results["placement 2x2"] = placement_case(root, "2x2")
        results["built_first"] = built_first(root)  # leaves a distribution set
    if check in ("fast", "grid"):
        heads, meshes = (FAST_HEADS, FAST_MESHES) if check == "fast" else (tuple(HEADS), MESHES)
        for h in heads:
            for mesh in meshes:
                results[f"{h} {mesh}"] = layout_case(preset(root, h), mesh)
        if check == "grid":  # every family's layout, Gemma 3 on the hardest ratio
            results["gemma3 4/1 1x8"] = layout_case(preset(root, "4/1", "gemma3"), "1x8")
            results["gemma2 16/8 2x4"] = layout_case(preset(root, "16/8", "gemma2"), "2x4")
            for family in (
                "gemma",
                "gemma2",
                "gemma3",
                "gemma4",
                "llama",
                "llama3",
                "mistral",
                "qwen",
                "qwen3",
            ):  # a quantized base, laid out after quantizing
                for mode in ("int8", "int4"):
                    for mesh in ("2x4", "1x8"):
                        results[f"quantized {family} {mode} {mesh}"] = quantized_mesh_case(
                            root, family, mode, mesh
                        )
    if check in ("fast", "train_grid"):
        meshes = (
            ("single", "2x4") if check == "fast" else ("single", "1x2", "2x4", "1x8", "8x1", "data")
        )
        for (
            mesh
        ) in meshes:  # float32 greedy samples under each mesh of the full grid, and under 2x4 here
            results[f"train {mesh}"] = train_case(
                preset(root, "8/1"),
                mesh,
                root / "runs" / check,
                **{"output.samples": 0 if check == "fast" and mesh == "single" else 1},
            )
        # An int4 base rounded by GPTQ (model.int4_rounding auto), alone and on a model axis (the
        # full grid: data parallel too).
        if check in ("fast", "train_grid"):
            for mesh in ("single", "2x4") if check == "fast" else ("single", "data"):
                results[f"train {mesh} int4"] = train_case(
                    preset(root, "8/1"),
                    mesh,
                    root / "runs" / f"{check}_int4",
                    **{
                        "model.quantize": "int4",
                        "model.calibration_examples": 16,
                        "output.samples": 0,
                    },
                )
        if check == "train_grid":  # DPO: pairs of rows, the reference in the batches, on a mesh
            for mesh in ("single", "2x4"):
                results[f"train dpo {mesh}"] = train_case(
                    preset(root, "8/1"),
                    mesh,
                    root / "runs" / f"{check}_dpo",
                    **{
                        "data.source": fact_pairs(root / "pairs.jsonl"),
                        "train.objective": "dpo",
                        "output.samples": 0,
                    },
                )
                results[f"train dpo packed {mesh}"] = train_case(  # rows of 2 pairs
                    preset(root, "8/1"),
                    mesh,
                    root / "runs" / f"{check}_dpo_packed",
                    **{
                        "data.source": fact_pairs(root / "short_pairs.jsonl", short=True),
                        "data.template": "text",
                        "data.packing": True,
                        "train.batch_size": 2,
                        "train.objective": "dpo",
                        "output.samples": 0,
                    },
                )
        if (
            check == "train_grid"
        ):  # a Llama-style family: untied head, q/k/v biases, its own layout roles
            for mesh in ("single", "2x4"):
                results[f"train qwen {mesh}"] = train_case(
                    preset(root, "8/1", "qwen"),
                    mesh,
                    root / "runs" / f"{check}_qwen",
                    **{"output.samples": 0},
                )
        if check == "fast":  # its int8 and GPTQ int4 bases laid out on a mesh
            for mode in ("int8", "int4"):
                results[f"quantized qwen {mode} 2x4"] = quantized_mesh_case(
                    root, "qwen", mode, "2x4"
                )
        # Kaggle's TPU v5e-8 default: data parallel over 8 devices under mixed_bfloat16 (what
        # `model.precision: auto` picks on a TPU), with a sample generated after training.
        results["train data mixed_bfloat16"] = train_case(
            preset(root, "8/1"),
            "data",
            root / "runs" / f"{check}_bf16",
            **{"model.precision": "mixed_bfloat16", "output.samples": 1},
        )
    Path(out_file).write_text(json.dumps(results))


if __name__ == "__main__":
    main(
        sys.argv[1],
        sys.argv[2],
        sys.argv[3] if len(sys.argv) > 3 else os.path.join(os.environ["KFT_CACHE"], "grid"),
    )
