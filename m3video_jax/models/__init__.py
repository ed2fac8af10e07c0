"""Flax models: the VideoViT encoder and the M3Video pretraining model (encoder + decoder + head)."""
from m3video_jax.models.m3video import M3VideoPretrainer
from m3video_jax.models.vit import VARIANTS, VideoViT, token_grid

__all__ = ['M3VideoPretrainer', 'VARIANTS', 'VideoViT', 'token_grid']
