"""What kft fixes in KerasHub 0.32's Llama backbones (tests/test_families.py shows each failing without it)."""

from __future__ import annotations


def keras_hub() -> None:
    """LlamaBackbone (and Llama3Backbone) build a tied head when asked but leave
    `tie_word_embeddings` out of get_config, so a saved tied model (Llama 3.2 1B/3B, SmolLM2) reloads
    untied and its weights fail to load. Idempotent."""
    from keras_hub.src.models.llama.llama_backbone import LlamaBackbone

    if getattr(LlamaBackbone.get_config, "kft_fixed", False):
        return
    original = LlamaBackbone.get_config

    def get_config(self):
        config = original(self)
        config.setdefault("tie_word_embeddings", self.tie_word_embeddings)
        return config

    get_config.kft_fixed = True
    LlamaBackbone.get_config = get_config
