"""kft: LoRA fine-tuning of Gemma-family models with Keras 3 + KerasHub on JAX.

import kft
result = kft.train("configs/tiny.yaml")          # or kft.train(kft.Config(), **{"lora.rank": 8})
lm = kft.load(result.run_dir)                     # base preset + adapter, ready to generate
print(kft.generate(lm, ["What colour is the planet Zorb?"]))
"""

__all__ = ["Config", "KftError", "train", "load", "generate", "export", "publish", "__version__"]

from kft.config import Config  # noqa: E402  (light: dataclasses + yaml)
from kft.core.errors import KftError  # noqa: E402
from kft.core.version import __version__  # noqa: E402


def train(config=None, **overrides):
    """Run the LoRA recipe; returns a TrainResult (`.task`, `.run_dir`, `.metrics`). See kft.training.recipe.train."""
    from kft.training.recipe import train as _train

    return _train(config, **overrides)


def load(run_dir=None, preset=None, adapter_dir=None, precision=None):
    """A keras_hub CausalLM with the adapter of `run_dir` (or `adapter_dir` on `preset`) applied."""
    from kft.generation.loading import load_tuned

    return load_tuned(run_dir=run_dir, preset=preset, adapter_dir=adapter_dir, precision=precision)


def generate(lm, prompts, max_new_tokens=64, template=None, **sampling):
    """Completions for `prompts` (a string or a list); `template` wraps raw text as in training."""
    from kft.generation.loading import generate_text

    return generate_text(lm, prompts, max_new_tokens=max_new_tokens, template=template, **sampling)


# The functions shadow their (light) modules' names on purpose: kft.export(...) and kft.export.publish(...).
from kft.export import export  # noqa: E402
from kft.export.publish import publish  # noqa: E402
