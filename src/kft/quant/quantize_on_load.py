"""Quantize each layer as soon as the preset's loader has filled its float kernel.

Otherwise a quantized base is read whole, in float, in host memory first: Gemma 2 9B in float32 is
37 GB there, where its int4 decoder takes ~5 GB. KerasHub fills a model's variables one at a time
(a Keras preset through each layer's `load_own_variables`, a Hugging Face folder through its
converter's `port_weight`); both end in `Variable.assign`. Inside `quantizing`, the float kernel of
a wanted layer is quantized (kft.quant.quantize.quantize_layer) right after it is assigned, and freed, so
the host holds what stays float (the token embedding, norms), one float kernel at a time, and on a
CPU-only machine the quantized layers (on a GPU or TPU they are made on the device). The codes are
those a quantization after loading gives: the same kernel, the same code path. GPTQ cannot round a
layer before its block's calibration inputs exist, so for GPTQ the kernel is parked on disk instead
(kft.quant.parking).
"""

from __future__ import annotations

import contextlib
import functools
import weakref


@contextlib.contextmanager
def quantizing(wanted, quantize, label: str = "quantizing as it loads"):
    """Inside, a layer for which `wanted(layer)` holds is passed to `quantize(layer)` once its float
    kernel (or lookup table) has been assigned, with progress on stderr (`label`)."""
    import sys

    import keras
    from keras.src.backend.jax.core import JaxVariable

    from kft.core.progress import Counter

    kinds = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)
    builds = {kind: kind.build for kind in kinds}
    owners = {}  # id(float variable) -> (weak reference to it, its layer)
    counter = []  # made at the first quantized layer: by then every layer is built and known

    def recording(original):
        @functools.wraps(original)  # Keras reads build's signature to record its input shapes
        def build(self, *args, **kwargs):
            original(self, *args, **kwargs)
            variable = (
                getattr(self, "_kernel", None)
                if not isinstance(self, keras.layers.Embedding)
                else getattr(self, "_embeddings", None)
            )
            if variable is not None and self.quantization_mode is None and wanted(self):
                owners[id(variable)] = (weakref.ref(variable), self)

        return build

    assign = JaxVariable.assign

    failures = []  # Keras' loader catches what a layer's loading raises, and retries without the hook

    def assign_then_quantize(self, value):
        result = assign(self, value)
        variable, layer = owners.pop(id(self), (None, None))
        if variable is not None and variable() is self:
            if not counter:
                counter.append(
                    Counter(label, len(owners) + 1, "layers", timed=True, stream=sys.stderr)
                )
            try:
                quantize(layer)
            except Exception as e:
                failures.append(e)
                raise
            counter[0].advance()
        return result

    for kind in kinds:
        kind.build = recording(builds[kind])
    JaxVariable.assign = assign_then_quantize
    try:
        yield
    finally:
        JaxVariable.assign = assign
        for kind, build in builds.items():
            kind.build = build
        if counter:
            counter[0].close()
    if failures:
        raise failures[0]
