"""Per-frame HOG cell map (docs/design.md §3.2, paper A.3): 9 unsigned-orientation bins, no block normalisation.

Conventions: gradients are 3x3 Sobel on the grayscale frame in [0, 1] with replicated borders, `gx` along +x (right),
`gy` along +y (down); orientation `φ = atan2(gy, gx) mod 180°`; bin `b` is centred at `b·20°` and every pixel votes its
gradient magnitude linearly into the two nearest bin centres (bin 9 ≡ bin 0). A cell is the 8x8 block of pixels
`[8gy, 8gy+8) x [8gx, 8gx+8)`, i.e. the cell centred at grid point `(8gx+4, 8gy+4)`; its histogram is the *mean* of the
votes over its 64 pixels. Pixels beyond the last full cell are ignored.

A horizontal flip maps orientation φ to 180° − φ, so bin b becomes bin (9 − b) mod 9 (docs/design.md §3.4).

The flow-derived maps (`--motion_maps`, paper Table 1's HOF, MBH and Flow targets; docs/data_prep.md) use the same
cells and the same linear voting on the camera-motion-compensated flow of each frame pair: `hof_cell_map`,
`mbh_cell_map`, `flow_cell_map`. Their flips are in `m3video_jax.data.schema` (`MOTION_MAP_FLIPS`).
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
    gray: `[H, W]` grayscale frame, uint8 (0..255 is mapped to [0, 1]) or float (used as is: in [0, 1] for a
      frame, px for a flow component).
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
  return _cell_votes(mag, u, NUM_BINS, gh, gw)


def _cell_votes(mag: np.ndarray, u: np.ndarray, num_bins: int, gh: int, gw: int) -> np.ndarray:
  """Mean per cell of the linear votes of every pixel: magnitude `mag` split between the two bin centres nearest to
  its orientation `u` (in bin units, `[0, num_bins)`, centre `num_bins` is bin 0 again). float32 `[gh, gw, num_bins]`."""
  # Linear voting = triangle weight max(0, 1 - |u - b|) for bin centres b = 0..num_bins; the per-bin vote image is
  # averaged over each cell by an 8x area resize. ~5 OpenCV passes per bin, no scatter.
  out = np.empty((gh, gw, num_bins), np.float32)
  dist = np.empty_like(u)
  vote = np.empty_like(u)
  for b in range(num_bins + 1):
    cv2.absdiff(u, float(b), dist)
    cv2.multiply(dist, mag, dist)
    cv2.subtract(mag, dist, vote)  # mag * (1 - |u - b|)
    cv2.threshold(vote, 0.0, 0.0, cv2.THRESH_TOZERO, vote)
    cell = cv2.resize(vote, (gw, gh), interpolation=cv2.INTER_AREA)
    if b == num_bins:
      out[..., 0] += cell
    else:
      out[..., b] = cell
  return out


def _full_cells(flow: np.ndarray, grid_step: int) -> tuple[int, int]:
  if flow.ndim != 3 or flow.shape[-1] != 2:
    raise ValueError(f'flow must be [H, W, 2], got shape {flow.shape}')
  return flow.shape[0] // grid_step, flow.shape[1] // grid_step


def hof_cell_map(flow: np.ndarray, grid_step: int = schema.GRID_STEP,
                 min_flow: float = schema.HOF_MIN_FLOW) -> np.ndarray:
  """Histogram of optical flow (HOF) of every grid cell of one frame pair.

  The orientation of the flow vector itself, `θ = atan2(Δy, Δx)` over the full circle (a flow has a direction an image
  gradient's sign does not), votes its magnitude linearly into 8 bins centred at `b·45°` (b = 0 .. 7); a pixel whose
  flow is at most `min_flow` px votes 1 into a 9th, zero-motion bin instead (dense trajectories' HOF, Wang et al.
  2013: 8 orientations + 1, the paper's 9 bins). Same cells and cell mean as `hog_cell_map`.

  Args:
    flow: float32 `[H, W, 2]` (Δx, Δy) in px, the camera-motion-compensated flow the trajectories follow.

  Returns:
    float32 `[H // g, W // g, 9]`.
  """
  gh, gw = _full_cells(flow, grid_step)
  if gh == 0 or gw == 0:
    return np.zeros((gh, gw, schema.HOF_BINS), np.float32)
  f = np.ascontiguousarray(flow[:gh * grid_step, :gw * grid_step], np.float32)
  mag, ang = cv2.cartToPolar(f[..., 0], f[..., 1], angleInDegrees=True)
  moving = mag > min_flow
  orientations = schema.HOF_BINS - 1
  u = ang * (orientations / 360.0)
  u = np.where(u >= orientations, u - orientations, u).astype(np.float32)
  out = np.empty((gh, gw, schema.HOF_BINS), np.float32)
  out[..., :orientations] = _cell_votes(np.where(moving, mag, 0.0).astype(np.float32), u, orientations, gh, gw)
  out[..., orientations] = cv2.resize((~moving).astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA)
  return out


def mbh_cell_map(flow: np.ndarray, grid_step: int = schema.GRID_STEP) -> np.ndarray:
  """Motion boundary histograms (MBHx, MBHy) of every grid cell of one frame pair: `hog_cell_map` of the flow's Δx
  image and of its Δy image (Dalal et al. 2006: the HOG extractor on each flow component; the spatial derivatives of
  the flow, so a uniform translation gives none and a motion boundary gives mass at the boundary).

  Returns:
    float32 `[H // g, W // g, 18]`: MBHx bins 0-8, MBHy bins 9-17 (the gradient units of `hog_cell_map` on an image in
    px of flow).
  """
  _full_cells(flow, grid_step)
  f = np.asarray(flow, np.float32)
  return np.concatenate([hog_cell_map(np.ascontiguousarray(f[..., 0]), grid_step),
                         hog_cell_map(np.ascontiguousarray(f[..., 1]), grid_step)], axis=-1)


def flow_cell_map(flow: np.ndarray, grid_step: int = schema.GRID_STEP) -> np.ndarray:
  """The mean flow (Δx, Δy) of every grid cell of one frame pair, float32 `[H // g, W // g, 2]` px."""
  gh, gw = _full_cells(flow, grid_step)
  if gh == 0 or gw == 0:
    return np.zeros((gh, gw, 2), np.float32)
  f = np.ascontiguousarray(flow[:gh * grid_step, :gw * grid_step], np.float32)
  return cv2.resize(f, (gw, gh), interpolation=cv2.INTER_AREA)


def motion_cell_maps(flow: np.ndarray, names, grid_step: int = schema.GRID_STEP) -> dict[str, np.ndarray]:
  """The flow-derived maps `names` (a subset of `schema.MOTION_MAPS`: 'hof', 'mbh', 'flow') of one frame pair."""
  makers = {'hof': hof_cell_map, 'mbh': mbh_cell_map, 'flow': flow_cell_map}
  return {name: makers[name](flow, grid_step) for name in names}


def flip_bins(hog: np.ndarray) -> np.ndarray:
  """HOG of the horizontally flipped image from the HOG of the image, for the bin layout on the last axis.

  Bin b -> (9 − b) mod 9 (the grid itself is not mirrored here)."""
  return hog[..., list(schema.HOG_FLIP_PERMUTATION)]
