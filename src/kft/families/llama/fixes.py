"""What kft fixes in KerasHub 0.32's Llama backbones (tests/test_families.py shows each failing without it)."""

from __future__ import annotations


def keras_hub() -> None:
    """The fixes below. Idempotent."""
    tie_word_embeddings_saved()
    norm_epsilon_read()
    special_tokens_saved()


def special_tokens_saved() -> None:
    """Llama3Tokenizer takes its start, end and other special tokens as arguments but saves none of
    them, so a saved Llama 3-architecture preset whose tokens are not Llama 3's own (SmolLM2: ChatML's)
    fails to load ("Cannot find special token '<|end_header_id|>'"). Save them."""
    from keras_hub.src.models.llama3.llama3_tokenizer import Llama3Tokenizer

    if getattr(Llama3Tokenizer.get_config, "kft_fixed", False):
        return
    init, get_config = Llama3Tokenizer.__init__, Llama3Tokenizer.get_config

    def __init__(
        self,
        vocabulary=None,
        merges=None,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        misc_special_tokens=None,
        **kwargs,
    ):
        misc = {"<|start_header_id|>", "<|end_header_id|>"}
        misc = set(misc if misc_special_tokens is None else misc_special_tokens)
        init(self, vocabulary, merges, bos_token, eos_token, set(misc), **kwargs)
        self.kft_special_tokens = dict(
            bos_token=bos_token, eos_token=eos_token, misc_special_tokens=sorted(misc)
        )

    def saving_config(self):
        return {**get_config(self), **getattr(self, "kft_special_tokens", {})}

    saving_config.kft_fixed = True
    Llama3Tokenizer.__init__ = __init__
    Llama3Tokenizer.get_config = saving_config


def norm_epsilon_read() -> None:
    """KerasHub's Hugging Face Llama converter (convert_llama3.py, every `model_type: llama` folder)
    ignores `rms_norm_eps`, so Llama 3 (1e-5) and SmolLM2 (1e-5) load with the backbone's default 1e-6:
    logits 8.9e-4 (relative) off transformers' on SmolLM2 135M. Read it."""
    from keras_hub.src.utils.transformers import convert_llama3

    if getattr(convert_llama3.convert_backbone_config, "kft_fixed", False):
        return
    original = convert_llama3.convert_backbone_config

    def convert_backbone_config(transformers_config):
        config = original(transformers_config)
        if "rms_norm_eps" in transformers_config:
            config["layer_norm_epsilon"] = transformers_config["rms_norm_eps"]
        return config

    convert_backbone_config.kft_fixed = True
    convert_llama3.convert_backbone_config = convert_backbone_config


def tie_word_embeddings_saved() -> None:
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
