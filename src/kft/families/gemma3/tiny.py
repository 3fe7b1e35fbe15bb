"""Gemma 3's tiny random preset (kft.models.tiny): a text-only Gemma3Backbone with query/key norms and
sliding-window attention."""

BACKBONES = {
    "gemma3": dict(
        image_size=None,
        query_head_dim_normalize=True,
        use_query_key_norm=True,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        use_sliding_window_attention=True,
        sliding_window_size=32,
    )
}
