"""Dense grid tracking through the warped flow (paper eq. 6, docs/design.md §3.1).

From a start frame f, the grid point `(gy, gx)` starts at `p_0 = (8gx + 4, 8gy + 4)` and moves
`p_{j+1} = p_j + (M * w_{f+j})(p_j)`, with `M` the 3x3 median filter of the flow and bilinear sampling at the sub-pixel
position (flow beyond the border is the border value, so points that left the frame keep moving). A trajectory is valid
if every position `p_1 ... p_L` lies inside the frame (`0 <= x < W`, `0 <= y < H`). Stored: `Δp_j = p_{j+1} - p_j`.

`track` does one start frame from a stack of flows; `StreamingTracker` does every start frame `0, s, 2s, ...` while the
flows arrive one by one, holding at most `ceil(L / s)` live trajectories (memory independent of the video length).
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from m3video_jax.data import schema


def median_filter_flow(flow: np.ndarray) -> np.ndarray:
  """3x3 median filter of each flow component: `[H, W, 2]` float32 -> same."""
  return cv2.medianBlur(np.ascontiguousarray(flow, np.float32), 3)


def advance(x: np.ndarray, y: np.ndarray, filtered_flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """One tracking step: the (median-filtered) flow sampled bilinearly at float32 positions `x, y` (any shape `P`).

  Returns:
    (Δx, Δy), each float32 of shape `P`.
  """
  d = cv2.remap(filtered_flow, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
  return d[..., 0], d[..., 1]


def inside(x: np.ndarray, y: np.ndarray, height: int, width: int) -> np.ndarray:
  return (x >= 0) & (x < width) & (y >= 0) & (y < height)


def track(flows: np.ndarray, grid_step: int = schema.GRID_STEP,
          median: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Tracks the grid of one start frame through `L` flows.

  Args:
    flows: float32 `[L, H, W, 2]`, flow `j` from frame `f + j` to `f + j + 1`.
    grid_step: grid spacing `g`.
    median: apply the 3x3 median filter (paper); False only for tests/ablations.

  Returns:
    (disp float32 `[L, Gh, Gw, 2]` = `Δp_j` (Δx, Δy) in px, valid bool `[Gh, Gw]` (p_1..p_L inside the frame),
    inside_steps uint8 `[Gh, Gw]`: the number k of leading positions p_1..p_k inside, so that the trajectory cut to
    `L' <= L` steps is valid iff `inside_steps >= L'`).
  """
  traj_len, h, w = flows.shape[:3]
  gh, gw = schema.grid_shape(h, w, grid_step)
  x, y = schema.start_positions(gh, gw, grid_step)
  disp = np.empty((traj_len, gh, gw, 2), np.float32)
  alive = np.ones((gh, gw), bool)
  steps = np.zeros((gh, gw), np.uint8)
  for j in range(traj_len):
    f = median_filter_flow(flows[j]) if median else np.ascontiguousarray(flows[j], np.float32)
    dx, dy = advance(x, y, f)
    disp[j, ..., 0], disp[j, ..., 1] = dx, dy
    x, y = x + dx, y + dy
    alive &= inside(x, y, h, w)
    steps += alive
  return disp, alive, steps


@dataclasses.dataclass
class _Live:
  start: int
  x: np.ndarray
  y: np.ndarray
  disp: list[np.ndarray]
  alive: np.ndarray
  steps: np.ndarray


class StreamingTracker:
  """Tracks from start frames `0, s, 2s, ...` as flows arrive in order.

  Usage: call `add_flow(t, flow_t)` for t = 0, 1, 2, ... (flow from frame t to t+1); it returns the trajectories that
  finished with this flow as a list of `(start_frame, disp [L, Gh, Gw, 2], valid [Gh, Gw], inside_steps [Gh, Gw])`
  (as `track`). Starts whose `L` flows
  never all arrive (the last frames of the video) are dropped, so a video of N frames yields the
  `schema.num_starts(N, L, s)` starts `0, s, ...` with `start + L <= N - 1`.
  """

  def __init__(self, height: int, width: int, traj_len: int, start_stride: int, grid_step: int = schema.GRID_STEP):
    self.height, self.width = height, width
    self.traj_len, self.start_stride = traj_len, start_stride
    self.gh, self.gw = schema.grid_shape(height, width, grid_step)
    self._x0, self._y0 = schema.start_positions(self.gh, self.gw, grid_step)
    self._live: list[_Live] = []
    self._next_t = 0

  def add_flow(self, t: int, flow: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    if t != self._next_t:
      raise ValueError(f'flows must arrive in order: expected flow {self._next_t}, got {t}')
    self._next_t += 1
    if t % self.start_stride == 0:
      self._live.append(_Live(t, self._x0, self._y0, [], np.ones((self.gh, self.gw), bool),
                              np.zeros((self.gh, self.gw), np.uint8)))
    filtered = median_filter_flow(flow)
    done = []
    for tr in self._live:
      dx, dy = advance(tr.x, tr.y, filtered)
      tr.disp.append(np.stack([dx, dy], axis=-1))
      tr.x, tr.y = tr.x + dx, tr.y + dy
      tr.alive &= inside(tr.x, tr.y, self.height, self.width)
      tr.steps += tr.alive
      if len(tr.disp) == self.traj_len:
        done.append((tr.start, np.stack(tr.disp), tr.alive, tr.steps))
    self._live = [tr for tr in self._live if len(tr.disp) < self.traj_len]
    return done
