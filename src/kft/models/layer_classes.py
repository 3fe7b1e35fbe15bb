"""The one place that composes what kft makes a Keras layer do at run time, in one stated order.

kft changes how some KerasHub layers compute by giving them a subclass of their own Keras class
(same name and module, so a saved or serialized layer still names the Keras class). A behaviour is
a function `make(cls) -> subclass of cls`, registered by the module that owns it. A layer may carry
several; whatever order they were added in, its class is always built from its Keras class up, in
`ORDER`, each behaviour subclassing the one before it (so a later one's `call` runs first and
reaches the earlier ones through its parent class):

1. `lora` (kft.models.lora): a float EinsumDense adds its LoRA update as `(x @ A) @ B`.
2. `dequantized` (kft.quant.kernels): an int8/int4 layer whose block reads `.kernel` itself gets its
   dequantized float kernel (plus the LoRA delta) there.
3. `tied` (kft.quant.kernels_where_used): an int8/int4 EinsumDense makes its float kernel only where
   it is used, forward and backward.
4. `transposed` (kft.generation.decode_kernels): while a decode program is traced, a float
   EinsumDense contracts against a copy of its kernel laid out for few rows.
5. `screened` (kft.generation.screened_argmax): while greedy decoding is traced, the token
   embedding's one-position reverse call is the one-hot of a bfloat16-screened argmax.

What composes: float layers take `lora` then `transposed`; quantized ones `tied` or `dequantized`
(Keras' own quantized call adds LoRA); the embedding `screened`. tests/test_layer_classes.py builds
each combination and checks it against the plain Keras layer. (The attention hooks packing and
left padding use are instance attributes of a block, set and removed by a context manager:
kft.families.attention_hooks; the sampler kft.generation.engine wraps is not a layer.)
"""

from __future__ import annotations

import contextlib
import functools

ORDER = ("lora", "dequantized", "tied", "transposed", "screened")
_MAKERS: dict = {}
_COMPOSED: dict = {}  # {composed class: (its Keras class, the behaviours it carries)}


def register(name: str, make) -> None:
    """Declare behaviour `name` (one of ORDER): `make(cls)` returns a subclass of `cls` carrying it."""
    if name not in ORDER:
        raise ValueError(f"behaviour {name!r} has no place in layer_classes.ORDER {ORDER}")
    _MAKERS[name] = make


def keras_class(layer_or_class) -> type:
    """The Keras class under whatever kft composed on it."""
    cls = layer_or_class if isinstance(layer_or_class, type) else type(layer_or_class)
    return _COMPOSED.get(cls, (cls, frozenset()))[0]


def behaviours(layer_or_class) -> frozenset:
    cls = layer_or_class if isinstance(layer_or_class, type) else type(layer_or_class)
    return _COMPOSED.get(cls, (cls, frozenset()))[1]


def has(layer_or_class, name: str) -> bool:
    return name in behaviours(layer_or_class)


@functools.cache
def compose(base: type, names: frozenset) -> type:
    """`base` (a Keras class) carrying the behaviours `names`, built in ORDER."""
    unknown = set(names) - set(ORDER)
    if unknown:
        raise ValueError(f"unknown layer behaviours {sorted(unknown)}; known: {ORDER}")
    cls, carried = base, frozenset()
    for name in ORDER:
        if name in names:
            cls, carried = _made(name, cls), carried | {name}
            _COMPOSED[cls] = (base, carried)
    return cls


@functools.cache
def _made(name: str, cls: type) -> type:
    return _MAKERS[name](cls)


def add(layer, name: str) -> None:
    """Give `layer` behaviour `name` (nothing if it has it already)."""
    layer.__class__ = compose(keras_class(layer), behaviours(layer) | {name})


def remove(layer, name: str) -> None:
    """Take behaviour `name` from `layer` (nothing if it does not have it)."""
    layer.__class__ = compose(keras_class(layer), behaviours(layer) - {name})


@contextlib.contextmanager
def adding(layers, name: str):
    """While inside, every layer of `layers` carries `name`; after, each is as it was."""
    added = [layer for layer in layers if not has(layer, name)]
    for layer in added:
        add(layer, name)
    try:
        yield
    finally:
        for layer in added:
            remove(layer, name)
