"""Histograms of oriented gradients in JAX (Sobel convolution + one-hot binning), usable inside a jitted step on
CPU, GPU and TPU; and a plain NumPy implementation of the same definition, used by the tests.

Definition (the reference's GPU HOG, paper App. A.3, with its two bugs fixed: zero Sobel bias, and a pixel whose
orientation falls exactly on a bin centre votes fully for that bin):
  1. Each channel of each image is processed independently; the image is replicate-padded by 1 px.
  2. Sobel gradients `gx = I * [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]` (right minus left) and `gy` = the transposed
     kernel (bottom minus top); image rows grow downwards.
  3. Magnitude `sqrt(gx^2 + gy^2)`; unsigned orientation `theta = atan2(gy, gx) mod pi` in `[0, pi)`, i.e. measured
     from the +x (rightwards) axis towards +y (downwards).
  4. 9 bins of 20 degrees, bin `k` centred at `k * 20` degrees (bin 9 = bin 0); with `u = theta / 20 deg`, a pixel
     votes `mag * (1 - frac(u))` for bin `floor(u)` and `mag * frac(u)` for bin `floor(u) + 1` (mod 9).
  5. Cell histogram = **mean** of the votes over the `8 x 8` pixels of the cell (the reference's AvgPool).
  6. No block normalisation.
A horizontal flip maps bin `k` to bin `(9 - k) mod 9`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from m3video_jax.data import schema

NUM_BINS = schema.HOG_BINS
CELL_SIZE = schema.GRID_STEP


def _check_cells(h: int, w: int, cell_size: int) -> None:
  if h % cell_size or w % cell_size:
    raise ValueError(f'image height x width = {h}x{w} must be multiples of cell_size={cell_size}')


def sobel_gradients(images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Sobel gradients with replicate padding.

  Written as shifted sums (the separable Sobel: [1, 2, 1] smoothing across, a central difference along), which XLA
  fuses into one elementwise pass; a 3x3 convolution with one input channel is ~4x slower on CPU and, in reduced
  precision, not exact.

  Args:
    images: float `[M, H, W]` single-channel images.

  Returns:
    `(gx, gy)`, each float32 `[M, H, W]`.
  """
  p = jnp.pad(images.astype(jnp.float32), ((0, 0), (1, 1), (1, 1)), mode='edge')
  rows = p[:, :-2] + 2.0 * p[:, 1:-1] + p[:, 2:]  # Smoothed along y: [M, H, W + 2].
  cols = p[:, :, :-2] + 2.0 * p[:, :, 1:-1] + p[:, :, 2:]  # Smoothed along x: [M, H + 2, W].
  return rows[:, :, 2:] - rows[:, :, :-2], cols[:, 2:] - cols[:, :-2]


def cell_histograms(images: jax.Array, *, cell_size: int = CELL_SIZE, num_bins: int = NUM_BINS) -> jax.Array:
  """HOG cell histograms of every channel (definition in the module docstring).

  Args:
    images: float `[..., H, W, C]`; `H` and `W` multiples of `cell_size`.
    cell_size: cell side in pixels.
    num_bins: orientation bins over 180 degrees.

  Returns:
    float32 `[..., H // cell_size, W // cell_size, C, num_bins]`.
  """
  *lead, h, w, c = images.shape
  _check_cells(h, w, cell_size)
  x = jnp.moveaxis(images.reshape((-1, h, w, c)), -1, 1).reshape(-1, h, w)  # [M * C, H, W]
  gx, gy = sobel_gradients(x)
  mag = jnp.sqrt(gx * gx + gy * gy)
  theta = jnp.mod(jnp.arctan2(gy, gx), jnp.pi)
  u = theta * (num_bins / jnp.pi)
  lo = jnp.floor(u)
  frac = u - lo
  lo = lo.astype(jnp.int32) % num_bins  # u can round up to exactly num_bins.
  hi = (lo + 1) % num_bins
  votes = (mag * (1.0 - frac))[..., None] * jax.nn.one_hot(lo, num_bins, dtype=jnp.float32)
  votes += (mag * frac)[..., None] * jax.nn.one_hot(hi, num_bins, dtype=jnp.float32)
  ch, cw = h // cell_size, w // cell_size
  cells = votes.reshape(-1, c, ch, cell_size, cw, cell_size, num_bins).mean(axis=(3, 5))  # [M, C, ch, cw, bins]
  return jnp.moveaxis(cells, 1, 3).reshape(*lead, ch, cw, c, num_bins)


def cell_histograms_numpy(images: np.ndarray, *, cell_size: int = CELL_SIZE, num_bins: int = NUM_BINS) -> np.ndarray:
  """Plain NumPy version of `cell_histograms` (explicit differences and per-pixel accumulation), for tests."""
  images = np.asarray(images, np.float64)
  *lead, h, w, c = images.shape
  _check_cells(h, w, cell_size)
  flat = images.reshape((-1, h, w, c))
  out = np.zeros((flat.shape[0], h // cell_size, w // cell_size, c, num_bins), np.float64)
  for m in range(flat.shape[0]):
    for ch in range(c):
      p = np.pad(flat[m, :, :, ch], 1, mode='edge')
      # Sobel as smoothing across the gradient direction times a central difference along it.
      gx = (p[0:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[0:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
      gy = (p[2:, 0:-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, 0:-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
      mag = np.hypot(gx, gy)
      theta = np.mod(np.arctan2(gy, gx), np.pi)
      u = theta / (np.pi / num_bins)
      for y in range(h):
        for x in range(w):
          lo = int(np.floor(u[y, x]))
          frac = u[y, x] - lo
          cell = out[m, y // cell_size, x // cell_size, ch]
          cell[lo % num_bins] += mag[y, x] * (1 - frac)
          cell[(lo + 1) % num_bins] += mag[y, x] * frac
  out /= cell_size * cell_size
  return out.reshape(*lead, h // cell_size, w // cell_size, c, num_bins).astype(np.float32)
