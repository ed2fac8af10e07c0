"""Token masks for masked video modeling, and gather/scatter helpers for visible and hidden tokens.

Mask convention (used everywhere in this project): a bool mask `[B, N]` is **True where the token is masked (hidden)**
from the encoder and has to be predicted, False where it is visible.

Tokens are indexed `t * h * w + y * w + x` over the token grid `(t, h, w)` (tubelet `2 x 16 x 16`: `t = T // 2`,
`h = H // 16`, `w = W // 16`). Every function samples the same number of hidden tokens in every row, so the visible and
hidden index arrays have static shapes `[B, Nv]` and `[B, Nm]` under `jax.jit`; `num_hidden(grid, ratio, kind)` gives
`Nm` for the kind of mask.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ('tube', 'cube')

# Cube masking (BEiT/MaskFeat-style blocks, paper Table 7): spatial block area in tokens and aspect-ratio range.
CUBE_MIN_AREA = 16
CUBE_ASPECT = (0.3, 1.0 / 0.3)


def _check_grid_ratio(grid: tuple[int, int, int], ratio: float) -> None:
  if len(grid) != 3 or any(int(g) < 1 for g in grid):
    raise ValueError(f'grid={grid!r} must be a (t, h, w) tuple of positive token counts')
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f'mask ratio={ratio!r} must be in [0, 1)')


def num_hidden(grid: tuple[int, int, int], ratio: float, kind: str = 'tube') -> int:
  """Number of hidden tokens per row, `Nm`.

  Args:
    grid: token grid `(t, h, w)`.
    ratio: fraction to hide.
    kind: 'tube' hides `int(ratio * h * w)` positions in every time slot (as the reference); 'cube' hides
      `int(ratio * t * h * w)` tokens.

  Returns:
    `Nm` as a Python int.

  Raises:
    ValueError: on an unknown kind or an invalid ratio/grid.
  """
  _check_grid_ratio(grid, ratio)
  t, h, w = (int(g) for g in grid)
  if kind == 'tube':
    return t * int(ratio * h * w)
  if kind == 'cube':
    return int(ratio * t * h * w)
  raise ValueError(f'mask kind={kind!r} is invalid: expected one of {KINDS}')


def tube_mask(rng: jax.Array, batch_size: int, grid: tuple[int, int, int], ratio: float) -> jax.Array:
  """Tube mask (VideoMAE): one random spatial mask per row, identical in every time slot.

  Args:
    rng: PRNG key.
    batch_size: `B`.
    grid: token grid `(t, h, w)`.
    ratio: fraction of spatial positions to hide; exactly `int(ratio * h * w)` are hidden per time slot.

  Returns:
    bool `[B, t * h * w]`, True = hidden.
  """
  _check_grid_ratio(grid, ratio)
  t, h, w = (int(g) for g in grid)
  k = int(ratio * h * w)
  noise = jax.random.uniform(rng, (batch_size, h * w))
  rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)  # A uniformly random permutation per row.
  hidden = rank < k
  return jnp.broadcast_to(hidden[:, None, :], (batch_size, t, h * w)).reshape(batch_size, t * h * w)


def cube_mask(rng: jax.Array, batch_size: int, grid: tuple[int, int, int], ratio: float, *,
              min_area: int = CUBE_MIN_AREA, num_cubes: int | None = None) -> jax.Array:
  """Cube mask (paper Table 7, MaskFeat-style): a union of random space-time blocks, exactly `int(ratio * N)` hidden.

  Each block has a spatial area uniform in `[min(min_area, h*w), max(that, ratio*h*w)]` tokens, a log-uniform aspect
  ratio in `[0.3, 1/0.3]`, a duration uniform in `1..t` and a uniform position. Blocks are added in order; to make the
  count exact (static shapes), the block that crosses the target is trimmed (a random subset of its new tokens is
  kept) and, if all `num_cubes` blocks together cover too few tokens, random uncovered tokens fill the rest.

  Args:
    rng: PRNG key.
    batch_size: `B`.
    grid: token grid `(t, h, w)`.
    ratio: fraction of all tokens to hide.
    min_area: smallest block area in tokens (BEiT's `min_num_patches`, 16).
    num_cubes: blocks drawn per row (default: about twice the expected number needed, plus 8).

  Returns:
    bool `[B, t * h * w]`, True = hidden.
  """
  _check_grid_ratio(grid, ratio)
  t, h, w = (int(g) for g in grid)
  n = t * h * w
  target = int(ratio * n)
  lo_area = float(min(min_area, h * w))
  hi_area = float(max(lo_area, ratio * h * w))
  if num_cubes is None:
    mean_volume = 0.5 * (lo_area + hi_area) * 0.5 * (t + 1)
    num_cubes = 2 * math.ceil(target / mean_volume) + 8
  rng_area, rng_aspect, rng_dur, rng_t, rng_y, rng_x, rng_tie = jax.random.split(rng, 7)
  shape = (batch_size, num_cubes)
  area = jax.random.uniform(rng_area, shape, minval=lo_area, maxval=hi_area)
  log_aspect = jax.random.uniform(rng_aspect, shape, minval=math.log(CUBE_ASPECT[0]), maxval=math.log(CUBE_ASPECT[1]))
  aspect = jnp.exp(log_aspect)
  ch = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, h).astype(jnp.int32)
  cw = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, w).astype(jnp.int32)
  dur = jax.random.randint(rng_dur, shape, 1, t + 1)

  def offset(key, extent, size):  # Uniform in 0 .. extent - size.
    return jnp.floor(jax.random.uniform(key, shape) * (extent - size + 1)).astype(jnp.int32)

  t0, y0, x0 = offset(rng_t, t, dur), offset(rng_y, h, ch), offset(rng_x, w, cw)
  tt, yy, xx = (a.reshape(-1) for a in np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing='ij'))

  def inside(start, size, coord):  # [B, C, 1] vs [N] -> [B, C, N]
    return (coord >= start[..., None]) & (coord < (start + size)[..., None])

  covered = inside(t0, dur, tt) & inside(y0, ch, yy) & inside(x0, cw, xx)  # [B, C, N]
  first = jnp.where(covered.any(axis=1), jnp.argmax(covered, axis=1), num_cubes)  # [B, N]: first block covering it.
  priority = first.astype(jnp.float32) + jax.random.uniform(rng_tie, (batch_size, n))
  rank = jnp.argsort(jnp.argsort(priority, axis=1), axis=1)
  return rank < target


def sample(rng: jax.Array, batch_size: int, grid: tuple[int, int, int], cfg: Any) -> jax.Array:
  """Samples a mask of kind `cfg.kind` ('tube' or 'cube') and ratio `cfg.ratio`: bool `[B, N]`, True = hidden."""
  if cfg.kind == 'tube':
    return tube_mask(rng, batch_size, grid, cfg.ratio)
  if cfg.kind == 'cube':
    return cube_mask(rng, batch_size, grid, cfg.ratio)
  raise ValueError(f'mask.kind={cfg.kind!r} is invalid: expected one of {KINDS}')


def _static_count(hidden: jax.Array, count: int | None) -> int:
  """`Nm`, given or read from a concrete mask (all rows must agree)."""
  if count is not None:
    return int(count)
  try:
    counts = np.asarray(hidden).sum(axis=1)
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError) as e:
    raise ValueError('the number of hidden tokens must be static under jit: pass num_hidden='
                     'masking.num_hidden(grid, ratio, kind)') from e
  if counts.size and not (counts == counts[0]).all():
    raise ValueError(f'every row of the mask must hide the same number of tokens, got counts {sorted(set(counts))}')
  return int(counts[0]) if counts.size else 0


def split_indices(hidden: jax.Array, num_hidden: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Visible and hidden token indices, each in ascending token order.

  Args:
    hidden: bool `[B, N]`, True = hidden, the same count `Nm` in every row (rows with another count give wrong
      indices: that is not checked under jit).
    num_hidden: `Nm`; required under `jax.jit` (read from the mask when it is a concrete array).

  Returns:
    `(visible_idx int32 [B, N - Nm], hidden_idx int32 [B, Nm])`.
  """
  nm = _static_count(hidden, num_hidden)
  n = hidden.shape[1]
  # A stable sort of the 0/1 flags lists the visible tokens first, then the hidden ones, each in ascending order.
  order = jnp.argsort(hidden.astype(jnp.int32), axis=1, stable=True).astype(jnp.int32)
  return order[:, :n - nm], order[:, n - nm:]


def visible_indices(hidden: jax.Array, num_hidden: int | None = None) -> jax.Array:
  """int32 `[B, Nv]`: indices of the visible tokens in ascending order (see `split_indices`)."""
  return split_indices(hidden, num_hidden)[0]


def hidden_indices(hidden: jax.Array, num_hidden: int | None = None) -> jax.Array:
  """int32 `[B, Nm]`: indices of the hidden tokens in ascending order (see `split_indices`)."""
  return split_indices(hidden, num_hidden)[1]


def gather_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
  """Selects tokens per row: `x [B, N, ...]`, `idx int [B, K]` -> `[B, K, ...]`."""
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def scatter_tokens(values: jax.Array, idx: jax.Array, num_tokens: int, fill: float = 0.0) -> jax.Array:
  """Inverse of `gather_tokens`: puts `values [B, K, ...]` at token positions `idx [B, K]` of a `[B, N, ...]` array.

  Positions not in `idx` hold `fill` (e.g. to place predictions of hidden tokens back on the token grid).
  """
  b = values.shape[0]
  out = jnp.full((b, num_tokens) + values.shape[2:], fill, values.dtype)
  return out.at[jnp.arange(b)[:, None], idx].set(values)
