"""VideoViT: the M3Video/VideoMAE video encoder (tubelet embedding, fixed sin-cos positions, pre-norm blocks).

Input: video float `[B, T, H, W, 3]` (ImageNet-normalised RGB, channels last). Tubelets of `(pt, ph, pw)` =
`(2, 16, 16)` give the token grid `(t, h, w) = (T // pt, H // ph, W // pw)`, `N = t * h * w` tokens in the order
`t * h * w + y * w + x` (the reference's flatten order). The 1-D sin-cos table is computed from `N` at trace time, so
other clip lengths and resolutions need no checkpoint change (it is not a parameter, as in the reference).

With `visible_idx`, only those tokens are embedded and encoded (pretraining); without it all tokens are (features,
finetuning). The tubelet embedding is a 3-D convolution with kernel = stride = tubelet, computed as patchify + one
matmul so that masked tokens cost nothing.

Parameter tree of `VideoViT` (width `D`, MLP width `M`, depth `n`); PyTorch names from the reference encoder:

  patch_embed/kernel   [pt, ph, pw, 3, D]  patch_embed.proj.weight (D, 3, pt, ph, pw) -> transpose (2, 3, 4, 1, 0)
  patch_embed/bias     [D]                 patch_embed.proj.bias
  block_00 ... block_{n-1:02d}             blocks.0 ... blocks.{n-1}: see `layers.py` for the names inside a block
  norm/scale, norm/bias [D]                norm.weight / norm.bias (final LayerNorm of the pretraining encoder)

Variants (`VARIANTS`): width, depth, heads, MLP width. ViT-B has 86,227,200 parameters, the reference's count.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from m3video_jax import masking
from m3video_jax.models import layers

Dtype = Any


@dataclasses.dataclass(frozen=True)
class Variant:
  width: int
  depth: int
  num_heads: int
  mlp_dim: int


VARIANTS: dict[str, Variant] = {
    'mu': Variant(width=64, depth=2, num_heads=4, mlp_dim=256),  # Tests and CPU smoke runs only.
    'XS': Variant(width=128, depth=4, num_heads=4, mlp_dim=512),  # CPU-scale experiments (docs/results.md).
    'S': Variant(width=384, depth=12, num_heads=6, mlp_dim=1536),
    'B': Variant(width=768, depth=12, num_heads=12, mlp_dim=3072),
    'L': Variant(width=1024, depth=24, num_heads=16, mlp_dim=4096),
}


def get_variant(name: str) -> Variant:
  if name not in VARIANTS:
    raise ValueError(f'encoder variant={name!r} is unknown: expected one of {tuple(VARIANTS)}')
  return VARIANTS[name]


def token_grid(video_shape: tuple[int, ...], patch_size: tuple[int, int, int]) -> tuple[int, int, int]:
  """Token grid `(t, h, w)` of a video of shape `[B, T, H, W, C]` (or `[T, H, W, C]`).

  Raises:
    ValueError: if `T, H, W` are not multiples of the tubelet size.
  """
  tt, hh, ww = video_shape[-4:-1]
  pt, ph, pw = patch_size
  if tt % pt or hh % ph or ww % pw:
    raise ValueError(f'video frames x height x width = {tt}x{hh}x{ww} must be multiples of the tubelet '
                     f'patch_size={tuple(patch_size)}')
  return tt // pt, hh // ph, ww // pw


def block_flops(tokens: int, width: int, mlp_dim: int) -> float:
  """Forward FLOPs of one transformer block over `tokens` tokens, matmuls only (a multiply-add = 2): qkv, attention
  scores, their weighted sum, the output projection and the MLP. Norms, softmax and GELU are left out."""
  projections = 2 * tokens * width * (4 * width + 2 * mlp_dim)
  attention = 2 * 2 * tokens * tokens * width
  return float(projections + attention)


def encoder_flops(variant: str, tokens: int, patch_dim: int) -> float:
  """Forward FLOPs of `VideoViT` on `tokens` tokens of `patch_dim` values each: patch embedding and every block."""
  v = get_variant(variant)
  return 2.0 * tokens * patch_dim * v.width + v.depth * block_flops(tokens, v.width, v.mlp_dim)


def patchify(video: jax.Array, patch_size: tuple[int, int, int]) -> jax.Array:
  """`[B, T, H, W, C] -> [B, N, pt * ph * pw * C]`, each tubelet flattened in `(dt, dy, dx, c)` order."""
  b, tt, hh, ww, c = video.shape
  pt, ph, pw = patch_size
  t, h, w = token_grid(video.shape, patch_size)
  x = video.reshape(b, t, pt, h, ph, w, pw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, t * h * w, pt * ph * pw * c)


class PatchEmbed(nn.Module):
  """Tubelet embedding on flattened tubelets: `[B, N, pt*ph*pw*C] -> [B, N, D]`.

  The kernel is stored in Conv3D layout `[pt, ph, pw, C, D]` (flax `nn.Conv` layout) so the export is a transpose.
  Init: PyTorch's Conv3d default (the reference never re-initialises it).
  """
  patch_size: tuple[int, int, int]
  width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, patches: jax.Array) -> jax.Array:
    pt, ph, pw = self.patch_size
    c = patches.shape[-1] // (pt * ph * pw)
    fan_in = pt * ph * pw * c
    kernel = self.param('kernel', layers.torch_default_kernel_init, (pt, ph, pw, c, self.width), jnp.float32)
    bound = 1.0 / math.sqrt(fan_in)
    bias = self.param('bias', lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound),
                      (self.width,))
    x = jnp.dot(patches.astype(self.dtype), kernel.reshape(fan_in, self.width).astype(self.dtype))
    return x + bias.astype(self.dtype)


class VideoViT(nn.Module):
  """Video ViT encoder.

  Attributes:
    variant: 'mu', 'S', 'B' or 'L' (see `VARIANTS`).
    patch_size: tubelet `(pt, ph, pw)`.
    drop_path_rate: stochastic depth, linearly increasing from 0 (first block) to this rate (last block).
    dtype: compute dtype (e.g. `jnp.bfloat16`); parameters are float32.
    final_norm: apply the final LayerNorm `norm`; False leaves it out (the reference's mean-pooling classifier, whose
      `norm` is Identity and which has no `norm` parameters).
    attention: attention implementation, `config.model.attention` (`layers.resolve_attention`; default 'auto').
    remat: recompute each block's activations in the backward pass (`config.model.remat`); same parameters.
  """
  variant: str
  patch_size: tuple[int, int, int] = (2, 16, 16)
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  final_norm: bool = True
  attention: str = 'auto'
  remat: bool = False

  @nn.compact
  def __call__(self, video: jax.Array, *, visible_idx: jax.Array | None = None, train: bool = False) -> jax.Array:
    """Encodes a clip.

    Args:
      video: float `[B, T, H, W, 3]`.
      visible_idx: int32 `[B, Nv]` token indices to encode (ascending), or None for all `N` tokens.
      train: enables drop path (needs the `'dropout'` rng when `drop_path_rate > 0`).

    Returns:
      `[B, Nv or N, D]` tokens after the final LayerNorm (before it if `final_norm=False`), in the compute dtype.
    """
    v = get_variant(self.variant)
    t, h, w = token_grid(video.shape, self.patch_size)
    patches = patchify(video, self.patch_size)
    pos = jnp.asarray(layers.sincos_table(t * h * w, v.width))[None]  # [1, N, D]
    if visible_idx is not None:
      # Positions are attached per token before dropping the hidden ones, as in the reference; gathering the raw
      # tubelets first is the same thing and skips embedding the hidden tokens.
      patches = masking.gather_tokens(patches, visible_idx)
      pos = jnp.take(pos[0], visible_idx, axis=0)  # [B, Nv, D]
    x = PatchEmbed(self.patch_size, v.width, dtype=self.dtype, name='patch_embed')(patches)
    x = x + pos.astype(self.dtype)
    rates = np.linspace(0.0, self.drop_path_rate, v.depth)  # As the reference (a single block gets rate 0).
    block = layers.encoder_block(self.remat)
    for i in range(v.depth):
      x = block(v.num_heads, v.mlp_dim, drop_path_rate=float(rates[i]), dtype=self.dtype, attention=self.attention,
                name=f'block_{i:02d}')(x, train)
    return layers.layer_norm('norm', self.dtype)(x) if self.final_norm else x
