"""Gemma 3 (text decoder; the vision encoder of 4B+ presets is KerasHub's to load)."""

from kft.families.family import Family
from kft.families.gemma import GEMMA_TURNS, LICENSE

FAMILY = Family(
    "gemma3", "Gemma3Backbone", "Gemma3CausalLM", "Gemma3Tokenizer", ("gemma3_text", "gemma3"), "Gemma3ForCausalLM",
    "gemma3_text", max_position_embeddings=32768, license=LICENSE, **GEMMA_TURNS)
