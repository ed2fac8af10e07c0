"""M3Video pretraining model: encoder on the visible tokens, a light decoder with mask tokens, one linear head each.

Forward (per decoder): `encoder_to_decoder` (linear, no bias) on the encoded visible tokens, plus the decoder's own
sin-cos table at their positions; the learned `mask_token` plus the table at each hidden position; the sequence
`[visible..., hidden...]` (each in ascending token order, as the reference) runs through the decoder blocks; the hidden
tokens are kept, normalised and projected by `head` to the target dimension.

`output_dims` with one entry = the paper's default "joint" decoder with one linear head; with several entries =
"separate" decoders (paper Table 8), one full decoder per entry, predictions concatenated in the order given.

Parameter tree (`E` = encoder width, `Dd` = decoder width, `O` = output dim of that decoder):

  encoder/...                          `VideoViT` (see vit.py)
  decoder/encoder_to_decoder/kernel    [E, Dd]      encoder_to_decoder.0.weight (transposed); PyTorch default init
  decoder/mask_token                   [1, 1, Dd]   mask_token; trunc-normal std 0.02 truncated at +-0.02
  decoder/block_00 ...                 decoder.0.blocks.*: same names as the encoder blocks (layers.py)
  decoder/norm/scale, norm/bias        [Dd]         decoder.0.norm.*
  decoder/head/kernel, head/bias       [Dd, O],[O]  a single linear head (the reference's two MLP heads with
                                                    sigmoid/tanh are not reproduced)

With separate decoders the subtrees are named `decoder_0`, `decoder_1`, ... instead of `decoder`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from m3video_jax import masking
from m3video_jax.models import layers
from m3video_jax.models import vit

Dtype = Any


def _mask_token_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
  # The reference: trunc_normal_(std=0.02, a=-0.02, b=0.02), i.e. N(0, 0.02^2) truncated at one standard deviation.
  return 0.02 * jax.random.truncated_normal(key, -1.0, 1.0, shape, dtype)


class Decoder(nn.Module):
  """Decoder: projection, mask tokens + positions, pre-norm blocks, LayerNorm, linear head.

  Attributes:
    width: decoder width `Dd`.
    depth: number of blocks.
    num_heads: attention heads.
    output_dim: prediction size per hidden token.
    dtype: compute dtype.
    attention: attention implementation (`layers.resolve_attention`).
    remat: recompute each block's activations in the backward pass.
  """
  width: int
  depth: int
  num_heads: int
  output_dim: int
  dtype: Dtype = jnp.float32
  attention: str = 'auto'
  remat: bool = False

  @nn.compact
  def __call__(self, x_vis: jax.Array, visible_idx: jax.Array, hidden_idx: jax.Array, num_tokens: int, *,
               train: bool) -> jax.Array:
    """Predicts the hidden tokens.

    Args:
      x_vis: encoded visible tokens `[B, Nv, E]`.
      visible_idx: int32 `[B, Nv]`, ascending.
      hidden_idx: int32 `[B, Nm]`, ascending.
      num_tokens: `N = Nv + Nm`.
      train: drop path switch (the decoder has none; kept for a uniform block interface).

    Returns:
      float32 `[B, Nm, output_dim]`, hidden tokens in ascending token order.
    """
    b, nm = hidden_idx.shape
    x = nn.Dense(self.width, use_bias=False, kernel_init=layers.torch_default_kernel_init, dtype=self.dtype,
                 name='encoder_to_decoder')(x_vis)
    mask_token = self.param('mask_token', _mask_token_init, (1, 1, self.width), jnp.float32)
    pos = jnp.asarray(layers.sincos_table(num_tokens, self.width))
    x_vis = x + jnp.take(pos, visible_idx, axis=0).astype(self.dtype)
    x_hid = (mask_token + jnp.take(pos, hidden_idx, axis=0)).astype(self.dtype)
    x = jnp.concatenate([x_vis, jnp.broadcast_to(x_hid, (b, nm, self.width))], axis=1)
    block = layers.encoder_block(self.remat)
    for i in range(self.depth):
      x = block(self.num_heads, 4 * self.width, dtype=self.dtype, attention=self.attention, name=f'block_{i:02d}')(
          x, train)
    x = layers.layer_norm('norm', self.dtype)(x[:, -nm:])
    x = nn.Dense(self.output_dim, kernel_init=layers.xavier_uniform, dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)


class M3VideoPretrainer(nn.Module):
  """Masked motion model for pretraining.

  Attributes:
    encoder_variant: 'mu', 'S', 'B' or 'L'.
    patch_size: tubelet `(pt, ph, pw)`.
    decoder_width, decoder_depth, decoder_heads: decoder shape (paper default 192, 1, 6).
    output_dims: one entry = joint decoder and head; several = one separate decoder per entry (paper Table 8).
      Typically `tuple(targets.part_dims(cfg).values())` for separate, or `(sum of those,)` for joint.
    drop_path_rate: encoder stochastic depth.
    dtype: compute dtype (bf16 for GPU/TPU); parameters and the returned predictions are float32.
    attention: attention implementation of every block, `config.model.attention` (`layers.resolve_attention`).
    remat: rematerialise every encoder and decoder block (`config.model.remat`).
  """
  encoder_variant: str = 'B'
  patch_size: tuple[int, int, int] = (2, 16, 16)
  decoder_width: int = 192
  decoder_depth: int = 1
  decoder_heads: int = 6
  output_dims: tuple[int, ...] = (264,)
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  attention: str = 'auto'
  remat: bool = False

  @nn.compact
  def __call__(self, video: jax.Array, hidden: jax.Array, *, train: bool,
               num_hidden: int | None = None) -> jax.Array:
    """Predicts the targets of the hidden tokens.

    Args:
      video: float `[B, T, H, W, 3]`.
      hidden: bool `[B, N]`, True = hidden, the same count in every row.
      train: enables drop path (needs the `'dropout'` rng when `drop_path_rate > 0`).
      num_hidden: `Nm`. Required under `jax.jit` (`masking.num_hidden(grid, ratio, kind)`); read from `hidden` when
        it is a concrete array.

    Returns:
      float32 `[B, Nm, sum(output_dims)]` for the hidden tokens in ascending token order.
    """
    if not self.output_dims:
      raise ValueError('output_dims must have at least one entry')
    t, h, w = vit.token_grid(video.shape, self.patch_size)
    n = t * h * w
    if hidden.shape != (video.shape[0], n):
      raise ValueError(f'hidden mask shape {hidden.shape} does not match the {video.shape[0]} clips x {n} tokens '
                       f'of a video of shape {video.shape}')
    visible_idx, hidden_idx = masking.split_indices(hidden, num_hidden)
    x = vit.VideoViT(self.encoder_variant, self.patch_size, self.drop_path_rate, self.dtype, attention=self.attention,
                     remat=self.remat, name='encoder')(video, visible_idx=visible_idx, train=train)
    names = ['decoder'] if len(self.output_dims) == 1 else [f'decoder_{i}' for i in range(len(self.output_dims))]
    preds = [
        Decoder(self.decoder_width, self.decoder_depth, self.decoder_heads, dim, dtype=self.dtype,
                attention=self.attention, remat=self.remat, name=name)(x, visible_idx, hidden_idx, n, train=train)
        for name, dim in zip(names, self.output_dims)
    ]
    return preds[0] if len(preds) == 1 else jnp.concatenate(preds, axis=-1)
