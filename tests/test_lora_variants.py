"""rsLoRA (alpha / sqrt(rank)) and LoRA+ (B's learning rate x ratio): trained, reloaded and
exported exactly."""

import json
import math
import os

import numpy as np
import pytest
from conftest import CONFIGS
from test_export import hf_model, keras_logits, rel, torch_logits


@pytest.fixture(scope="module")
def variant_run(tiny_presets, tmp_path_factory):
    import kft

    root = tmp_path_factory.mktemp("variants")
    result = kft.train(
        os.path.join(CONFIGS, "tiny.yaml"),
        **{
            "model.preset": tiny_presets["gemma3"],
            "train.epochs": None,
            "train.max_steps": 6,
            "train.lr": 0.01,
            "lora.rank": 4,
            "lora.alpha": 8.0,
            "lora.targets": ["all-linear"],
            "lora.rslora": True,
            "lora.plus_ratio": 16.0,
            "output.samples": 0,
            "output.tensorboard": False,
            "output.dir": str(root / "run"),
        },
    )
    return result, root


def test_rslora_scales_the_update_by_alpha_over_sqrt_rank(variant_run):
    from kft import families

    result, _ = variant_run
    block = families.decoder_blocks(result.task.backbone)[0]
    layers = families.get("gemma3").block_layers(block)
    assert all(
        math.isclose(layer.lora_alpha / layer.lora_rank, 8.0 / math.sqrt(4))
        for layer in layers.values()
    )
    meta = json.loads((result.run_dir / "adapter_config.json").read_text())
    assert meta["rslora"] is True and meta["alpha"] == 8.0 and meta["rank"] == 4


def test_an_rslora_run_reloads_and_exports_to_peft_and_hf_exactly(variant_run):
    from peft import PeftModel

    import kft
    from kft.export import export

    result, root = variant_run
    expected = keras_logits(result.task)
    assert rel(keras_logits(kft.load(str(result.run_dir))), expected) <= 1e-6
    peft_dir = export(str(result.run_dir), "peft", str(root / "peft"), with_base=True)
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert config["use_rslora"] is True
    tuned = PeftModel.from_pretrained(hf_model(peft_dir / "base"), str(peft_dir)).eval()
    assert rel(torch_logits(tuned), expected) <= 1e-4
    merged = export(str(result.run_dir), "hf", str(root / "hf"))
    assert rel(torch_logits(hf_model(merged)), expected) <= 1e-4


def test_lora_plus_steps_b_with_ratio_times_the_learning_rate():
    """Adam's first step moves each weight by lr (its update is m / sqrt(v) = sign(g)): B by 16 lr,
    A by lr; the decoupled weight decay follows the same rates. A gradient scale would not do it."""
    import keras

    from kft.training import optim

    lr, ratio, wd = 1e-3, 16.0, 0.1
    a = keras.Variable(np.ones((4, 2), "float32"), name="lora_kernel_a")
    b = keras.Variable(np.ones((2, 4), "float32"), name="lora_kernel_b")
    optimizer = optim.lora_plus_adamw(ratio)(learning_rate=lr, weight_decay=0.0)
    optimizer.apply_gradients(
        [(np.full((4, 2), 3.0, "float32"), a), (np.full((2, 4), 0.5, "float32"), b)]
    )
    step_a, step_b = 1 - np.asarray(a.numpy()), 1 - np.asarray(b.numpy())
    np.testing.assert_allclose(step_a, lr, rtol=1e-3)
    np.testing.assert_allclose(step_b, ratio * lr, rtol=1e-3)
    # Decay alone (zero gradients): w * wd * lr, times the ratio on B.
    a2 = keras.Variable(np.ones((4, 2), "float32"), name="lora_kernel_a")
    b2 = keras.Variable(np.ones((2, 4), "float32"), name="lora_kernel_b")
    decaying = optim.lora_plus_adamw(ratio)(learning_rate=lr, weight_decay=wd)
    decaying.apply_gradients([(np.zeros((4, 2), "float32"), a2), (np.zeros((2, 4), "float32"), b2)])
    np.testing.assert_allclose(1 - np.asarray(a2.numpy()), wd * lr, rtol=1e-3)
    np.testing.assert_allclose(1 - np.asarray(b2.numpy()), ratio * wd * lr, rtol=1e-3)


def test_a_lora_plus_run_trains_with_the_lora_plus_optimizer(variant_run):
    result, _ = variant_run
    assert type(result.fit_model.optimizer).__name__ == "LoraPlusAdamW"
    assert result.metrics["final_loss"] < result.metrics["first_loss"]


def test_a_bad_plus_ratio_is_refused_with_the_key(tmp_path):
    from kft.config import ConfigError, load

    with pytest.raises(ConfigError, match="lora.plus_ratio"):
        load(os.path.join(CONFIGS, "tiny.yaml"), {"lora.plus_ratio": 0})
