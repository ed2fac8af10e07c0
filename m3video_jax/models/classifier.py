"""VideoClassifier: the reference's fine-tuning model (`finetune/model.py:VisionTransformer` with mean pooling).

`VideoViT` on all tokens without its final LayerNorm -> mean over tokens -> `fc_norm` (LayerNorm, eps 1e-6) -> `head`
(Dense to the classes). Input: ImageNet-normalised video float `[B, T, H, W, 3]`; output: float32 logits `[B, C]`.

Parameter tree (names are API: `load_init_params` takes `encoder` from a pretraining or imported checkpoint, and the
PyTorch exporter maps these names to the reference's keys):

  encoder/...          `VideoViT` params without `norm` (see vit.py)       patch_embed.*, blocks.i.*
  fc_norm/scale, bias  [D]                                                fc_norm.weight / .bias
  head/kernel          [D, C]                                             head.weight (C, D), transposed
  head/bias            [C]                                                head.bias

Init (reference): `head` kernel ~ N(0, 0.02) then x `head_init_scale` (0.001), bias 0; `fc_norm` 1 / 0. The encoder
uses VideoViT's own init (the reference re-initialises it with trunc-normal, but `init_from` overwrites it anyway).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from m3video_jax.models import layers
from m3video_jax.models import vit

Dtype = Any


def _scaled_normal(stddev: float, scale: float):
  # timm's trunc_normal_(std=.02) truncates at +-2 absolute, i.e. not at all in practice: a plain normal.
  return nn.initializers.normal(stddev * scale)


class VideoClassifier(nn.Module):
  """Mean-pooling video ViT classifier.

  Attributes:
    variant: encoder size, 'mu', 'S', 'B' or 'L'.
    num_classes: `C`.
    patch_size: tubelet `(pt, ph, pw)`.
    drop_path_rate: stochastic depth of the encoder (0.1 in the reference fine-tuning recipe).
    freeze_encoder: linear probing: the encoder runs in eval mode (no drop path) and no gradient flows into it.
    head_init_scale: multiplies the head's initial weights (reference: 0.001).
    dtype: compute dtype of the encoder; pooling, `fc_norm` and `head` run in float32.
    attention: the encoder's attention implementation, `config.model.attention` (`layers.resolve_attention`).
    remat: rematerialise the encoder blocks (`config.model.remat`).
  """
  variant: str
  num_classes: int
  patch_size: tuple[int, int, int] = (2, 16, 16)
  drop_path_rate: float = 0.0
  freeze_encoder: bool = False
  head_init_scale: float = 0.001
  dtype: Dtype = jnp.float32
  attention: str = 'auto'
  remat: bool = False

  @nn.compact
  def __call__(self, video: jax.Array, *, train: bool) -> jax.Array:
    """Logits float32 `[B, C]` of video `[B, T, H, W, 3]`; `train` enables drop path (rng `'dropout'`)."""
    encoder = vit.VideoViT(self.variant, tuple(self.patch_size), 0.0 if self.freeze_encoder else self.drop_path_rate,
                           self.dtype, final_norm=False, attention=self.attention, remat=self.remat, name='encoder')
    tokens = encoder(video, train=train and not self.freeze_encoder)  # [B, N, D]
    if self.freeze_encoder:
      tokens = jax.lax.stop_gradient(tokens)  # No encoder backward pass at all, not just zero updates.
    pooled = jnp.mean(tokens.astype(jnp.float32), axis=1)  # [B, D]
    pooled = layers.layer_norm('fc_norm', jnp.float32)(pooled)
    return nn.Dense(self.num_classes, kernel_init=_scaled_normal(0.02, self.head_init_scale),
                    bias_init=nn.initializers.zeros, dtype=jnp.float32, name='head')(pooled)
