"""Per-frame HOG cell map (docs/design.md §3.2, paper A.3): 9 unsigned-orientation bins, no block normalisation.

Conventions: gradients are 3x3 Sobel on the grayscale frame in [0, 1] with replicated borders, `gx` along +x (right),
`gy` along +y (down); orientation `φ = atan2(gy, gx) mod 180°`; bin `b` is centred at `b·20°` and every pixel votes its
gradient magnitude linearly into the two nearest bin centres (bin 9 ≡ bin 0). A cell is the 8x8 block of pixels
`[8gy, 8gy+8) x [8gx, 8gx+8)`, i.e. the cell centred at grid point `(8gx+4, 8gy+4)`; its histogram is the *mean* of the
votes over its 64 pixels. Pixels beyond the last full cell are ignored.

A horizontal flip maps orientation φ to 180° − φ, so bin b becomes bin (9 − b) mod 9 (docs/design.md §3.4).
"""
from __future__ import annotations

import cv2
import numpy as np

from m3video_jax.data import schema

NUM_BINS = schema.HOG_BINS
BIN_WIDTH_DEG = 180.0 / NUM_BINS


def to_gray(frame_rgb: np.ndarray) -> np.ndarray:
  """uint8 RGB `[H, W, 3]` -> uint8 gray `[H, W]`."""
  return cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY)


def hog_cell_map(gray: np.ndarray, grid_step: int = schema.GRID_STEP) -> np.ndarray:
  """HOG histogram of every grid cell of one frame.

  Args:
    gray: `[H, W]` grayscale frame, uint8 (0..255 is mapped to [0, 1]) or float in [0, 1].
    grid_step: cell size `g` in px.

  Returns:
    float32 `[H // g, W // g, 9]`, the mean per-pixel magnitude-weighted votes of each cell.
  """
  if gray.ndim != 2:
    raise ValueError(f'gray must be [H, W], got shape {gray.shape}')
  gh, gw = gray.shape[0] // grid_step, gray.shape[1] // grid_step
  if gh == 0 or gw == 0:
    return np.zeros((gh, gw, NUM_BINS), np.float32)
  img = gray.astype(np.float32) * (1.0 / 255.0) if gray.dtype == np.uint8 else gray.astype(np.float32)
  # Gradients over the whole frame (borders replicated), then keep the part covered by full cells.
  hc, wc = gh * grid_step, gw * grid_step
  gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)[:hc, :wc]
  gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)[:hc, :wc]
  mag, ang = cv2.cartToPolar(gx, gy, angleInDegrees=True)
  u = ang * (1.0 / BIN_WIDTH_DEG)  # [0, 18): signed orientation in bin units
  u = np.where(u >= NUM_BINS, u - NUM_BINS, u)  # unsigned: [0, 9)
  # Linear voting = triangle weight max(0, 1 - |u - b|) for bin centres b = 0..9 (centre 9 is bin 0 again); the
  # per-bin vote image is averaged over each cell by an 8x area resize. ~5 OpenCV passes per bin, no scatter.
  out = np.empty((gh, gw, NUM_BINS), np.float32)
  dist = np.empty_like(u)
  vote = np.empty_like(u)
  for b in range(NUM_BINS + 1):
    cv2.absdiff(u, float(b), dist)
    cv2.multiply(dist, mag, dist)
    cv2.subtract(mag, dist, vote)  # mag * (1 - |u - b|)
    cv2.threshold(vote, 0.0, 0.0, cv2.THRESH_TOZERO, vote)
    cell = cv2.resize(vote, (gw, gh), interpolation=cv2.INTER_AREA)
    if b == NUM_BINS:
      out[..., 0] += cell
    else:
      out[..., b] = cell
  return out


def flip_bins(hog: np.ndarray) -> np.ndarray:
  """HOG of the horizontally flipped image from the HOG of the image, for the bin layout on the last axis.

  Bin b -> (9 − b) mod 9 (the grid itself is not mirrored here)."""
  return hog[..., list(schema.HOG_FLIP_PERMUTATION)]
