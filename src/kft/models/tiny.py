"""Tiny random Gemma, Gemma 2, Gemma 3 and Gemma 4 presets, for smoke runs and tests.

Real KerasHub presets (`save_to_preset`) with a SentencePiece tokenizer trained here on the
bundled text, Gemma's special ids (pad 0, eos 1, bos 2, unk 3), the chat-turn markers as single
tokens and byte fallback, so any UTF-8 text (Korean included) encodes without `<unk>`.

Gemma 4 has two: `gemma4` (dense: per-layer embeddings, local/global layers with different head
dims and partial RoPE on the global ones, the last two layers reusing earlier layers' K/V, a
double-wide MLP there, final logit soft-capping) and `gemma4_moe` (the 26B-A4B block: an expert bank beside the dense MLP, and global
layers whose V is their K).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

FAMILIES = ("gemma", "gemma2", "gemma3", "gemma4", "gemma4_moe")
SPECIAL_SYMBOLS = ["<start_of_turn>", "<end_of_turn>", "<img>", "<start_of_image>", "<end_of_image>"]
# What Gemma4Tokenizer requires (image and video markers) plus the chat-turn and thinking markers.
GEMMA4_SYMBOLS = ["<|turn>", "<turn|>", "<|image>", "<|image|>", "<image|>", "<|video|>", "<|think|>",
                  "<|channel>", "<channel|>"]
from kft.data.bundled import FOLDER as BUNDLED  # noqa: E402
EMBEDDING_SCALE = 4.0


def bundled_corpus() -> list[str]:
    """Every text line of the bundled datasets plus the template words."""
    lines = ["Instruction:", "Response:", "Context:", "user", "model"]
    for path in sorted(BUNDLED.glob("*.jsonl")):
        for row in path.read_text(encoding="utf-8").splitlines():
            for value in json.loads(row).values():
                if isinstance(value, list):  # chat messages
                    lines.extend(str(m.get("content", "")) for m in value)
                elif value:
                    lines.append(str(value))
    return lines


def train_sentencepiece(lines: list[str], vocab_size: int = 640, symbols=SPECIAL_SYMBOLS) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=list(symbols),
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",  # keep newlines and spaces, as Gemma's own tokenizer does
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def _backbone(family: str, vocab: int, **overrides):
    import keras_hub

    common = {**dict(vocabulary_size=vocab, num_layers=2, num_query_heads=4, num_key_value_heads=2,
                     hidden_dim=64, intermediate_dim=128, head_dim=16), **overrides}
    if family == "gemma":
        return keras_hub.models.GemmaBackbone(**common)
    if family.startswith("gemma4"):
        return _gemma4_backbone(family, common)
    if family == "gemma2":
        return keras_hub.models.GemmaBackbone(
            **common, query_head_dim_normalize=True, use_post_ffw_norm=True, use_post_attention_norm=True,
            final_logit_soft_cap=30.0, attention_logit_soft_cap=50.0,
            use_sliding_window_attention=True, sliding_window_size=32)
    return keras_hub.models.Gemma3Backbone(
        **common, image_size=None, query_head_dim_normalize=True, use_query_key_norm=True,
        use_post_ffw_norm=True, use_post_attention_norm=True,
        use_sliding_window_attention=True, sliding_window_size=32)


def _gemma4_backbone(family: str, common: dict):
    import keras_hub

    common = {**common, "num_layers": 4}
    gemma4 = dict(image_size=None, final_logit_soft_cap=30.0, sliding_window_size=32, sliding_window_pattern=2,
                  global_head_dim=32)  # layers: local, global, local, global
    if family == "gemma4":
        # Partial RoPE on global layers (a quarter of the head dim), as E2B/E4B have.
        return keras_hub.models.Gemma4Backbone(**common, **gemma4, num_kv_shared_layers=2,
                                               hidden_size_per_layer_input=8, use_double_wide_mlp=True,
                                               global_rope_partial_rotary_factor=0.25)
    return keras_hub.models.Gemma4Backbone(**common, **gemma4, enable_moe_block=True, num_experts=4,
                                           expert_intermediate_dim=32, num_experts_per_token=2,
                                           num_global_key_value_heads=1)


def build_tiny_preset(family: str, folder: str | Path, seed: int = 0, sequence_length: int = 256,
                      **backbone_overrides) -> Path:
    """Write a tiny random `family` causal LM as a KerasHub preset into `folder` (backbone
    arguments such as num_query_heads may be overridden)."""
    from kft.core import backend

    backend.setup()
    import keras
    import keras_hub

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    keras.utils.set_random_seed(seed)
    if family.startswith("gemma4"):
        proto = train_sentencepiece(bundled_corpus(), symbols=GEMMA4_SYMBOLS)
        tokenizer = keras_hub.models.Gemma4Tokenizer(proto=proto)
        preprocessor = keras_hub.models.Gemma4CausalLMPreprocessor(tokenizer, sequence_length=sequence_length)
        task_cls = keras_hub.models.Gemma4CausalLM
    elif family == "gemma3":
        proto = train_sentencepiece(bundled_corpus())
        tokenizer = keras_hub.models.Gemma3Tokenizer(proto=proto)
        preprocessor = keras_hub.models.Gemma3CausalLMPreprocessor(tokenizer, sequence_length=sequence_length)
        task_cls = keras_hub.models.Gemma3CausalLM
    else:
        proto = train_sentencepiece(bundled_corpus())
        tokenizer = keras_hub.models.GemmaTokenizer(proto=proto)
        preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(tokenizer, sequence_length=sequence_length)
        task_cls = keras_hub.models.GemmaCausalLM
    backbone = _backbone(family, tokenizer.vocabulary_size(), **backbone_overrides)
    # Real Gemma embeddings have norms of a few units, so tied output logits can be confident;
    # at KerasHub's default init a 64-wide model could never push its loss far below log(vocab).
    embeddings = backbone.token_embedding.embeddings
    embeddings.assign(embeddings * EMBEDDING_SCALE)
    task = task_cls(backbone=backbone, preprocessor=preprocessor)
    folder = Path(folder)
    task.save_to_preset(str(folder))
    return folder
