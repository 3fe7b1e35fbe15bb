"""Gemma 2's tiny random preset (kft.models.tiny): post-attention/feed-forward norms, soft caps and
sliding-window attention."""

BACKBONES = {
    "gemma2": dict(
        query_head_dim_normalize=True,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        final_logit_soft_cap=30.0,
        attention_logit_soft_cap=50.0,
        use_sliding_window_attention=True,
        sliding_window_size=32,
    )
}
