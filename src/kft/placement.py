"""Build a quantized base on the host, then place it: on the accelerator, or laid out on the mesh.

A base that only fits once quantized must not be materialised on the devices in float first.
`on_host()` makes JAX create (and KerasHub fill) every variable in host memory, and `place` moves
the (then smaller) values over. In between, `on_accelerator()` lets the quantization itself run on
the accelerator, one kernel at a time: JAX copies each host value an operation needs and makes new
values there (host values are uncommitted, so they follow the default device).

Under a `keras.distribution` Keras would lay every variable out on the mesh as it is created, in
float. So `on_host()` unsets the distribution while the model is built and quantized; each
quantized layer is laid out on the mesh as soon as it is done (`settle`), so the first device never
holds more than its share of the quantized decoder, and `place` lays out the rest. Quantized
variables get layouts of their own shapes (kft.layouts.quantized_spec): Keras' would take the float
kernel's, which an int4 kernel (two codes per byte, flattened to rows x columns) does not have.

On a CPU-only machine host and accelerator are one: only the distribution steps aside.
"""

from __future__ import annotations

import contextlib

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
    if _mesh and _mesh[-1] is not None:
        for variable in layer.variables:
            _lay_out(variable, _mesh[-1])


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


def _lay_out(variable, distribution) -> None:
    from keras.distribution import TensorLayout

    from kft import layouts

    if getattr(variable, "_layout", None) is not None:
        return  # laid out already (`settle`)
    mesh = distribution.device_mesh
    layout = distribution.get_variable_layout(variable)
    # An int4 kernel (rows x packed columns) has no float kernel's layout; its group scales and zero
    # points (one row per group) none at all: sharded like it on a model axis, not replicated.
    quantized = variable.path.rsplit("/", 1)[-1] in layouts.QUANTIZATION_AUXILIARIES and layouts.M in mesh.axis_names
    if quantized or not layouts.fits(layout.axes, variable.shape, mesh):
        layout = TensorLayout(layouts.quantized_spec(variable.shape, mesh), mesh)
    variable._layout = layout
    variable._direct_assign(variable._value)
