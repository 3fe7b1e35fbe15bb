"""A frozen, quantized base under LoRA (QLoRA the Keras way): `model.quantize: none | int8 | int4`.

Keras quantizes Dense/EinsumDense layers in place (`Model.quantize(mode, config, filters)`) and
`enable_lora` adds float LoRA factors beside the integer kernels, so the delta stays a float matmul.
What kft adds is the choice of what to quantize and how:

- weights only: Keras' int8 default also quantizes the activations, whose rounding the LoRA
  gradients then see; `Int8QuantizationConfig(activation_quantizer=None)` keeps them float
  (int4 is weight-only by default, in asymmetric groups of rows);
- int4's group ranges: Keras takes each group's full range; kft chooses the scale and zero point
  by least squares (`kft.quant.int4_groups`), in groups of 64 rows by default;
- the decoder blocks' projections only: the tied token embedding (`ReversibleEmbedding`) stays
  float. Quantized, its reverse (logits) path casts the hidden states to int8 with no useful
  gradient, and LoRA barely trains (tests/test_quantize.py shows the gradient collapse); kft's
  trained-positions loss also reads that matrix directly. Vision/audio encoders stay as they are.
  Gemma 4's per-layer token embedding (a plain lookup, no gradient through it) is quantized;
- layers whose parent reads `layer.kernel` and multiplies by it itself (KerasHub 0.32's
  Gemma4TextDecoderBlock does so for its feed-forward projections, a "HOTFIX" matmul) are quantized
  too, but Keras' `kernel` of a quantized layer is the raw integer codes (plus the LoRA delta),
  unscaled. kft gives those layer instances a subclass whose `kernel` is the dequantized kernel
  (Keras' own unpacking and scales) plus `(alpha/rank) * A @ B`: the stored weights stay integer and
  a float kernel exists only inside the step (`families.KERNEL_READERS`, tests/test_quantize.py).

Quantizing a float base is deterministic, so an adapter reloads bit for bit: float base -> the
same quantization -> `enable_lora` with the same targets -> assign the factors (kft never saves
Keras' merged-and-requantized kernels).
"""

from __future__ import annotations

import contextlib
import gc

from kft import families
from kft.config import INT4_BLOCK_SIZE, INT4_RANGES, INT4_ROUNDINGS, check_quantize, check_rounding
from kft.core import files
from kft.core.errors import KftError
from kft.distribute import placement
from kft.models import layer_classes
from kft.quant import gptq, int4_refit, kernels_where_used, quantize_on_load

CALIBRATION_FILE = "calibration.npz"  # beside an adapter whose base was rounded by GPTQ


def keras_config(mode: str, int4_block_size: int = INT4_BLOCK_SIZE):
    """The Keras QuantizationConfig for `mode`: weights only, activations left in float."""
    from keras.quantizers import Int4QuantizationConfig, Int8QuantizationConfig

    if mode == "int8":
        return Int8QuantizationConfig(weight_quantizer=None, activation_quantizer=None)
    return Int4QuantizationConfig(activation_quantizer=None, block_size=int4_block_size)


def decoder_filter(model):
    """Keras `filters` for `model`: projections inside decoder blocks, and plain (lookup-only)
    embeddings; not the tied token embedding (a ReversibleEmbedding)."""
    import keras

    def wanted(layer) -> bool:
        kind = type(layer)
        if kind is keras.layers.Embedding:
            return True
        return kind in (keras.layers.Dense, keras.layers.EinsumDense) and layer.path.startswith(
            families.BLOCK_PREFIXES
        )

    return wanted


def dequantize_kernel_readers(model) -> int:
    """Give the quantized layers in `families.KERNEL_READERS` a dequantizing `kernel`; return how many."""
    import keras

    swapped = 0
    for block in model._flatten_layers():
        readers = families.KERNEL_READERS.get(type(block).__name__)
        for name in readers.layers if readers else ():
            layer = getattr(block, name, None)
            if getattr(layer, "quantization_mode", None) not in (
                "int8",
                "int4",
            ) or layer_classes.has(layer, "dequantized"):
                continue
            if not isinstance(layer, keras.layers.EinsumDense):  # a KerasHub other than 0.32
                raise KftError(
                    f"model.quantize: {layer.path} is read by its block directly and is not an EinsumDense"
                )
            layer_classes.add(layer, "dequantized")
            swapped += 1
    return swapped


def apply(
    task,
    mode: str,
    filters="decoder",
    int4_block_size: int = INT4_BLOCK_SIZE,
    int4_ranges: str = "least-squares",
    int4_rounding: str = "least-squares",
    calibration=None,
    parked=None,
) -> int:
    """Quantize `task`'s frozen base in place (before LoRA is enabled); return how many layers.

    `filters` is Keras' own argument ("decoder": `decoder_filter`). int4 comes in groups of
    `int4_block_size` rows whose ranges are chosen as `int4_ranges` says (`INT4_RANGES`), and codes
    chosen as `int4_rounding` says (`INT4_ROUNDINGS`); GPTQ takes `calibration`: backbone inputs,
    or a function of the task that returns them. `parked`: a kft.quant.parking.Parking holding float
    kernels that `while_loading` put on disk, read back as GPTQ reaches them."""
    check_quantize(mode, task.dtype_policy.name)
    if mode == "none":
        return 0
    wanted = decoder_filter(task) if filters == "decoder" else filters
    if int4_ranges not in INT4_RANGES:
        raise KftError(f"int4 ranges must be one of {', '.join(INT4_RANGES)}, got '{int4_ranges}'")
    check_rounding(mode, int4_rounding, INT4_ROUNDINGS)
    gptq = mode == "int4" and int4_rounding == "gptq"
    if gptq and calibration is None:
        raise KftError("model.int4_rounding gptq needs calibration examples, and none were given")
    if gptq and int4_ranges != "least-squares":
        raise KftError("model.int4_rounding gptq works on kft's least-squares int4 ranges only")
    calibration = (calibration(task) if callable(calibration) else calibration) if gptq else None
    with _one_garbage_collection():
        _quantize_layers(
            task,
            mode,
            wanted,
            keras_config(mode, int4_block_size),
            refit=mode == "int4" and int4_ranges == "least-squares",
            calibration=calibration,
            parked=parked,
        )
    if gptq:
        task.kft_calibration = calibration
    dequantize_kernel_readers(task)
    kernels_where_used.tie(task)
    quantized = [
        layer
        for layer in task._flatten_layers()
        if getattr(layer, "quantization_mode", None) == mode
    ]
    if not quantized:
        raise KftError(f"model.quantize {mode}: no layer of this model could be quantized")
    return len(quantized)


@contextlib.contextmanager
def parking(mode: str, int4_rounding: str = "least-squares", **_):
    """Around a preset's loading and `apply`: for GPTQ, a kft.quant.parking.Parking where the float decoder
    kernels wait on disk for the calibration pass (None otherwise); removed at the end."""
    if not (mode == "int4" and int4_rounding == "gptq"):
        yield None
        return
    from kft.quant.parking import Parking

    parked = Parking()
    try:
        yield parked
    finally:
        parked.close()


@contextlib.contextmanager
def while_loading(
    mode: str,
    int4_block_size: int = INT4_BLOCK_SIZE,
    int4_ranges: str = "least-squares",
    int4_rounding: str = "least-squares",
    parked=None,
    **_,
):
    """Around a preset's loading: quantize the decoder's layers as their float kernels arrive
    (kft.quant.quantize_on_load), as `apply` would after; `apply` then does what is left. For GPTQ, whose
    calibration pass needs a block's float kernels when the block runs, the kernels go to `parked`
    (kft.quant.parking) instead."""
    if mode == "none" or (mode == "int4" and int4_rounding == "gptq" and parked is None):
        yield
        return
    import functools

    import keras

    refit = mode == "int4" and int4_ranges == "least-squares"
    layer_quantizer = functools.partial(
        quantize_layer, mode=mode, config=keras_config(mode, int4_block_size), refit=refit
    )
    wanted, label = decoder_filter(None), f"quantizing to {mode} as it loads"
    if mode == "int4" and int4_rounding == "gptq":
        # Lookup tables stay float until GPTQ's calibration pass has run, as on a whole read: the pass
        # reads Gemma 4's per-layer embedding before the blocks, and the codes must not depend on how
        # the base was loaded (an adapter reloads onto the same codes).
        decoder = wanted

        def wanted(layer):
            return decoder(layer) and not isinstance(layer, keras.layers.Embedding)

        layer_quantizer, label = (
            parked.park,
            "int4 (GPTQ): parking float kernels on disk as they load",
        )
    with _one_garbage_collection(), quantize_on_load.quantizing(wanted, layer_quantizer, label):
        yield


@contextlib.contextmanager
def _one_garbage_collection():
    """Keras' `Layer.__delattr__` runs a full `gc.collect()` for every variable it drops, i.e. for
    every kernel it quantizes: ~0.25 s each in a process holding TensorFlow, JAX and a model (126
    kernels in Gemma 3 270M, 294 in Gemma 2 9B). The dropped kernels hold no reference cycles, so
    reference counting frees them at once; one collection afterwards does the rest."""
    collect = gc.collect
    gc.collect = lambda generation=2: 0
    try:
        yield
    finally:
        gc.collect = collect
        gc.collect()


def _quantize_layers(
    model, mode: str, wanted, config, refit: bool, calibration=None, parked=None
) -> None:
    """`Model.quantize(mode, config=config, filters=wanted)` one layer at a time, for the layers not
    quantized yet (kft.quant.quantize_on_load does most of them while the preset loads), with progress on
    stderr (a 9B model's 294 kernels take minutes on a host CPU). With `calibration` (backbone inputs),
    the calibration tokens first run through the float backbone once, and each decoder block's layers
    are quantized, with GPTQ's codes, as soon as the block has run (`kft.quant.gptq.Hessians`); kernels
    `parked` on disk come back just before their block runs, or before they are quantized."""
    import sys

    import keras
    from keras.src.quantizers.utils import should_quantize_layer

    from kft.core.progress import Counter

    layers = [
        layer
        for layer in model._flatten_layers()
        if should_quantize_layer(layer, wanted)
        and len(list(layer._flatten_layers())) == 1
        and getattr(layer, "quantization_mode", None) is None
    ]
    if not layers:
        return
    how = " (GPTQ)" if calibration is not None else ""
    counter = Counter(
        f"quantizing to {mode}{how}", len(layers), "layers", timed=True, stream=sys.stderr
    )
    done = set()

    def restore(block):
        for layer in block._flatten_layers():
            parked.restore(layer)

    def quantize_one(layer, hessian=None):
        if parked is not None:
            parked.restore(layer)
        quantize_layer(layer, mode, config, refit, hessian)
        done.add(id(layer))
        counter.advance()

    if calibration is not None:
        called = [
            layer
            for layer in layers
            if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
        ]
        backbone = getattr(model, "backbone", model)
        with gptq.Hessians(
            backbone.transformer_layers,
            called,
            calibration["padding_mask"],
            quantize_one,
            before_block=restore if parked is not None else None,
        ):
            backbone(dict(calibration))
    for layer in layers:
        if id(layer) not in done:
            quantize_one(layer)
    counter.close()
    model.train_function = model.test_function = model.predict_function = None


def quantize_layer(layer, mode: str, config, refit: bool, hessian=None) -> None:
    """Quantize one layer in place; with `refit`, an int4 layer's groups are refitted from its float
    kernel (`kft.quant.int4_groups`, with GPTQ's `hessian` if given) while that kernel is at hand. Kernels
    are quantized on the accelerator (kft.distribute.placement); a lookup table (maybe GBs) where it is. Under a
    distribution the layer is laid out on the mesh at once."""
    import keras
    import numpy as np

    lookup = isinstance(layer, keras.layers.Embedding)
    with contextlib.nullcontext() if lookup else placement.on_accelerator():
        float_kernel = (
            np.asarray(layer.kernel) if refit and not lookup else None
        )  # Embedding: no groups
        try:
            layer.quantize(mode, config=config)
        except (NotImplementedError, AttributeError):  # as Model.quantize: such layers stay float
            pass
        else:
            if float_kernel is not None and getattr(layer, "_int4_block_size", None) not in (
                None,
                -1,
            ):
                int4_refit.refit(layer, float_kernel, hessian)
    placement.settle(layer)  # under a distribution: onto the mesh now, not all on the first device


def settings(
    mode: str, int4_block_size: int = INT4_BLOCK_SIZE, int4_rounding: str = "least-squares"
) -> dict:
    """What an adapter records so the same base can be rebuilt on reload (`rebuild_options`); a GPTQ
    base also needs its calibration tokens, saved beside the adapter (`save_calibration`)."""
    if mode == "none":
        return {"quantize": "none"}
    extra = (
        {"int4_block_size": int4_block_size, "int4_ranges": "least-squares"}
        if mode == "int4"
        else {}
    )
    if mode == "int4" and int4_rounding == "gptq":
        extra.update(int4_rounding="gptq", calibration=CALIBRATION_FILE)
    return {"quantize": mode, "quantize_weights_only": True, "quantize_layers": "decoder", **extra}


def options(c, calibration=None, int4_rounding: str | None = None) -> dict:
    """`apply`'s int4 options from a kft Config; `calibration` (a function of the task returning
    backbone inputs) serves gptq rounding: `int4_rounding` (default: the config's, resolved from auto
    by kft.plan.int4_rounding)."""
    if c.model.quantize != "int4":
        return {}
    options = {"int4_block_size": c.model.int4_block_size}
    if (int4_rounding or c.model.int4_rounding) == "gptq":
        options.update(int4_rounding="gptq", calibration=calibration)
    return options


def rebuild_options(meta: dict, folder=None) -> dict:
    """`apply`'s int4 options from an adapter's settings (and, for GPTQ, the calibration tokens in
    its `folder`). Adapters from before kft chose the groups' ranges recorded groups of 128 and no
    ranges: their base is rebuilt as it was then."""
    if meta.get("quantize") != "int4":
        return {}
    options = {
        "int4_block_size": int(meta.get("int4_block_size", 128)),
        "int4_ranges": meta.get("int4_ranges", "full"),
    }
    if meta.get("int4_rounding") == "gptq":
        options.update(int4_rounding="gptq", calibration=load_calibration(folder, meta))
    return options


def save_calibration(folder, task) -> None:
    """Write the calibration tokens a GPTQ base was rounded on, if it was, beside the adapter."""
    from pathlib import Path

    import numpy as np

    if getattr(task, "kft_calibration", None) is not None:
        np.savez(
            Path(folder) / CALIBRATION_FILE,
            **{k: np.asarray(v) for k, v in task.kft_calibration.items()},
        )


def load_calibration(folder, meta: dict) -> dict:
    from pathlib import Path

    path = Path(folder or ".") / meta.get("calibration", CALIBRATION_FILE)
    if not path.is_file():
        raise KftError(
            f"this adapter's int4 base was rounded by GPTQ on calibration tokens saved as {path.name}, "
            f"which is missing from '{folder}'; copy it back beside adapter_config.json"
        )
    fix = "copy it again from the run folder where the adapter was trained"
    saved = files.read_npz(path, fix)
    if not {"token_ids", "padding_mask"} <= set(saved):
        raise files.damaged(path, "holds no calibration tokens (not the file kft wrote)", fix)
    return saved


def base_bytes(model) -> dict:
    """{'float': bytes of float weights, 'quantized': bytes of integer kernels and their scales}."""
    import numpy as np

    sizes = {"float": 0, "quantized": 0}
    quantized_paths = set()
    for layer in model._flatten_layers():
        if getattr(layer, "quantization_mode", None) in ("int8", "int4"):
            quantized_paths.update(v.path for v in layer.weights if "lora" not in v.path)
    for v in model.weights:
        n = int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        sizes["quantized" if v.path in quantized_paths else "float"] += n
    return sizes
