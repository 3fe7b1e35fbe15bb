"""Build a model on the host, then place it on the accelerator.

A base that only fits the accelerator once quantized must not be materialised there in float
first: `on_host()` makes JAX create (and KerasHub fill) every variable in host memory, the
quantization happens there, and `to_accelerator` moves the (now smaller) values over. On a
CPU-only machine both are no-ops. Under a `keras.distribution` variables are laid out at
creation by Keras itself, so both step aside.
"""

from __future__ import annotations

import contextlib


def _needed() -> bool:
    import jax
    from keras.src.backend.common import global_state

    return jax.default_backend() != "cpu" and global_state.get_global_attribute("distribution") is None


@contextlib.contextmanager
def on_host(enabled: bool = True):
    """Inside, new JAX arrays live in host memory (when there is an accelerator to spare)."""
    import jax

    if not (enabled and _needed()):
        yield False
        return
    with jax.default_device(jax.devices("cpu")[0]):
        yield True


def to_accelerator(model) -> None:
    """Move every variable of `model` to the default accelerator, one at a time."""
    import jax

    if not _needed():
        return
    device = jax.devices()[0]
    for variable in model.variables:
        if getattr(variable, "_value", None) is not None:
            variable._direct_assign(jax.device_put(variable._value, device))
