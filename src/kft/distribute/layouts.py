"""kft's own LayoutMap for Gemma, Gemma 2, Gemma 3 and Gemma 4 on a (batch, model) device mesh.

KerasHub's `GemmaBackbone.get_layout_map` fails for one KV head (gemma_2b_en, Gemma 3 270M/1B:
"dimension 0 should be divisible"), fails when the query heads are fewer than the model axis,
and Gemma 3/4 have none. Here each kind of kernel (a *role*) lists the layouts it may take, most
sharded first; the first whose every named mesh axis divides the matching dimension of every
variable of that role is used, ending in full replication, so no layout can be indivisible:

- query / attention output: heads on the model axis, else the hidden dimension on it (every
  Gemma d_model divides by 8);
- key / value: KV heads on the model axis only when it divides every layer's KV-head count,
  else the KV-head axis is replicated;
- feed-forward, experts and embeddings: intermediate / expert / vocabulary dimension on the model
  axis; the hidden dimension on the batch axis (weights split over data replicas too, as in
  KerasHub's own layout).

Patterns end in `/kernel` (or name the variable), so LoRA's `lora_kernel_a/b` (full paths
since Keras 3.2) match nothing and stay replicated, as does optimizer state. `check` proves
that every >= 2-D base weight matches exactly one pattern: nothing is replicated by silence.
"""

from __future__ import annotations

import re

from kft import families
from kft.core.errors import KftError

B, M = "batch", "model"
AXES = (B, M)

# (role, pattern, candidate layouts, most sharded first); replication is always the last resort.
ROLES = (
    (
        "embeddings",
        r"(.*/)?(per_layer_)?token_embedding/embeddings",
        [(M, B), (M, None), (None, M)],
    ),
    ("query", r".*attention/query/kernel", [(M, B, None), (M, None, None), (None, M, None)]),
    (
        "key_value",
        r".*attention/(key|value)/kernel",
        [(M, B, None), (M, None, None), (None, B, None)],
    ),
    (
        "attention_output",
        r".*attention/attention_output/kernel",
        [(M, None, B), (M, None, None), (None, None, M)],
    ),
    ("ffw_in", r".*ffw_gating(_2)?/kernel", [(B, M), (None, M)]),
    ("ffw_out", r".*ffw_linear/kernel", [(M, B), (M, None)]),
    (
        "experts_in",
        r".*moe_expert_bank/(gate_proj|up_proj)",
        [(M, B, None), (None, B, M), (None, None, M)],
    ),
    ("experts_out", r".*moe_expert_bank/down_proj", [(M, None, B), (None, M, B), (None, M, None)]),
    # Small per-layer projections (Gemma 4's per-layer inputs, the MoE router): replicated on purpose.
    (
        "small",
        r".*(moe_router/proj|per_layer_input_gate|per_layer_up_proj|per_layer_model_projection)/kernel",
        [],
    ),
    # Image/audio towers (where a preset keeps them) are small beside the decoder: replicated.
    ("encoders", r"(?!.*lora_kernel_)(.*encoder.*|.*interleave_embeddings/.*)", []),
)
LORA_FACTORS = ("lora_kernel_a", "lora_kernel_b")
# A quantized layer's scales and zero points (Keras 3.15's names): no pattern covers them.
QUANTIZATION_AUXILIARIES = ("kernel_scale", "kernel_zero", "embeddings_scale", "embeddings_zero")


def is_base_weight(path: str, shape) -> bool:
    """A weight the layout map must place: >= 2-D, not a LoRA factor nor a quantized layer's scale."""
    return (
        len(shape) >= 2 and path.rsplit("/", 1)[-1] not in LORA_FACTORS + QUANTIZATION_AUXILIARIES
    )


def matches(patterns, path: str) -> list[str]:
    """The patterns that `path` matches as the LayoutMap looks it up (exact key, else full regex match)."""
    if path in patterns:
        return [path]
    return [p for p in patterns if re.fullmatch(p, path)]


def _fits(spec, shape, mesh_shape: dict) -> bool:
    return len(spec) == len(shape) and all(
        axis is None or mesh_shape[axis] == 1 or size % mesh_shape[axis] == 0
        for axis, size in zip(spec, shape)
    )


def roles(weights: dict) -> tuple:
    """The layout roles of the family whose decoder blocks `weights` holds (Family.layout_roles:
    the Llama-style families'), else Gemma's above."""
    for f in families.FAMILIES.values():
        if f.layout_roles and any(p.startswith(f.block_prefix) for p in weights):
            return f.layout_roles
    return ROLES


def specs(weights: dict, mesh_shape: dict) -> dict:
    """{pattern: axis spec} for `weights` ({path: shape} of a built, or abstract, backbone) on a
    mesh {"batch": B, "model": M}. Only roles present in the model get a pattern."""
    chosen = {}
    for role, pattern, candidates in roles(weights):
        paths = {
            p: s for p, s in weights.items() if is_base_weight(p, s) and re.fullmatch(pattern, p)
        }
        if not paths:
            continue
        if len({len(s) for s in paths.values()}) > 1:
            raise KftError(
                f"layout role {role} matches weights of different ranks; kft's layout table needs an entry"
            )
        best = {p: _best(candidates, s, mesh_shape) for p, s in paths.items()}
        # One pattern for the role, laid out as most of its weights can be; weights that cannot
        # (Gemma 4's global layers with fewer KV heads) get an exact-path entry of their own.
        chosen[pattern] = common = max(set(best.values()), key=list(best.values()).count)
        chosen.update(
            {p: spec for p, spec in best.items() if not _fits(common, paths[p], mesh_shape)}
        )
    check(chosen, weights)
    return chosen


def fits(spec, shape, device_mesh) -> bool:
    """Whether the axis spec `spec` lays out a variable of `shape` on `device_mesh` evenly."""
    return _fits(tuple(spec), tuple(shape), dict(zip(device_mesh.axis_names, device_mesh.shape)))


def quantized_spec(shape, device_mesh) -> tuple:
    """An axis spec for a quantized variable no float layout describes (kft.distribute.placement): the model
    axis on its largest dimension that divides by it, the batch axis on the largest other one, else
    replicated. The layer dequantizes it whole inside the step, so any even split computes the same."""
    sizes = dict(zip(device_mesh.axis_names, device_mesh.shape))
    spec = [None] * len(shape)
    for axis in (M, B):
        n = sizes.get(axis, 1)
        free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % n == 0]
        if n > 1 and free:
            spec[max(free, key=lambda i: shape[i])] = axis
    return tuple(spec)


def int4_specs(float_spec, layer, device_mesh) -> dict:
    """{variable path: axis spec} for an int4 layer's kernel, group scales, zero points and group index,
    laid out as its float kernel (`float_spec`) was. Keras flattens the float kernel to (rows, columns)
    by a plain reshape, so blocks of rows are blocks of the float kernel's leading dimension: the rows
    take its axis, the columns the last dimension's (exactly so for 2-D kernels and the attention output);
    a group's scale and zero point follow its rows."""
    sizes = dict(zip(device_mesh.axis_names, device_mesh.shape))
    row, column = float_spec[0], float_spec[-1]

    def even(spec, variable):
        return tuple(
            a if a is None or size % sizes[a] == 0 else None
            for a, size in zip(spec, variable.shape)
        )

    specs = {layer._kernel.path: even((row, column), layer._kernel)}
    for name in ("kernel_scale", "kernel_zero"):
        variable = getattr(layer, name, None)
        if variable is not None and len(variable.shape) == 2:  # (groups, columns)
            specs[variable.path] = even((row, column), variable)
    if getattr(layer, "g_idx", None) is not None:
        specs[layer.g_idx.path] = even((row,), layer.g_idx)
    return specs


def _best(candidates, shape, mesh_shape: dict) -> tuple:
    """The first candidate layout that divides `shape`, else replication."""
    return next((c for c in candidates if _fits(c, shape, mesh_shape)), (None,) * len(shape))


def check(patterns, weights: dict) -> None:
    """Raise unless every >= 2-D base weight matches exactly one pattern and no LoRA factor matches any.

    `weights` is {path: shape}; `patterns` anything iterable over pattern strings (a dict, a LayoutMap).
    """
    patterns = list(patterns)
    problems = []
    for path, shape in weights.items():
        found = matches(patterns, path)
        if is_base_weight(path, shape) and len(found) != 1:
            problems.append(f"{path} {tuple(shape)} matches {len(found)} layout patterns {found}")
        elif path.rsplit("/", 1)[-1] in LORA_FACTORS and found:
            problems.append(f"LoRA factor {path} matches {found}; it must stay replicated")
    if problems:
        raise KftError(
            f"layout map does not cover the model exactly ({len(problems)} weights): {problems[0]}"
        )


def weight_shapes(model) -> dict:
    """{path: shape} of every variable of a model (built or abstract)."""
    return {v.path: tuple(v.shape) for v in model.weights}


def layout_map(weights: dict, device_mesh):
    """A keras.distribution.LayoutMap for `weights` ({path: shape}) on `device_mesh` (axes batch, model)."""
    import keras

    if tuple(device_mesh.axis_names) != AXES:
        raise ValueError(f"kft's layouts use mesh axes {AXES}, got {device_mesh.axis_names}")
    layout = keras.distribution.LayoutMap(device_mesh)
    for pattern, spec in specs(weights, dict(zip(AXES, device_mesh.shape))).items():
        layout[pattern] = spec
    return layout


def describe(weights: dict, mesh_shape: dict) -> str:
    """One line: how each role present is laid out, e.g. 'query (model, batch, -), key_value (-, batch, -)'."""
    chosen = specs(weights, mesh_shape)
    names = {pattern: role for role, pattern, _ in roles(weights)}
    shown = [
        f"{names[p]} ({', '.join(a or '-' for a in spec)})"
        for p, spec in chosen.items()
        if p in names
    ]
    exact = len(chosen) - len(shown)
    return ", ".join(shown) + (
        f"; {exact} weights laid out on their own (other head counts)" if exact else ""
    )
