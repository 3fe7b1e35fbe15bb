"""Build a model on the host, then place it on the accelerator.

A base that only fits the accelerator once quantized must not be materialised there in float
first: `on_host()` makes JAX create (and KerasHub fill) every variable in host memory, and
`to_accelerator` moves the (then smaller) values over. In between, `on_accelerator()` lets the
quantization itself run on the accelerator, one kernel at a time: JAX copies each host value an
operation needs and makes new values there (host values are uncommitted, so they follow the default
device). On a CPU-only machine all three are no-ops. Under a `keras.distribution` variables are laid
out at creation by Keras itself, so they step aside too.
"""

from __future__ import annotations

import contextlib


def _devices():
    """(host, accelerator) when a model is to be built on the host and placed after, else None."""
    import jax
    from keras.src.backend.common import global_state

    if jax.default_backend() == "cpu" or global_state.get_global_attribute("distribution") is not None:
        return None
    return jax.devices("cpu")[0], jax.devices()[0]


@contextlib.contextmanager
def on_host(enabled: bool = True):
    """Inside, new JAX arrays live in host memory (when there is an accelerator to spare)."""
    import jax

    devices = _devices() if enabled else None
    if devices is None:
        yield False
        return
    with jax.default_device(devices[0]):
        yield True


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


def to_accelerator(model) -> None:
    """Move every variable of `model` to the accelerator, one at a time."""
    import jax

    devices = _devices()
    if devices is None:
        return
    for variable in model.variables:
        if getattr(variable, "_value", None) is not None:
            variable._direct_assign(jax.device_put(variable._value, devices[1]))
