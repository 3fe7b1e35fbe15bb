"""Gemma 2: KerasHub's GemmaBackbone with post-attention/feed-forward norms and soft caps."""

from kft.families.family import Family
from kft.families.gemma import GEMMA_TURNS, LICENSE

FAMILY = Family(
    "gemma2", "GemmaBackbone", "GemmaCausalLM", "GemmaTokenizer", ("gemma2",), "Gemma2ForCausalLM", "gemma2",
    max_position_embeddings=8192, matches_keras_config=lambda config: bool(config.get("use_post_ffw_norm")),
    license=LICENSE, **GEMMA_TURNS)
