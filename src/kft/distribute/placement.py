"""Build a quantized base on the host, then place it: on the accelerator, or laid out on the mesh.

A base that only fits once quantized must not be materialised on the devices in float first.
`on_host()` makes JAX create (and KerasHub fill) every variable in host memory, and `place` moves
the (then smaller) values over. In between, `on_accelerator()` lets the quantization itself run on
the accelerator, one kernel at a time: JAX copies each host value an operation needs and makes new
values there (host values are uncommitted, so they follow the default device).

Under a `keras.distribution` Keras would lay every variable out on the mesh as it is created, in
float. So `on_host()` unsets the distribution while the model is built and quantized; each
quantized layer is laid out on the mesh as soon as it is done (`settle`), so the first device never
holds more than its share of the quantized decoder, and `place` lays out the rest. An int4 kernel
(flattened to rows x columns, two codes per byte) has not the float kernel's shape, so it gets the
float layout's axes where they carry over (kft.distribute.layouts.int4_specs).

On a CPU-only machine host and accelerator are one: only the distribution steps aside.
"""

from __future__ import annotations

import contextlib

from kft.distribute import layouts

_mesh = []  # the distribution set aside by `on_host` while a base is built ([] outside)


def _devices():
    """(host, accelerator) when a model is to be built on the host and placed after, else None."""
    import jax

    if jax.default_backend() == "cpu":
        return None
    return jax.devices("cpu")[0], jax.local_devices()[0]


@contextlib.contextmanager
def on_host(enabled: bool = True):
    """Inside, new variables live in host memory (when there is an accelerator to spare), and no
    distribution lays them out. Yields whether `place` has anything to do afterwards."""
    import jax
    import keras

    distribution = keras.distribution.distribution() if enabled else None
    devices = _devices() if enabled else None
    if distribution is None and devices is None:
        yield False
        return
    _mesh.append(distribution)
    keras.distribution.set_distribution(None)
    try:
        with jax.default_device(devices[0]) if devices else contextlib.nullcontext():
            yield True
    finally:
        keras.distribution.set_distribution(distribution)
        _mesh.pop()


@contextlib.contextmanager
def on_accelerator():
    """Inside `on_host`: computations, and the values they make, go to the accelerator again."""
    import jax

    devices = _devices()
    if devices is None:
        yield
        return
    with jax.default_device(devices[1]):
        yield


def settle(layer) -> None:
    """Inside `on_host` under a distribution: lay `layer`'s variables out on the mesh now."""
    if not _mesh or _mesh[-1] is None:
        return
    distribution = _mesh[-1]
    specs = {}
    if getattr(layer, "quantization_mode", None) == "int4" and hasattr(layer, "_kernel"):
        from kft.distribute import layouts

        float_spec = distribution.get_variable_layout(
            layer._kernel
        ).axes  # by path: the float kernel's
        specs = layouts.int4_specs(float_spec, layer, distribution.device_mesh)
    for variable in layer.variables:
        _lay_out(variable, distribution, specs.get(variable.path))


def place(model) -> None:
    """After `on_host`: every variable of `model` to its layout on the mesh (under a distribution),
    else to the accelerator, one at a time."""
    import jax
    import keras

    distribution = keras.distribution.distribution()
    devices = _devices()
    for variable in model.variables:
        if getattr(variable, "_value", None) is None:
            continue
        if distribution is not None:
            _lay_out(variable, distribution)
        elif devices is not None:
            variable._direct_assign(jax.device_put(variable._value, devices[1]))


def _lay_out(variable, distribution, spec=None) -> None:
    from keras.distribution import TensorLayout

    if getattr(variable, "_layout", None) is not None:
        return  # laid out already (`settle`)
    mesh = distribution.device_mesh
    layout = (
        TensorLayout(spec, mesh) if spec is not None else distribution.get_variable_layout(variable)
    )
    if not layouts.fits(
        layout.axes, variable.shape, mesh
    ):  # a quantized variable no float layout describes
        layout = TensorLayout(layouts.quantized_spec(variable.shape, mesh), mesh)
    variable._layout = layout
    variable._direct_assign(variable._value)
