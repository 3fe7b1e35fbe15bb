"""Gemma 4's two tiny random presets (kft.models.tiny), four layers each: local, global, local, global.

`gemma4` (dense: per-layer embeddings, local/global layers with different head dims and partial
RoPE on the global ones, the last two layers reusing earlier layers' K/V, a double-wide MLP there,
final logit soft-capping) and `gemma4_moe` (the 26B-A4B block: an expert bank beside the dense MLP,
and global layers whose V is their K).
"""

# What Gemma4Tokenizer requires (image and video markers) plus the chat-turn and thinking markers.
SYMBOLS = (
    "<|turn>",
    "<turn|>",
    "<|image>",
    "<|image|>",
    "<image|>",
    "<|video|>",
    "<|think|>",
    "<|channel>",
    "<channel|>",
)
_SHARED = dict(
    num_layers=4,
    image_size=None,
    final_logit_soft_cap=30.0,
    sliding_window_size=32,
    sliding_window_pattern=2,
    global_head_dim=32,
)
BACKBONES = {
    # Partial RoPE on global layers (a quarter of the head dim), as E2B/E4B have.
    "gemma4": dict(
        _SHARED,
        num_kv_shared_layers=2,
        hidden_size_per_layer_input=8,
        use_double_wide_mlp=True,
        global_rope_partial_rotary_factor=0.25,
    ),
    "gemma4_moe": dict(
        _SHARED,
        enable_moe_block=True,
        num_experts=4,
        expert_intermediate_dim=32,
        num_experts_per_token=2,
        num_global_key_value_heads=1,
    ),
}
