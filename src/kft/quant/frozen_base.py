"""The frozen base a run trains LoRA on: loaded from its preset, quantized as it loads, and placed
on the accelerator or the mesh. It composes kft.models (presets), kft.quant and kft.distribute.placement,
so it sits above them all."""

from __future__ import annotations

import sys

from kft.config import check_quantize
from kft.core import backend
from kft.distribute import placement
from kft.models import model, presets
from kft.quant import quantize as quantize_lib


def load(preset: str, precision: str = "auto", quantize: str = "none", **quantize_options):
    """(causal_lm, family, dtype_policy) for `preset`, its frozen base quantized as `quantize` says
    (see kft.quant.quantize; `quantize_options` go to `kft.quant.quantize.apply`); remote failures become
    one-line errors."""
    backend.setup()

    path = presets.resolve(preset)
    model.family_of_config(path)
    policy = model.resolve_precision(precision)
    check_quantize(quantize, policy)
    quantized = "" if quantize == "none" else f", {quantize} base"
    print(f"kft: loading {preset} ({policy}{quantized})", file=sys.stderr, flush=True)
    with model.preset_errors(preset, path):
        # A quantized base is built and quantized in host memory, with no distribution laying it out
        # in float, then placed on the accelerator or the mesh (kft.distribute.placement).
        # Its layers are quantized as they load (kft.quant.quantize_on_load); for GPTQ their float kernels
        # wait on disk for the calibration pass instead (kft.quant.parking).
        with (
            placement.on_host(quantize != "none") as on_host,
            quantize_lib.parking(quantize, **quantize_options) as parked,
        ):
            with (
                model.weights_from_preset_only(),
                backend.native_logs_filtered(),
                quantize_lib.while_loading(quantize, parked=parked, **quantize_options),
            ):
                task = model.from_preset(path, policy)
            model.initialise_unfilled(task, parked or ())
            quantize_lib.apply(task, quantize, parked=parked, **quantize_options)
        if on_host:
            placement.place(task)
    if quantize != "none":  # what loading it took in host memory (kft plan predicts it)
        print(
            f"kft: {quantize} base in place; host memory peak so far {backend.host_peak_gb():.2f} GB",
            file=sys.stderr,
            flush=True,
        )
    return task, model.family_of(task.backbone), policy
