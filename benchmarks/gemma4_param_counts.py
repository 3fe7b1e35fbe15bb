"""Parameter counts of Gemma 4 E2B / E4B as kft builds them for text fine-tuning (no vision/audio
encoders) vs KerasHub's multimodal preset total, and the LoRA count kft adds (rank 16, all-linear).

No weights needed: the text backbone is built with deferred initialisation (nothing allocated) from
the published text configs; the multimodal totals are KerasHub's preset metadata (`params`).
Run: python benchmarks/gemma4_param_counts.py
"""

import numpy as np

from kft.core import backend
from kft.models import lora, model

TEXT_CONFIGS = {  # Hugging Face text_config of google/gemma-4-E2B / E4B, as KerasHub's convert_gemma4 maps it
    "gemma4_instruct_2b": dict(
        hidden_dim=1536,
        num_layers=35,
        num_query_heads=8,
        num_key_value_heads=1,
        intermediate_dim=6144,
        num_kv_shared_layers=20,
        use_double_wide_mlp=True,
        layer_types=(["sliding_attention"] * 4 + ["full_attention"]) * 7,
    ),
    "gemma4_instruct_4b": dict(
        hidden_dim=2560,
        num_layers=42,
        num_query_heads=8,
        num_key_value_heads=2,
        intermediate_dim=10240,
        num_kv_shared_layers=18,
        use_double_wide_mlp=False,
        layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 7,
    ),
}
COMMON = dict(
    vocabulary_size=262144,
    image_size=None,
    head_dim=256,
    global_head_dim=512,
    sliding_window_size=512,
    hidden_size_per_layer_input=256,
    vocab_size_per_layer_input=262144,
    final_logit_soft_cap=30.0,
    global_rope_partial_rotary_factor=0.25,
)


def count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def main():
    backend.setup()
    import keras_hub
    from keras_hub.src.models.gemma4.gemma4_presets import backbone_presets

    for name, config in TEXT_CONFIGS.items():
        with model.weights_from_preset_only():
            backbone = keras_hub.models.Gemma4Backbone(**COMMON, **config)
            total = count(backbone.weights)
            per_layer = count(v for v in backbone.weights if "per_layer" in v.path)
            lora.enable(backbone, 16, 32, ["all-linear"])
            trainable = count(lora.lora_variables(backbone).values())
        full = backbone_presets[name]["metadata"]["params"]
        print(
            f"{name}: text-only {total / 1e9:.3f}B (of which per-layer embeddings/projections "
            f"{per_layer / 1e9:.3f}B), multimodal preset {full / 1e9:.1f}B -> encoders left out "
            f"~{(full - total) / 1e9:.2f}B; LoRA r16 all-linear {trainable / 1e6:.2f}M trainable; "
            f"bf16 weights text-only {2 * total / 2**30:.1f} GiB vs {2 * full / 2**30:.1f} GiB"
        )


if __name__ == "__main__":
    main()
