"""`kft plan`: what a run needs in memory, per device, before any weight is loaded.

Everything comes from the preset's config.json (Keras or Hugging Face) or, for KerasHub's
Kaggle presets, from `KNOWN_PRESETS` (their sizes, so the plan works offline). The estimate:

- base: embedding (kept float) + decoder projections at `model.quantize` (int8: 1 byte, int4:
  0.5 byte plus per-group scale and zero point) + the rest (norms) at the storage dtype;
  encoders of multimodal Gemma 3/4 are left out (kft trains the text decoder);
- LoRA factors, their gradients and AdamW's two moments (float32; one more copy with grad_accum);
- activations kept for the backward pass per layer and token (fitted to Gemma 3 270M on CPU:
  ~100 KB per token and layer at seq_len 256, benchmarks/calibrate_plan.py), attention scores, and the
  vocabulary logits: 32 positions at a time with the trained-positions loss, all of them without;
- runtime: compiled programs, temporaries and (on CPU) the Python/TF/JAX process itself;
- measuring before and after training (`output.samples` > 0): the generate program's key/value
  cache for one chunk of prompts, its logits, and on a CPU the decode copies kft keeps while it
  measures (kft.generation.decode_kernels, kft.generation.screened_argmax); the peak is the larger of the two phases.

On a mesh of `devices` with a `model_axis`, the base is divided by the model axis and the batch
by the batch axis (devices / model_axis); LoRA and optimizer state are replicated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from kft import families
from kft.config import quantized_bytes_per_param
from kft.core import backend, files
from kft.core.arithmetic import round_up
from kft.core.errors import KftError
from kft.models import presets
from kft.quant import parking

GB = 1e9
# Imports 0.72 + tokenizer 0.15 + compiled programs (train, eval, generate) + allocator slack: fitted to
# Gemma 3 270M's measured peaks (benchmarks/calibrate_plan.py, docs/performance.md).
CPU_RUNTIME_GB = 2.1
# CUDA/XLA context, programs, workspace: an estimate, not measured on a GPU
ACCELERATOR_RUNTIME_GB = 0.5
CHUNK = 32  # positions per vocabulary projection in kft.models.trained_logits
# Tensors kept for the backward pass, per token and layer: counts fitted to Gemma 3 270M's measured
# peaks on CPU, not derived from the graph (benchmarks/calibrate_plan.py: planned / measured
# 0.91-1.06 at batch x seq_len 2x128 and 4x256, float, int8 and int4).
HIDDEN_WIDE_KEPT = 12  # hidden-wide (residual stream, norms' outputs, projections' inputs)
FFW_WIDE_KEPT = 5  # feed-forward-wide (gate, up, their activation and product)
HEADS_WIDE_KEPT = 2  # query heads x head dim wide (q/k/v after norms and rotary)
SCORES_KEPT = 4  # attention scores, probabilities and their gradients, float32, per head and key
LOGITS_KEPT = 3  # float32 logits, their softmax and its gradient


@dataclass
class Architecture:
    family: str
    vocab: int
    hidden: int
    layers: int
    query_heads: int
    kv_heads: int
    head_dim: int
    ffw: int  # width of one feed-forward projection (gate = up = ffw, down: ffw -> hidden)
    per_layer_vocab: int = 0  # Gemma 4 per-layer token embedding
    per_layer_dim: int = 0
    double_wide_layers: int = 0  # Gemma 4 KV-shared layers with a 2x feed-forward
    global_head_dim: int = 0
    context: int = 0  # tokens the model attends over (families.context_length); 0 = unknown
    source: str = ""
    tied: bool = (
        True  # the LM head is the token embedding (else a vocab x hidden matrix of its own)
    )


# KerasHub Kaggle presets (keras_hub/src/models/*/..._presets.py names): {name: (family, the sizes of
# its text decoder)} from each family's table (kft/families/<name>/presets.py), and their other names.
KNOWN_PRESETS = {
    name: (f, sizes) for f in families.FAMILIES.values() for name, sizes in f.preset_sizes.items()
}
ALIASES = {
    alias: name for f in families.FAMILIES.values() for alias, name in f.preset_aliases.items()
}


def known(name: str) -> Architecture | None:
    name = ALIASES.get(name, name)
    if name not in KNOWN_PRESETS:
        return None
    f, sizes = KNOWN_PRESETS[name]
    if f.preset_sizes_approximate:
        return Architecture(family=f.name, **sizes, source=f"kft's table, approximate ({name})")
    return Architecture(
        family=f.name,
        **sizes,
        context=families.context_length(f.name, {}),
        source=f"kft's table of KerasHub presets ({name})",
    )


def from_config_json(config: dict, source: str = "config.json") -> Architecture:
    """The sizes in a Keras preset's or a Hugging Face checkpoint's config.json."""
    if "model_type" in config:  # Hugging Face
        c = config.get("text_config", config)
        model_type = config["model_type"]
        family = families.HF_MODEL_TYPES.get(model_type)
        if family is None:
            raise KftError(
                f"kft plan knows {families.SUPPORTED} configs, not model_type '{model_type}'"
            )
        layers = c["num_hidden_layers"]
        return Architecture(
            family=family,
            vocab=c["vocab_size"],
            hidden=c["hidden_size"],
            layers=layers,
            query_heads=c["num_attention_heads"],
            kv_heads=c["num_key_value_heads"],
            head_dim=c.get("head_dim", c["hidden_size"] // c["num_attention_heads"]),
            ffw=c["intermediate_size"]
            if isinstance(c["intermediate_size"], int)
            else max(c["intermediate_size"]),
            per_layer_vocab=c.get("vocab_size_per_layer_input")
            or (c["vocab_size"] if c.get("hidden_size_per_layer_input") else 0),
            per_layer_dim=c.get("hidden_size_per_layer_input") or 0,
            double_wide_layers=c.get("num_kv_shared_layers", 0)
            if c.get("use_double_wide_mlp")
            else 0,
            global_head_dim=c.get("global_head_dim") or 0,
            context=families.context_length(family, c),
            source=source,
            tied=bool(c.get("tie_word_embeddings", True)),
        )
    name, c = config.get("class_name", ""), config.get("config", {})
    family = families.of_keras_config(name, c)
    if family is None:
        raise KftError(
            f"kft plan knows {families.SUPPORTED} backbones, not {name or 'this config'}"
        )
    # KerasHub's Gemma/Gemma 2 count gate + up in intermediate_dim; Gemma 3 and 4 do not.
    ffw = (
        c["intermediate_dim"] // 2
        if families.get(family).keras_ffw_counts_gate_and_up
        else c["intermediate_dim"]
    )
    per_layer_dim = c.get("hidden_size_per_layer_input") or 0
    return Architecture(
        family=family,
        vocab=c["vocabulary_size"],
        hidden=c["hidden_dim"],
        layers=c["num_layers"],
        query_heads=c["num_query_heads"],
        kv_heads=c["num_key_value_heads"],
        head_dim=c.get("head_dim") or c["hidden_dim"] // c["num_query_heads"],
        ffw=ffw,
        per_layer_vocab=(c.get("vocab_size_per_layer_input") or c["vocabulary_size"])
        if per_layer_dim
        else 0,
        per_layer_dim=per_layer_dim,
        double_wide_layers=c.get("num_kv_shared_layers", 0) if c.get("use_double_wide_mlp") else 0,
        global_head_dim=c.get("global_head_dim") or 0,
        context=families.context_length(family, c),
        source=source,
        tied=bool(c.get("tie_word_embeddings", family_ties(family))),
    )


def family_ties(family: str) -> bool:
    """Whether a Keras config that does not say ties the head: Mistral's backbone never does."""
    return families.get(family).tied_by_default


def architecture(preset: str) -> Architecture:
    """Sizes for `preset`: a local folder's config.json, a kft-prepared name, or a known KerasHub preset."""

    name = preset.rstrip("/")
    if name.startswith("kaggle://"):
        name = name.split("/")[-2] if name.split("/")[-1].isdigit() else name.split("/")[-1]
    if preset in presets.PREPARED:
        cached = backend.cache_dir() / "presets" / preset
        if presets.is_complete(cached) or known(preset) is None:
            path = Path(presets.prepare(preset)) / "config.json"
            return from_config_json(
                files.read_json(path, "copy or export the preset again"), str(path)
            )
    elif presets.is_local(preset):
        path = Path(preset).expanduser() / "config.json"
        if not path.is_file():
            raise KftError(f"model.preset '{preset}' is not a preset folder (no config.json there)")
        return from_config_json(files.read_json(path, "copy or export the preset again"), str(path))
    found = known(name)
    if found is None:
        names = sorted(
            KNOWN_PRESETS, key=lambda p: (KNOWN_PRESETS[p][0].preset_sizes_approximate, p)
        )  # exact first
        raise KftError(
            f"kft plan has no sizes for preset '{preset}'; give a local preset folder (its config.json) "
            f"or one of: {', '.join(names)}"
        )
    return found


def parameters(a: Architecture) -> dict:
    """{part: parameter count}: embedding, decoder projections (quantizable / kept float), the rest."""
    attention = a.hidden * a.head_dim * (2 * a.query_heads + 2 * a.kv_heads)
    ffw_width = (
        a.layers * a.ffw + a.double_wide_layers * a.ffw
    )  # KV-shared Gemma 4 layers are 2x wide
    ffw = 3 * a.hidden * ffw_width
    per_layer = a.per_layer_vocab * a.layers * a.per_layer_dim
    per_layer_proj = (
        2 * a.layers * a.hidden * a.per_layer_dim + a.hidden * a.layers * a.per_layer_dim
    )
    return {
        "embedding": a.vocab * a.hidden,
        "untied head": 0 if a.tied else a.vocab * a.hidden,
        "attention": a.layers * attention,
        "feed-forward": ffw,
        "per-layer embedding": per_layer,
        "per-layer projections": per_layer_proj,
        "norms": a.layers * 6 * a.hidden + a.hidden,
    }


def lora_parameters(a: Architecture, rank: int, targets: list[str]) -> int:
    """LoRA factors as Keras shapes them: q/k/v per head (heads, hidden, r) + (r, head_dim)."""
    from kft.config import ALL_LINEAR, LORA_LAYER_NAMES

    names = set(LORA_LAYER_NAMES) if ALL_LINEAR in targets else set(targets)
    per_layer = {
        "query": a.query_heads * a.hidden * rank + rank * a.head_dim,
        "key": a.kv_heads * a.hidden * rank + rank * a.head_dim,
        "value": a.kv_heads * a.hidden * rank + rank * a.head_dim,
        "attention_output": a.query_heads * a.head_dim * rank + rank * a.hidden,
        "ffw_gating": (a.hidden + a.ffw) * rank,
        "ffw_gating_2": (a.hidden + a.ffw) * rank,
        "ffw_linear": (a.ffw + a.hidden) * rank,
    }
    return a.layers * sum(per_layer[n] for n in names)


@dataclass
class Plan:
    lines: list = field(default_factory=list)  # (label, GB) in print order
    peak: float = 0.0  # GB per device
    memory: float = 0.0  # GB per device available
    fits: bool = True
    advice: str = ""
    header: str = ""
    training: float = 0.0  # GB per device while training (the sum of `lines`)
    measuring_lines: list = field(default_factory=list)  # (label, GB): what measuring adds
    measuring: float = 0.0  # GB per device while measuring before/after (0: no samples)
    quantizing_lines: list = field(default_factory=list)  # (label, GB): GPTQ's rounding at load
    quantizing: float = 0.0  # GB per device while GPTQ rounds the base (0: not int4 gptq)
    host: float = 0.0  # GB of host memory a quantized base takes at load on an accelerator
    host_as_it_loads: float = 0.0  # the same, without GPTQ
    disk: float = 0.0  # GB of float decoder kernels GPTQ parks on disk at load (kft.quant.parking)


def _storage_bytes(precision: str) -> int:
    return (
        2 if precision in ("bfloat16", "float16") else 4
    )  # mixed_* policies keep float32 variables


def _compute_bytes(precision: str, accelerator: str) -> int:
    if precision == "auto":
        return 2 if accelerator in ("tpu", "gpu-bf16") else 4
    return 4 if precision == "float32" else 2


def estimate(
    a: Architecture,
    c,
    device_memory_gb: float,
    devices: int = 1,
    model_axis: int = 1,
    accelerator: str = "cpu",
    host_memory_gb: float | None = None,
    disk_gb: float | None = None,
) -> Plan:
    """The memory plan for config `c` on `devices` devices of `device_memory_gb` each (and, where
    known, `host_memory_gb` of RAM free and `disk_gb` free in the temporary folder, which
    `model.int4_rounding: auto` heeds)."""
    if devices < 1 or model_axis < 1 or devices % model_axis:
        raise KftError(f"--devices ({devices}) must be a multiple of --model-axis ({model_axis})")
    batch_axis = devices // model_axis
    precision, mode = c.model.precision, c.model.quantize
    store = _storage_bytes(precision)
    compute = _compute_bytes(precision, accelerator)
    p = parameters(a)
    quantizable = p["attention"] + p["feed-forward"]
    floating = sum(p.values()) - quantizable - (p["per-layer embedding"] if mode != "none" else 0)
    per_param = (
        quantized_bytes_per_param(mode, c.model.int4_block_size) if mode != "none" else store
    )
    widest = (
        a.hidden * a.ffw * (2 if a.double_wide_layers else 1)
    )  # parameters of the widest kernel
    base = floating * store
    if mode == "none":
        base += quantizable * store
    else:
        base += (quantizable + p["per-layer embedding"]) * per_param
    base /= model_axis
    lora = lora_parameters(a, c.lora.rank, c.lora.targets) * 4
    optimizer = lora * (
        3 + (1 if c.train.grad_accum > 1 else 0)
    )  # gradients + AdamW moments (+ accumulator)
    # A preference pair is two sequences (chosen, rejected), both through the forward and backward pass.
    answers = 1 if c.train.objective == "sft" else 2
    # Packed pairs: batch_size rows of 2 x seq_len (the same positions, longer attention rows).
    packed_pairs = answers == 2 and c.data.packing
    row = c.data.seq_len * (2 if packed_pairs else 1)
    batch = math.ceil((1 if packed_pairs else answers) * c.train.batch_size / batch_axis)
    tokens = batch * row
    pair_note = (
        "; packed pairs"
        if packed_pairs
        else f"; {batch // 2} pairs x 2 answers"
        if answers == 2
        else ""
    )
    # On a model axis kft's layouts split the heads and the feed-forward width but not the residual
    # stream: about half the hidden-wide tensors stay whole on every device (benchmarks/plan_vs_mesh.py).
    whole = HIDDEN_WIDE_KEPT // 2 * a.hidden
    split = (
        (HIDDEN_WIDE_KEPT - HIDDEN_WIDE_KEPT // 2) * a.hidden
        + FFW_WIDE_KEPT * a.ffw * (1 + a.double_wide_layers / a.layers)
        + HEADS_WIDE_KEPT * a.query_heads * a.head_dim
    )
    activations = (
        a.layers
        * tokens
        * (
            (whole + split / model_axis) * compute
            + SCORES_KEPT * a.query_heads * row * 4 / model_axis
        )
    )
    trained_logits = CHUNK * a.vocab * 4 * LOGITS_KEPT
    all_logits = tokens * a.vocab * 4 * LOGITS_KEPT
    logits = trained_logits if c.train.logits_on == "trained" else all_logits
    # XLA temporaries: the largest dequantized (or cast) feed-forward kernel, twice.
    temporaries = 2 * widest * compute
    runtime = (CPU_RUNTIME_GB if accelerator == "cpu" else ACCELERATOR_RUNTIME_GB) * GB
    plan = Plan(memory=device_memory_gb)
    plan.lines = [
        (
            "base weights" + (f" ({mode} decoder, float embedding)" if mode != "none" else ""),
            base / GB,
        ),
        (f"LoRA factors (rank {c.lora.rank})", lora / GB),
        ("gradients + optimizer state", optimizer / GB),
        (
            f"activations ({batch} x {row} x {a.layers} layers{pair_note})",
            activations / GB,
        ),
        (
            f"logits ({'trained positions, 32 at a time' if c.train.logits_on == 'trained' else 'every position'})",
            logits / GB,
        ),
        ("compile temporaries and runtime", (temporaries + runtime) / GB),
    ]
    rounding = c.model.int4_rounding
    plan.quantizing_lines = quantizing(a, c, accelerator)
    lookup = p["per-layer embedding"]  # a lookup table: quantized where it is, on the host
    if plan.quantizing_lines:
        # GPTQ parks the float decoder kernels on disk as they load (kft.quant.parking) and reads a block's
        # back as the calibration pass reaches it; lookup tables stay float until the pass is over.
        # Held meanwhile on the first device: its share of the quantized decoder (all of it, at the
        # end), the runtime, and on a CPU (the host) what stays float and the block in flight.
        # Elsewhere those stay on the host, and reach the devices only after (kft.distribute.placement).
        block = (p["attention"] / a.layers + 3 * widest) * store
        float_at_load = (floating + lookup) * store + block
        held = (quantizable + lookup) * per_param
        held = held / model_axis + runtime + (float_at_load if accelerator == "cpu" else 0)
        plan.quantizing = (held + sum(gb * GB for _, gb in plan.quantizing_lines)) / GB
        plan.disk = quantizable * store / GB
        gptq_host = (floating + lookup) * store + max(block, lookup * per_param)
        short = [
            where
            for where, need, free in (
                ("on the device", plan.quantizing, device_memory_gb),
                ("in host memory", gptq_host / GB if accelerator != "cpu" else 0, host_memory_gb),
                ("on disk", plan.disk, disk_gb),
            )
            if free is not None and need > free
        ]
        if rounding == "auto" and short:  # the nearest codes instead
            plan.quantizing_lines = [
                (
                    f"GPTQ at load: does not fit {short[0]}, so int4_rounding auto = least-squares",
                    0.0,
                )
            ]
            plan.quantizing = plan.disk = 0.0
    plan.training = sum(gb for _, gb in plan.lines)
    shared = base + lora + optimizer + temporaries + runtime  # what both phases hold
    plan.measuring_lines = measuring(a, c, devices, accelerator)
    plan.measuring = (
        (shared / GB + sum(gb for _, gb in plan.measuring_lines)) if plan.measuring_lines else 0.0
    )
    plan.peak = max(plan.training, plan.measuring, plan.quantizing)
    plan.fits = plan.peak <= device_memory_gb
    if (
        mode != "none" and accelerator != "cpu"
    ):  # the host holds the base before it is placed (kft.distribute.placement)
        # Quantized kernels go to the devices; a lookup table (Gemma 4's per-layer embedding) is
        # quantized where it is, so the host holds it quantized, and in float while that happens.
        kept = floating * store + lookup * per_param
        plan.host_as_it_loads = (kept + max(widest, lookup) * store) / GB
        plan.host = gptq_host / GB if plan.quantizing else plan.host_as_it_loads
    count = sum(p.values())
    plan.header = (
        f"{a.family} model ({a.source}): {count / 1e9:.2f}B parameters in the text decoder "
        + ", ".join(f"{k} {v / 1e6:,.0f}M" for k, v in p.items() if v)
        + f"; with/without trained-positions loss: logits {trained_logits / GB:.2f} / {all_logits / GB:.2f} GB"
    )
    if plan.fits:
        plan.advice = f"fits with {device_memory_gb - plan.peak:.2f} GB to spare"
    else:
        tries = []
        if plan.quantizing > device_memory_gb:
            tries.append("model.int4_rounding least-squares")
        if mode != "int4":
            tries.append("model.quantize int4")
        elif c.model.int4_block_size < 128:
            tries.append("model.int4_block_size 128")
        if c.train.batch_size > 1:
            tries.append("batch 1")
        if c.data.seq_len > 512:
            tries.append("seq 512")
        if c.train.logits_on != "trained":
            tries.append("train.logits_on trained")
        tries.append(f"{max(2, devices * 2)} devices")
        plan.advice = (
            "does not fit: try "
            + ", ".join(tries[:-1])
            + (", or " if len(tries) > 1 else "")
            + tries[-1]
        )
    return plan


def quantizing(a: Architecture, c, accelerator: str = "cpu") -> list:
    """[(label, GB)]: what GPTQ's rounding of an int4 base (`model.int4_rounding: gptq`, kft.quant.gptq)
    holds at load beside the quantized decoder ([] otherwise): the calibration batch's hidden states
    between two decoder blocks, one chunk's activations inside a block, the largest float kernel
    (copied over and quantized), and the larger of a block's input Hessians (q, k, v, output, gate,
    up, down: held until the block has run) and the widest layer's solve (its Hessian and ~4 copies
    while the inverse's Cholesky factor is computed)."""
    if c.model.quantize != "int4" or c.model.int4_rounding == "least-squares":
        return []
    from kft.quant.gptq import CHUNK as CALIBRATION_CHUNK

    compute = _compute_bytes(c.model.precision, accelerator)
    seq = c.data.seq_len
    hidden_states = 2 * c.model.calibration_examples * seq * a.hidden * compute
    chunk = (
        CALIBRATION_CHUNK
        * seq
        * (2 * a.query_heads * seq * 4 + 3 * a.ffw * compute + 6 * a.hidden * compute)
    )
    kernel = 2 * a.hidden * a.ffw * _storage_bytes(c.model.precision)
    widths = [a.hidden] * 5 + [a.query_heads * a.head_dim, a.ffw]
    hessians = max(sum(n * n for n in widths) + 4 * a.hidden**2, 5 * max(widths) ** 2) * 4
    examples = f"{c.model.calibration_examples} x {seq}"
    return [
        (
            f"GPTQ at load: hidden states ({examples}) and a block's activations ({CALIBRATION_CHUNK} x {seq})",
            (hidden_states + chunk) / GB,
        ),
        ("GPTQ at load: Hessians and solve, largest float kernel", (hessians + kernel) / GB),
    ]


# The cache counts 1.5 times: fitted to Gemma 3 270M on CPU, where the peak rose 1.4 times the
# cache's bytes from 32 to 256 new tokens per sample (benchmarks/calibrate_plan.py --new-tokens).
CACHE_COPIES = 1.5
EVAL_CHUNK = 128  # kft.models.trained_logits.EVAL_CHUNK (that module imports Keras): the answers' loss, per projection


def measuring(a: Architecture, c, devices: int = 1, accelerator: str = "cpu") -> list:
    """[(label, GB)]: what measuring before and after training adds per device to the base, LoRA,
    optimizer state and runtime ([] without samples): the generate chunk's key/value cache, its
    logits (decoding and the answers' loss), and on a CPU the decode copies."""
    if not c.output.samples:
        return []
    from kft.evaluate.evaluation import GENERATE_BATCH
    from kft.generation.decode_kernels import TRANSPOSED_BUDGET
    from kft.generation.sampling import CACHE_BUDGET
    from kft.generation.screened_argmax import COPY_BUDGET, cpu_has_bfloat16_dots

    compute = _compute_bytes(c.model.precision, accelerator)
    # Prompts end at most at seq_len (rounded up to 16); the answers' loss pass spans the same.
    width = round_up(c.data.seq_len, 16) + c.output.sample_max_new_tokens
    per_row = a.layers * 2 * width * a.kv_heads * max(a.head_dim, a.global_head_dim) * compute
    # Up to GENERATE_BATCH rows, fewer where the chunk's cache would pass CACHE_BUDGET (kft.generation.sampling).
    # Not divided over a mesh: how a distribution places the cache is not measured.
    rows = max(1, min(GENERATE_BATCH, CACHE_BUDGET // per_row))
    cache = CACHE_COPIES * rows * per_row
    logits = (2 * rows + 2 * EVAL_CHUNK) * a.vocab * 4
    lines = [
        (f"measuring: key/value cache ({rows} prompts x {width} positions)", cache / GB),
        ("measuring: logits (decoding, answers' loss)", logits / GB),
    ]
    if accelerator == "cpu":
        p = parameters(a)
        copies = 0
        decoder = (p["attention"] + p["feed-forward"]) * 4
        if c.model.quantize == "none" and decoder <= TRANSPOSED_BUDGET:
            copies += decoder  # kernels laid out for decoding
        vocabulary = a.vocab * a.hidden * 2
        if devices == 1 and compute == 4 and vocabulary <= COPY_BUDGET and cpu_has_bfloat16_dots():
            copies += vocabulary  # the bfloat16 vocabulary of the screened argmax
        if copies:
            lines.append(("measuring: decode copies (CPU)", copies / GB))
    return lines


def render(plan: Plan, devices: int = 1, model_axis: int = 1) -> str:
    width = max(
        len(label) for label, _ in plan.lines + plan.measuring_lines + plan.quantizing_lines
    )
    lines = [plan.header, f"per device ({devices} device(s), model axis {model_axis}):"]
    lines += [f"  {label:<{width}}  {gb:8.3f} GB" for label, gb in plan.lines]
    phases = plan.measuring_lines or plan.quantizing_lines
    if phases:
        lines.append(f"  {'training':<{width}}  {plan.training:8.3f} GB")
    if plan.measuring_lines:
        lines += [f"  {label:<{width}}  {gb:8.3f} GB" for label, gb in plan.measuring_lines]
        lines.append(
            f"  {'measuring (base, LoRA, runtime and the above)':<{width}}  {plan.measuring:8.3f} GB"
        )
    if plan.quantizing_lines:
        lines += [f"  {label:<{width}}  {gb:8.3f} GB" for label, gb in plan.quantizing_lines]
        lines.append(
            f"  {'GPTQ at load (quantized decoder, runtime and the above)':<{width}}  "
            f"{plan.quantizing:8.3f} GB"
        )
    lines.append(
        f"  {'total' if not phases else 'peak (the largest)':<{width}}  {plan.peak:8.3f} GB"
        f"  -> {plan.advice}"
    )
    if plan.host:
        what = (
            f"what stays float and one block's float kernels; {plan.host_as_it_loads:.2f} GB with least-squares "
            "rounding"
            if plan.quantizing
            else "what stays float and one float kernel: the rest is quantized as it loads"
        )
        lines.append(f"host memory at load: {plan.host:.2f} GB beside the process ({what})")
    if plan.disk:
        lines.append(
            f"disk at load: up to {plan.disk:.2f} GB, where GPTQ parks the float decoder kernels until it "
            "rounds them (TMPDIR; $KFT_CACHE/parking where TMPDIR is in memory)"
        )
    lines.append(
        f"kft plan: peak {plan.peak:.2f} GB per device, {'fits' if plan.fits else 'does not fit'} "
        f"in {plan.memory:.2f} GB"
    )
    return "\n".join(lines)


def parse_memory(text: str) -> float:
    """'16GB', '16', '15.5 GiB', '800MB' -> GB (1e9 bytes)."""
    import re

    m = re.fullmatch(r"\s*([0-9.]+)\s*(gb|gib|mb|mib|g|m)?\s*", str(text).lower())
    if not m:
        raise KftError(f"--device-memory must look like 16GB or 800MB, got '{text}'")
    value, unit = float(m.group(1)), m.group(2) or "gb"
    return (
        value
        * {"gb": 1, "g": 1, "gib": 1.073741824, "mb": 1e-3, "m": 1e-3, "mib": 1.048576e-3}[unit]
    )


def detect_device() -> tuple[float, str]:
    """(GB per device, kind): an accelerator's memory limit from JAX, else the host's available RAM."""

    backend.setup()
    import jax

    kind = jax.default_backend()
    if kind != "cpu":
        stats = jax.devices()[0].memory_stats() or {}
        limit = stats.get("bytes_limit")
        if limit:
            return limit / GB, ("gpu-bf16" if kind == "gpu" and backend.bf16_capable() else kind)
    return _available_ram() / GB, "cpu"


def _available_ram() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def make(
    c,
    device_memory: str | float | None = None,
    devices: int = 1,
    model_axis: int = 1,
    accelerator: str | None = None,
) -> Plan:
    """The plan for config `c`: memory per device given (e.g. '16GB') or detected; `accelerator`
    (cpu, gpu, gpu-bf16, tpu) is detected too, or 'gpu' for a given memory size."""
    host = disk = None
    if device_memory is None:  # this machine: its RAM and disk too
        memory, detected = detect_device()
        accelerator = accelerator or detected
        host, disk = _available_ram() / GB, _free_disk() / GB
    else:
        memory = (
            parse_memory(device_memory) if isinstance(device_memory, str) else float(device_memory)
        )
        accelerator = accelerator or "gpu"
    a = architecture(c.model.preset)
    if a.context:  # as kft train refuses it once the model is loaded
        families.check_seq_len(c.data.seq_len, a.context)
    return estimate(a, c, memory, devices, model_axis, accelerator, host, disk)


def _free_disk() -> float:
    """Bytes free where GPTQ parks float kernels (kft.quant.parking)."""
    import shutil

    return shutil.disk_usage(parking.default_root()).free


def int4_rounding(
    c, devices: int = 1, model_axis: int = 1, device_memory: str | None = None
) -> str:
    """`model.int4_rounding` as a run applies it. `auto` is gptq where the plan says GPTQ's work at
    load fits (on the first device: the base is rounded before it is laid out on a mesh), else
    least-squares; the choice is printed."""
    rounding = c.model.int4_rounding
    if c.model.quantize != "int4" or rounding in ("least-squares", "gptq"):
        return rounding
    try:
        gptq = make(c, device_memory, devices, model_axis).quantizing > 0
    except KftError:  # no config.json to plan from: GPTQ's memory is the user's to watch
        gptq = True
    if gptq:
        print(
            f"kft: int4 rounding: gptq, calibrated on the first {c.model.calibration_examples} training "
            "examples (model.int4_rounding least-squares skips it)",
            flush=True,
        )
        return "gptq"
    print(
        "kft: int4 rounding: least-squares (GPTQ's work at load would not fit in memory; see kft plan)",
        flush=True,
    )
    return "least-squares"


def check_before_training(c, devices: int = 1, model_axis: int = 1) -> None:
    """Stop a run that will not fit, with the plan's advice (`train.memory_check: false` skips).
    `devices` and `model_axis`: the mesh the run will use (the batch is split over devices/model_axis).
    A seq_len beyond the model's context is refused as such, not as "does not fit"."""
    if not c.train.memory_check:
        return
    try:
        context = architecture(c.model.preset).context
        plan = make(c, devices=devices, model_axis=model_axis)
    except KftError as e:
        print(f"kft: memory check skipped ({e})", flush=True)
        return
    if context:
        families.check_seq_len(c.data.seq_len, context)
    print(
        f"kft: memory plan: peak {plan.peak:.2f} GB of {plan.memory:.2f} GB per device", flush=True
    )
    if not plan.fits:
        raise KftError(
            f"predicted peak {plan.peak:.2f} GB per device > {plan.memory:.2f} GB available; "
            f"{plan.advice} (see `kft plan`; train.memory_check: false to try anyway)"
        )
    disk = _free_disk() / GB
    if plan.disk > disk:
        raise KftError(
            f"GPTQ parks up to {plan.disk:.2f} GB of float kernels on disk while the base "
            f"loads, and that disk has {disk:.2f} GB free; set TMPDIR to a folder on a larger disk, or use "
            "model.int4_rounding least-squares (train.memory_check: false to try anyway)"
        )
    free = _available_ram() / GB
    if plan.host > free:
        raise KftError(
            f"loading the {c.model.quantize} base takes {plan.host:.2f} GB of host memory, and this machine "
            f"has {free:.2f} GB of RAM free; use a machine with more RAM or a smaller model (see `kft plan`; "
            "train.memory_check: false to try anyway)"
        )
