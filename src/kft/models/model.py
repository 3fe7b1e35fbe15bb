"""Loading a Gemma-family causal LM through KerasHub presets, with a dtype policy."""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

from kft import families
from kft.core import backend, files
from kft.core.errors import KftError
from kft.models import presets


def resolve_precision(precision: str) -> str:
    """The Keras dtype policy for `model.precision`, warning where Gemma is known to misbehave."""
    if precision == "auto":
        return "mixed_bfloat16" if backend.bf16_capable() else "float32"
    if "float16" in precision and "bfloat16" not in precision:
        if backend.accelerator() == "cpu":
            raise KftError(
                f"model.precision {precision} is not supported on CPU (emulated, and Gemma overflows "
                "float16); use float32"
            )
        warnings.warn(
            "Gemma's activations overflow float16; prefer mixed_bfloat16 (TPU, Ampere+ GPUs) or float32",
            stacklevel=2,
        )
    if "bfloat16" in precision and backend.accelerator() == "gpu" and not backend.bf16_capable():
        warnings.warn(
            "this GPU lacks native bfloat16; it will be emulated slowly. Consider float32",
            stacklevel=2,
        )
    return precision


def family_of_config(folder: str) -> str | None:
    """The family named in a local preset's config.json (Keras or Hugging Face), or None."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    config = files.read_json(path, "the preset folder is damaged; copy or export it again")
    if "model_type" in config:  # Hugging Face format
        model_type = config["model_type"]
        if model_type not in families.HF_MODEL_TYPES:
            raise KftError(
                f"preset '{folder}' is a '{model_type}' model; kft fine-tunes {families.SUPPORTED} only"
            )
        family = families.get(families.HF_MODEL_TYPES[model_type])
        problem = family.hf_folder_problem(folder) if family.hf_folder_problem else None
        if problem:
            raise KftError(f"preset '{folder}': {problem}")
        return family.name
    name = config.get("class_name", "")
    family = families.of_keras_config(name, config.get("config", {}))
    if family is None:
        raise KftError(
            f"preset '{folder}' holds a {name or 'unknown'} model; kft fine-tunes {families.SUPPORTED} only"
        )
    return family


def family_of(backbone) -> str:
    return families.of_backbone(backbone)


def check_seq_len(backbone, seq_len: int) -> None:
    """Refuse a sequence length beyond the loaded model's context (see families.context_length)."""
    families.check_seq_len(
        seq_len, families.context_length(family_of(backbone), backbone.get_config())
    )


@contextlib.contextmanager
def weights_from_preset_only():
    """Skip the random initial values of variables created inside; they get the preset's weights.

    Keras initialises every variable when a model is built, then KerasHub overwrites them with
    the preset's weights: for Gemma 3 270M that is 1 GB of random numbers thrown away (loading
    peaked at 3.46 GB RSS and took 14 s; 2.75 GB and 5 s without). A variable the preset did not
    fill is initialised after loading (`initialise_unfilled`), as Keras would have. Falls back to
    Keras' own path if its internals differ."""
    try:
        from keras.src.backend.common import global_state
        from keras.src.backend.jax.core import JaxVariable

        original = JaxVariable._initialize_with_initializer
    except (ImportError, AttributeError):
        yield
        return

    def defer(variable, initializer):
        if global_state.get_global_attribute("distribution") is not None:
            return original(variable, initializer)  # sharded at creation: leave it to Keras
        variable._value, variable._initializer = None, initializer

    JaxVariable._initialize_with_initializer = defer
    try:
        yield
    finally:
        JaxVariable._initialize_with_initializer = original


def initialise_unfilled(model, parked=()) -> None:
    """Give every variable left without a value by `weights_from_preset_only` its Keras initial value
    (not those whose value waits in `parked`, a kft.quant.parking.Parking)."""
    for variable in model.variables:
        if getattr(variable, "_value", True) is None and variable not in parked:
            variable._initialize_with_initializer(variable._initializer)
            variable._initializer = None


def text_only_build(loader) -> tuple[dict, list[str]]:
    """(backbone kwargs, names of what they leave out): a family's vision and audio encoders are not
    built for text fine-tuning (an E4B preset's encoders are dead weight on the accelerator)."""
    family = families.of_keras_class(loader.check_backbone_class().__name__)
    if family is None or not family.text_only:
        return {}, []
    return dict(family.text_only), family.left_out(loader.config)


@contextlib.contextmanager
def _vocabulary_untracked():
    """While inside, KerasHub's SentencePiece tokenizers store their vocabulary (a list and a dict of
    every piece) without Keras' attribute tracking, which wraps each of them: on Gemma 3's 262,144
    pieces 0.7 s per `set_proto` (against 0.15 s), and a preset load runs it twice. Strings and
    ints hold nothing to track."""
    from keras.src.utils.tracking import DotNotTrackScope
    from keras_hub.src.tokenizers.sentence_piece_tokenizer import SentencePieceTokenizer

    original = SentencePieceTokenizer.set_proto

    def set_proto(self, proto):
        with DotNotTrackScope():
            return original(self, proto)

    SentencePieceTokenizer.set_proto = set_proto
    try:
        yield
    finally:
        SentencePieceTokenizer.set_proto = original


def from_preset(path: str, policy: str):
    """The causal LM at `path`, text decoder only where the family allows."""
    families.fix_keras_hub()
    with _vocabulary_untracked():
        task = _task_from_preset(path, policy)
    # kft tokenizes itself (kft.data.encoding): it reads the preprocessor's choice off the tokenizer.
    vars(task.preprocessor.tokenizer)["kft_add_start"] = bool(
        getattr(task.preprocessor, "add_start_token", True)
    )
    return task


def _task_from_preset(path: str, policy: str):
    import keras_hub
    from keras_hub.src.utils.preset_utils import get_preset_loader

    backbone_kwargs, left_out = text_only_build(get_preset_loader(path))
    if not backbone_kwargs:
        return keras_hub.models.CausalLM.from_preset(path, dtype=policy)
    backbone = keras_hub.models.Backbone.from_preset(path, dtype=policy, **backbone_kwargs)
    if left_out:
        print(
            f"kft: text fine-tuning: left out the {' and '.join(left_out)} (not built, not loaded)",
            file=sys.stderr,
            flush=True,
        )
    # The backbone's weights are loaded; the task only adds the preprocessor around it.
    task_cls = getattr(keras_hub.models, families.get(families.of_backbone(backbone)).causal_lm)
    return task_cls.from_preset(path, backbone=backbone, load_weights=False)


def _first_line(error: Exception) -> str:
    text = str(error).strip().strip("'\"")
    return text.splitlines()[0][:200] if text else type(error).__name__


@contextlib.contextmanager
def preset_errors(preset: str, path: str):
    """Failures reading `preset` (resolved to `path`) as one-line KftErrors.

    Downloads fail in many ways (network, auth, consent, quota: kagglehub and huggingface_hub raise
    their own types); for a remote handle every failure is the user's to fix, so it gets one line.
    So does a local folder's: damaged files, or weights that are not what its config.json says
    (KerasHub's loaders raise KeyError, ValueError, OSError, safetensors' and h5py's own errors)."""
    remote = not presets.is_local(path)
    try:
        yield
    except (KftError, AssertionError):
        raise  # a KftError is one line for the user already; an AssertionError is kft's own bug
    except ValueError as e:
        raise KftError(f"cannot load preset '{preset}': {_first_line(e)}") from None
    except Exception as e:
        if not remote:
            raise KftError(
                f"cannot read preset folder '{preset}' ({type(e).__name__}: {_first_line(e)}): "
                "a file there is damaged, or its weights are not those its config.json describes"
            ) from None
        raise KftError(
            f"cannot load preset '{preset}' ({type(e).__name__}): Kaggle presets need network "
            "access and credentials (KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json); offline, use a "
            f"local preset folder or a kft-prepared name such as {next(iter(presets.PREPARED))}"
        ) from None
