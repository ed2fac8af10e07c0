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

With `pooling='attentive'` (the attentive probe, `config.task='attentive_probe'`) an `AttentivePooler` replaces the
mean and `fc_norm`: learnable query token(s) attend over the encoder's tokens (the probe of V-JEPA, Bardes et al.,
2024), and `head` classifies the mean of the pooled queries:

  pooler/query         [Q, D]        the learnable queries, ~ N(0, 0.02)
  pooler/norm_tokens   LayerNorm of the encoder's tokens before the keys and values
  pooler/q, k, v, proj Dense D -> D (with bias)
  pooler/norm_mlp, mlp LayerNorm and `fc1 -> GELU -> fc2` (D -> 4D -> D) on the queries, residual (`pool_mlp`)
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


class AttentivePooler(nn.Module):
  """Cross-attention pooling: `Q` learnable queries attend over the tokens `[B, N, D]` -> `[B, Q, D]`.

  `q + proj(attn(q, norm(x)))`, then (with `mlp`) `+ mlp(norm(.))`: one cross-attention block with the encoder's
  width; every computation in float32 (the pooler is small next to the encoder).

  Attributes:
    num_heads: attention heads (the width must divide by it).
    num_queries: `Q`.
    mlp: the residual MLP after the attention (V-JEPA's "complete block"); False = attention only.
    mlp_ratio: the MLP's hidden width over `D`.
  """
  num_heads: int
  num_queries: int = 1
  mlp: bool = True
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    b, n, d = tokens.shape
    if d % self.num_heads:
      raise ValueError(f'pooler width {d} is not divisible by model.pool_heads={self.num_heads}')
    dh = d // self.num_heads
    query = self.param('query', nn.initializers.normal(0.02), (self.num_queries, d), jnp.float32)
    x = layers.layer_norm('norm_tokens', jnp.float32)(tokens.astype(jnp.float32))
    dense = lambda name: nn.Dense(d, kernel_init=layers.xavier_uniform, dtype=jnp.float32, name=name)
    q = dense('q')(query).reshape(self.num_queries, self.num_heads, dh)
    k = dense('k')(x).reshape(b, n, self.num_heads, dh)
    v = dense('v')(x).reshape(b, n, self.num_heads, dh)
    logits = jnp.einsum('qhd,bnhd->bhqn', q, k) * dh**-0.5
    out = jnp.einsum('bhqn,bnhd->bqhd', jax.nn.softmax(logits, axis=-1), v).reshape(b, self.num_queries, d)
    pooled = query[None] + dense('proj')(out)
    if self.mlp:
      y = layers.layer_norm('norm_mlp', jnp.float32)(pooled)
      pooled = pooled + layers.Mlp(int(self.mlp_ratio * d), jnp.float32, name='mlp')(y)
    return pooled


class VideoClassifier(nn.Module):
  """Video ViT classifier: mean pooling (fine-tuning, linear probing) or attentive pooling (attentive probing).

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
    pooling: 'mean' (mean of the tokens, then `fc_norm`) or 'attentive' (`AttentivePooler`, no `fc_norm`).
    pool_heads, pool_queries, pool_mlp: the `AttentivePooler`'s (pool_heads 0 = the encoder's heads).
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
  pooling: str = 'mean'
  pool_heads: int = 0
  pool_queries: int = 1
  pool_mlp: bool = True

  @nn.compact
  def __call__(self, video: jax.Array, *, train: bool) -> jax.Array:
    """Logits float32 `[B, C]` of video `[B, T, H, W, 3]`; `train` enables drop path (rng `'dropout'`)."""
    encoder = vit.VideoViT(self.variant, tuple(self.patch_size), 0.0 if self.freeze_encoder else self.drop_path_rate,
                           self.dtype, final_norm=False, attention=self.attention, remat=self.remat, name='encoder')
    tokens = encoder(video, train=train and not self.freeze_encoder)  # [B, N, D]
    if self.freeze_encoder:
      tokens = jax.lax.stop_gradient(tokens)  # No encoder backward pass at all, not just zero updates.
    if self.pooling == 'attentive':
      heads = self.pool_heads or vit.get_variant(self.variant).num_heads
      pooled = AttentivePooler(heads, self.pool_queries, self.pool_mlp, name='pooler')(tokens).mean(axis=1)
    elif self.pooling == 'mean':
      pooled = jnp.mean(tokens.astype(jnp.float32), axis=1)  # [B, D]
      pooled = layers.layer_norm('fc_norm', jnp.float32)(pooled)
    else:
      raise ValueError(f"pooling={self.pooling!r} is invalid: expected 'mean' or 'attentive'")
    return nn.Dense(self.num_classes, kernel_init=_scaled_normal(0.02, self.head_init_scale),
                    bias_init=nn.initializers.zeros, dtype=jnp.float32, name='head')(pooled)
