"""Choosing and setting the keras.distribution of a run: one device, data parallel or model parallel.

The distribution is set before the preset loads: Keras gives each variable its layout when it is
created (large ones are created sharded), so a model larger than one device can load. To choose
it, the model is first built *abstract* (variables with paths and shapes but no values, see
`model.weights_from_preset_only`), which costs no memory; the layouts are then derived from those
real shapes (kft.distribute.layouts) and the bytes per device computed from them. A quantized base is the
exception: it is built without the distribution and laid out once quantized (kft.distribute.placement), so
its mesh is chosen by its quantized bytes (`quantized`).

Multi-host (TPU pods, several GPU hosts): every process runs the same `kft train`; `connect`
joins them (keras.distribution.initialize); each process feeds its own rows of every global batch
(`local_batches`); only process 0 writes the run folder (`run_folder`).
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kft import families
from kft.config import quantized_bytes_per_param
from kft.core import backend
from kft.core.arithmetic import ceil_div
from kft.core.errors import KftError
from kft.distribute import layouts
from kft.models import model, presets

KINDS = ("auto", "single", "data", "model")
# Weights may take this share of a device's memory; the rest is for activations, LoRA and optimizer
# state and XLA's workspace. A simple rule, kept in one function (`fits`) so a planner can replace it.
WEIGHT_SHARE = 0.7


@dataclass
class Plan:
    kind: str  # single | data | model
    mesh: tuple  # (batch, model) axis sizes
    weight_bytes: int  # one full copy of the weights
    reason: str

    @property
    def batch_axis(self) -> int:
        return self.mesh[0]


def parse_mesh(text: str) -> tuple[int, int] | None:
    """'2x4' -> (2, 4); '' -> None."""
    if not text:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise KftError(f"train.mesh must be BATCHxMODEL such as 1x8 or 2x4, got '{text}'")
    return int(parts[0]), int(parts[1])


# ---- multi-host ------------------------------------------------------------------------------


def connect() -> None:
    """Join the other processes of a multi-host run when KERAS_DISTRIBUTION_* are set (before any JAX work)."""
    import jax

    if not any(os.environ.get(name) for name in backend.ENV) or jax.distributed.is_initialized():
        return
    import keras

    keras.distribution.initialize()
    print(
        f"kft: process {jax.process_index()} of {jax.process_count()}, "
        f"{jax.local_device_count()} local / {jax.device_count()} devices",
        flush=True,
    )


def is_primary() -> bool:
    """True on the process that writes files (process 0; the only one on a single host)."""
    import jax

    return jax.process_index() == 0


def anywhere(flag: bool) -> bool:
    """True if `flag` is true on any process (the same answer on every process)."""
    import jax

    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.array([int(flag)]))).any())


def barrier(name: str) -> None:
    """Wait until every process gets here."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def run_folder(run_dir: Path) -> tuple[Path, Path]:
    """(the run folder every process reads, the folder this process writes into).

    The path is process 0's (its `{time}` may differ from ours by a second); the others write into a
    scratch folder nobody reads, so the recipe stays one code path. The run folder must be on a
    filesystem every host sees for `--resume`.
    """
    import jax

    if jax.process_count() == 1:
        return run_dir, run_dir
    import numpy as np
    from jax.experimental import multihost_utils

    raw = np.zeros(4096, dtype=np.uint8)
    encoded = str(run_dir).encode()
    raw[: len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
    shared = Path(
        bytes(np.asarray(multihost_utils.broadcast_one_to_all(raw))).rstrip(b"\0").decode()
    )
    if is_primary():
        return shared, shared
    scratch = tempfile.mkdtemp(prefix=f"kft-process{jax.process_index()}-")
    atexit.register(shutil.rmtree, scratch, True)
    return shared, Path(scratch)


# ---- choosing --------------------------------------------------------------------------------


def abstract_weights(path: str, policy: str) -> dict:
    """{variable path: (shape, bytes per element)} of the preset's backbone, built without values."""
    import keras
    import keras_hub
    import numpy as np
    from keras_hub.src.utils.preset_utils import get_preset_loader

    from kft.models.model import text_only_build, weights_from_preset_only

    keras.distribution.set_distribution(None)  # so that no variable gets a value
    kwargs, _ = text_only_build(get_preset_loader(path))  # Gemma 4: no image and audio towers
    with weights_from_preset_only():
        backbone = keras_hub.models.Backbone.from_preset(
            path, dtype=policy, load_weights=False, **kwargs
        )
    weights = {v.path: (tuple(v.shape), np.dtype(v.dtype).itemsize) for v in backbone.weights}
    del backbone
    return weights


def quantized(weights: dict, mode: str, int4_block_size: int) -> dict:
    """`weights` with the bytes per element kft's `model.quantize` gives them: the decoder blocks'
    kernels and Gemma 4's per-layer embedding (kft.quant.quantize.decoder_filter). A quantized base is
    built on the host and laid out on the mesh after (kft.distribute.placement), so these bytes choose the mesh."""
    if mode == "none":
        return weights
    size = quantized_bytes_per_param(mode, int4_block_size)
    return {
        p: (
            shape,
            size
            if (p.startswith(families.BLOCK_PREFIXES) and p.endswith("/kernel"))
            or p.endswith("per_layer_token_embedding/embeddings")
            else itemsize,
        )
        for p, (shape, itemsize) in weights.items()
    }


def shapes(weights: dict) -> dict:
    return {p: shape for p, (shape, _) in weights.items()}


def bytes_per_device(weights: dict, mesh: tuple[int, int]) -> int:
    """The largest share of the weights one device holds under kft's layouts on `mesh` (from shapes only)."""
    mesh_shape = dict(zip(layouts.AXES, mesh))
    specs = layouts.specs(shapes(weights), mesh_shape)
    total = 0
    for path, (shape, itemsize) in weights.items():
        found = layouts.matches(specs, path)
        spec = specs[found[0]] if found else (None,) * len(shape)
        total += (
            math.prod(ceil_div(size, (mesh_shape[a] if a else 1)) for size, a in zip(shape, spec))
            * itemsize
        )
    return int(total)


def device_memory() -> int | None:
    """Bytes of memory of one accelerator, or None where JAX does not say (CPU)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def fits(weight_bytes: int, memory: int | None) -> bool:
    """Whether weights of this size leave room for LoRA training on a device of `memory` bytes."""
    return memory is None or weight_bytes <= WEIGHT_SHARE * memory


def choose(kind: str, mesh_text: str, weights: dict, devices: int, memory: int | None) -> Plan:
    """The distribution for `train.distribution` / `train.mesh` on `devices` devices of `memory` bytes."""
    if kind not in KINDS:
        raise KftError(f"train.distribution must be one of {', '.join(KINDS)}, got '{kind}'")
    total = int(sum(math.prod(shape) * itemsize for shape, itemsize in weights.values()))
    mesh = parse_mesh(mesh_text)
    if kind == "single":
        if mesh and mesh != (1, 1):
            raise KftError(
                f"train.mesh {mesh_text} conflicts with train.distribution single; leave train.mesh empty"
            )
        return Plan("single", (1, 1), total, "asked for one device")
    if mesh is not None and mesh[0] * mesh[1] > devices:
        raise KftError(
            f"train.mesh {mesh_text} needs {mesh[0] * mesh[1]} devices, but JAX sees {devices}; "
            f"use a mesh whose sizes multiply to at most {devices}"
        )
    if kind == "data":
        if mesh and mesh[1] != 1:
            raise KftError(
                f"train.distribution data replicates the model: train.mesh must be Nx1, got {mesh_text}"
            )
        return Plan("data", mesh or (devices, 1), total, "asked for data parallel")
    if mesh is not None:  # model, or auto with a mesh
        if kind == "auto" and mesh[1] == 1:
            return Plan("data", mesh, total, f"mesh {mesh_text} has no model axis")
        return Plan("model", mesh, total, f"mesh {mesh_text} as asked")
    if kind == "auto" and devices == 1:
        return Plan("single", (1, 1), total, "one device")
    if kind == "auto" and fits(total, memory):
        return Plan("data", (devices, 1), total, "the model fits one device")
    # Smallest model axis that fits; first those that divide the query heads (heads stay whole).
    heads = min(
        (s[0] for p, s in shapes(weights).items() if p.endswith("attention/query/kernel")),
        default=1,
    )
    axes = [m for m in range(2, devices + 1) if devices % m == 0]
    for m in sorted(axes, key=lambda m: (heads % m != 0, m)):
        if fits(bytes_per_device(weights, (devices // m, m)), memory):
            return Plan(
                "model", (devices // m, m), total, f"model axis {m}: the smallest that fits"
            )
    m = max(axes, default=1)
    return Plan(
        "model",
        (devices // m, m),
        total,
        f"even model axis {m} may not fit ({_size(memory)} per device)",
    )


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def activate(plan: Plan, weights: dict) -> None:
    """Set the keras.distribution `plan` describes (None for one device)."""
    import keras

    dist = keras.distribution
    if plan.kind == "single":
        dist.set_distribution(None)
        return
    devices = dist.list_devices()
    used = plan.mesh[0] * plan.mesh[1]
    if used < len(devices):
        import jax

        if jax.process_count() > 1:
            raise KftError(
                f"train.mesh {plan.mesh[0]}x{plan.mesh[1]} leaves devices out; a multi-host mesh must use "
                f"all {len(devices)}"
            )
        devices = devices[:used]  # a mesh on the first devices only (say 2 GPUs of 4)
    if plan.kind == "data":
        dist.set_distribution(
            dist.DataParallel(devices=devices, auto_shard_dataset=False)
        )  # kft feeds per process
        return
    mesh = dist.DeviceMesh(plan.mesh, layouts.AXES, devices)
    dist.set_distribution(
        dist.ModelParallel(
            layout_map=layouts.layout_map(shapes(weights), mesh),
            batch_dim_name=layouts.B,
            auto_shard_dataset=False,
        )
    )


def setup(
    preset: str, precision: str, train, quantize: str = "none", int4_block_size: int = 64
) -> Plan:
    """Choose and set the distribution `train` (the config's TrainConfig) asks for, before the preset
    loads, for weights quantized as `quantize` says; check its batch size against the mesh; print the
    decision."""
    import jax

    policy = model.resolve_precision(precision)
    path = presets.resolve(preset)
    model.family_of_config(path)  # a non-Gemma preset is refused before anything is built
    with model.preset_errors(preset, path):
        weights = abstract_weights(path, policy)
    plan = choose(
        train.distribution,
        train.mesh,
        quantized(weights, quantize, int4_block_size),
        jax.device_count(),
        device_memory(),
    )
    check_batch(train.batch_size, plan)
    activate(plan, weights)
    what = {"single": "one device", "data": "data parallel", "model": "model parallel"}[plan.kind]
    layout = (
        f"; layouts: {layouts.describe(shapes(weights), dict(zip(layouts.AXES, plan.mesh)))}"
        if plan.kind == "model"
        else ""
    )
    print(
        f"kft: {what} on {plan.mesh[0] * plan.mesh[1]} of {jax.device_count()} "
        f"{jax.default_backend()} device(s), mesh {plan.mesh[0]}x{plan.mesh[1]} "
        f"(batch x model): {plan.reason}{layout}",
        flush=True,
    )
    return plan


# ---- after loading ---------------------------------------------------------------------------


def measured_bytes_per_device(model) -> int:
    """The largest share of `model`'s weights one device holds, from the arrays' own shardings."""
    per_device = {}
    for v in model.weights:
        value = v.value
        for shard in value.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values())


def verify(model, plan: Plan) -> int:
    """Check the built model is laid out as `plan` says; print and return its weight bytes per device.

    A model built before the distribution was set sits on one device: that is refused, since
    Keras cannot move it under layouts afterwards.
    """
    import keras

    current = keras.distribution.distribution()
    wanted = 1 if plan.kind == "single" else plan.mesh[0] * plan.mesh[1]
    for v in model.weights:
        if len(v.value.sharding.device_set) != wanted:
            raise KftError(
                f"the model was built before the {plan.kind}-parallel distribution was set ({v.path} is "
                f"on {len(v.value.sharding.device_set)} device(s), not {wanted}); set the distribution "
                "first, then load the preset (kft.train does so)"
            )
    if plan.kind == "model":
        layouts.check(current._layout_map, layouts.weight_shapes(model))
    held = measured_bytes_per_device(model)
    print(
        f"kft: weights {_size(plan.weight_bytes)}, {_size(held)} per device "
        f"(device memory: {_size(device_memory())})",
        flush=True,
    )
    return held


def check_batch(batch_size: int, plan: Plan) -> None:
    """The global batch must split evenly over the batch axis (and so over the processes feeding it)."""
    if batch_size % plan.batch_axis:
        raise KftError(
            f"train.batch_size {batch_size} does not divide by the mesh's batch axis {plan.batch_axis} "
            f"(mesh {plan.mesh[0]}x{plan.mesh[1]}); use a multiple of {plan.batch_axis}"
        )


def local_batches(batches):
    """`batches` (a PyDataset of global (x, y, w) batches) as this process feeds them (`local_batch`)."""
    import keras

    class Local(keras.utils.PyDataset):
        def __len__(self):
            return len(batches)

        def __getitem__(self, i):
            return local_batch(*batches[i])

        def __getattr__(self, name):  # tokens(), indices() of the wrapped batches
            return getattr(batches, name)

    return Local()


def local_batch(x: dict, y, w):
    """A global batch as this process feeds it under the current distribution: a short (last eval)
    batch padded to a multiple of the batch axis with rows of weight 0, then this process's rows."""
    import jax
    import keras
    import numpy as np

    current = keras.distribution.distribution()
    if current is None:
        return x, y, w
    multiple = dict(zip(current.device_mesh.axis_names, current.device_mesh.shape))[
        current.batch_dim_name
    ]
    short = -len(w) % multiple
    if short:  # copies of row 0 that weigh nothing: no trained position (-1), no loss weight
        fill = {"positions": -1, "targets": 0}
        x = {
            k: np.concatenate(
                [
                    v,
                    np.full((short, *v.shape[1:]), fill[k], v.dtype)
                    if k in fill
                    else np.repeat(v[:1], short, 0),
                ]
            )
            for k, v in x.items()
        }
        y, w = (
            np.concatenate([y, np.repeat(y[:1], short, 0)]),
            np.concatenate([w, np.zeros((short, *w.shape[1:]), w.dtype)]),
        )
    if jax.process_count() == 1:
        return x, y, w
    # The rows this process's devices hold; make_array_from_process_local_data joins them.
    shape = (len(w), x["token_ids"].shape[1])
    index = (
        current.get_data_layout(shape)
        .backend_layout.addressable_devices_indices_map(shape)
        .values()
    )
    rows = slice(min(i[0].start or 0 for i in index), max(i[0].stop or shape[0] for i in index))
    return {k: v[rows] for k, v in x.items()}, y[rows], w[rows]
