"""Drawing trajectories on frames (paper Fig. 4/6): NumPy + OpenCV only, shared by every visualisation tool.

Conventions: images are uint8 RGB `[H, W, 3]`; positions are `(x, y)` in the image's own pixels, x right, y down; a
trajectory is its start `p_0` and displacements `dp_j = p_{j+1} - p_j`, `j = 0 .. L-1`, so it passes through
`p_0 ... p_L`. Segment `j` is coloured from dark (early) to light (late) along `TIME_RAMP`; a trajectory that left the
frame (`valid` False) is drawn in `OUT_OF_FRAME` with a cross at its last position. Still trajectories (total path
shorter than `min_path` px) are drawn as a dot, so a static background does not hide the moving ones.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Dark blue -> magenta -> orange -> light yellow (a perceptually ordered ramp: dark = early, light = late).
TIME_RAMP = ((40, 20, 110), (160, 40, 150), (240, 120, 50), (255, 245, 150))
OUT_OF_FRAME = (255, 40, 40)
STILL_DOT = (110, 220, 255)
HIDDEN_SHADE = 0.3  # Hidden patches of a masked frame keep this much of their brightness.


def ramp_colour(u: float) -> tuple[int, int, int]:
  """The colour at `u` in [0, 1] along `TIME_RAMP` (0 = dark/early, 1 = light/late)."""
  u = float(np.clip(u, 0.0, 1.0)) * (len(TIME_RAMP) - 1)
  i = min(int(u), len(TIME_RAMP) - 2)
  a, b = np.array(TIME_RAMP[i], float), np.array(TIME_RAMP[i + 1], float)
  return tuple(int(round(v)) for v in a + (b - a) * (u - i))


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour upscale by an integer factor (keeps pixel edges visible for small model inputs)."""
  if scale == 1:
    return np.ascontiguousarray(image)
  return cv2.resize(image, (image.shape[1] * scale, image.shape[0] * scale), interpolation=cv2.INTER_NEAREST)


def _point(x: float, y: float, scale: int) -> tuple[int, int]:
  # Pixel centre (x, y) of the original image -> the centre of its block in the image upscaled `scale` times.
  return int(round((x + 0.5) * scale - 0.5)), int(round((y + 0.5) * scale - 0.5))


def draw_trajectories(image: np.ndarray, x0: np.ndarray, y0: np.ndarray, disp: np.ndarray, valid: np.ndarray, *,
                      scale: int = 1, min_path: float = 0.5, thickness: int = 1) -> np.ndarray:
  """Draws trajectories on a copy of `image` (upscaled `scale` times first).

  Args:
    image: uint8 RGB `[H, W, 3]`.
    x0, y0: float `[P]` start positions in `image` pixels.
    disp: float `[P, L, 2]` displacements `(dx, dy)` in `image` pixels.
    valid: bool `[P]`; False = the trajectory left the frame (drawn in `OUT_OF_FRAME`, cross at its end).
    scale: integer upscale of the output.
    min_path: trajectories whose path is shorter than this (px) are drawn as a dot at their start.
    thickness: line thickness in output pixels.

  Returns:
    uint8 RGB `[H * scale, W * scale, 3]`.
  """
  out = upscale(image, scale).copy()
  x0, y0 = np.asarray(x0, float).reshape(-1), np.asarray(y0, float).reshape(-1)
  disp = np.asarray(disp, float).reshape(len(x0), -1, 2)
  valid = np.asarray(valid, bool).reshape(-1)
  steps = disp.shape[1]
  path_len = np.linalg.norm(disp, axis=-1).sum(-1)
  pos = np.concatenate([np.stack([x0, y0], -1)[:, None], np.stack([x0, y0], -1)[:, None] + np.cumsum(disp, 1)], 1)
  colours = [ramp_colour((j + 0.5) / steps) for j in range(steps)]
  for p in range(len(x0)):
    if path_len[p] < min_path:
      if valid[p]:
        cv2.circle(out, _point(x0[p], y0[p], scale), max(1, thickness // 2), STILL_DOT, -1)
      continue
    for j in range(steps):
      colour = colours[j] if valid[p] else OUT_OF_FRAME
      cv2.line(out, _point(*pos[p, j], scale), _point(*pos[p, j + 1], scale), colour, thickness, cv2.LINE_AA)
    if not valid[p]:
      cx, cy = _point(*pos[p, -1], scale)
      r = max(2, scale)
      cv2.line(out, (cx - r, cy - r), (cx + r, cy + r), OUT_OF_FRAME, thickness)
      cv2.line(out, (cx - r, cy + r), (cx + r, cy - r), OUT_OF_FRAME, thickness)
  return out


def shade_hidden(image: np.ndarray, hidden: np.ndarray, patch: int) -> np.ndarray:
  """Darkens the hidden patches of a frame: `hidden` bool `[h, w]` over `patch x patch`-pixel patches."""
  out = image.astype(np.float32)
  cover = np.kron(np.asarray(hidden, np.float32), np.ones((patch, patch), np.float32))[..., None]
  out = out * (1 - cover * (1 - HIDDEN_SHADE)) + cover * 40.0 * (1 - HIDDEN_SHADE)
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def with_title(image: np.ndarray, title: str, height: int = 18) -> np.ndarray:
  """`image` below a black strip holding `title` in white."""
  strip = np.zeros((height, image.shape[1], 3), np.uint8)
  font_scale = 0.4 if height < 24 else 0.6
  cv2.putText(strip, title, (4, height - 5), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
  return np.concatenate([strip, image], 0)


def grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 4) -> np.ndarray:
  """Tiles equally sized images (rows of columns) with `gap` px of black between them."""
  h, w = rows[0][0].shape[:2]
  ncols = max(len(r) for r in rows)
  out = np.zeros((len(rows) * (h + gap) - gap, ncols * (w + gap) - gap, 3), np.uint8)
  for i, row in enumerate(rows):
    for j, img in enumerate(row):
      if img.shape[:2] != (h, w):
        raise ValueError(f'grid: image ({i}, {j}) is {img.shape[:2]}, expected {(h, w)}')
      out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = img
  return out


def write_image(path: str, image: np.ndarray) -> None:
  """Writes uint8 RGB as PNG (or any format OpenCV knows by the extension)."""
  if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
    raise OSError(f'OpenCV could not write an image to {path!r} (is the extension .png/.jpg and the folder there?)')
