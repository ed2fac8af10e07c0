"""Dense optical flow between consecutive frames, with camera-motion removal ("warped flow", paper App. A.1).

Camera motion is a homography `H` mapping points of frame t to frame t+1, fitted with RANSAC (OpenCV's USAC_FAST,
about 1 px reprojection threshold) to correspondences: the centres of the textured 12x12 blocks of frame t (high
smaller eigenvalue of the structure tensor, i.e. corner-like, where flow is reliable) displaced by a first flow
estimate (SURF is not in pip OpenCV; this costs ~0.2 ms per frame against ~1.5 ms for goodFeaturesToTrack, at the same
accuracy on our tests).
Too few correspondences or inliers, or an implausible fit, fall back to the identity. Then either
  * `compose` (default): the flow relative to the camera is obtained analytically, `w'(p) = H^-1(p + w(p)) - p`, which
    is exactly the flow between frame t and frame t+1 warped by `H^-1`, for one flow computation per frame; or
  * `rewarp` (the paper's recipe): frame t+1 is warped by `H^-1` and the flow is computed again.
Flow is finally clipped to ±`flow_bound` px. Flow arrays are float32 `[H, W, 2]` holding (Δx, Δy) in px.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools

import cv2
import numpy as np

from data_prep.options import PrepConfig

# OpenCV DIS settings by name: (base preset, overrides). `dis_fine` (the default) is DIS at the half-resolution finest
# scale: the `ultrafast` patch search (8-px patches every 5 px, 12 gradient steps) plus 2 variational refinement
# iterations per scale, with the previous frame pair's flow as the initial guess. docs/data_prep.md ("Flow methods")
# has every method's accuracy and cost; the measurements that chose these values are in BENCHMARKS.md.
_DIS = {
    'dis_ultrafast': (cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, {}),
    'dis_fast': (cv2.DISOPTICAL_FLOW_PRESET_FAST, {}),
    'dis_fine': (cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                 {'FinestScale': 1, 'PatchStride': 5, 'VariationalRefinementIterations': 2}),
    'dis_medium': (cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, {}),
}
# Methods that start from the previous pair's flow (DIS refines a flow it is given instead of starting from zero).
_TEMPORAL = frozenset({'dis_fine'})


class FlowEstimator:
  """Callable `(prev_gray, next_gray) -> flow [H, W, 2]` for one method. Holds OpenCV state and, for `dis_fine`, the
  last flow (the initial guess of the next pair when it continues the same frame sequence): create one per video."""

  def __init__(self, method: str):
    self.method = method
    self._last = None  # (next_gray of the last call, its flow), for the temporal initial guess.
    if method in _DIS:
      preset, overrides = _DIS[method]
      self._dis = cv2.DISOpticalFlow_create(preset)
      for name, value in overrides.items():
        getattr(self._dis, f'set{name}')(value)
    elif method == 'farneback':
      self._dis = None
    else:
      raise ValueError(f'flow method {method!r} is not one of {sorted(_DIS) + ["farneback"]}')

  def __call__(self, prev_gray: np.ndarray, next_gray: np.ndarray, *, continues: bool = True) -> np.ndarray:
    """Flow from `prev_gray` to `next_gray`. `continues=False` (a second flow of the same pair, e.g. against a warped
    frame) neither uses nor replaces the temporal initial guess."""
    if self._dis is None:
      return cv2.calcOpticalFlowFarneback(prev_gray, next_gray, None, pyr_scale=0.5, levels=4, winsize=15,
                                          iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
    if self.method not in _TEMPORAL:
      return self._dis.calc(prev_gray, next_gray, None)
    init = None
    if continues and self._last is not None and self._last[0] is prev_gray:
      init = self._last[1].copy()  # DIS writes the result into the array it is given.
    flow = self._dis.calc(prev_gray, next_gray, init)
    if continues:
      self._last = (next_gray, flow)
    return flow


@dataclasses.dataclass
class CameraMotion:
  """Homography `[3, 3]` (frame t -> frame t+1) and how it was obtained."""
  homography: np.ndarray
  num_points: int  # correspondences offered to RANSAC
  num_inliers: int  # 0 when it fell back to identity
  is_identity: bool


IDENTITY = np.eye(3, dtype=np.float64)


def sample_flow(flow: np.ndarray, points: np.ndarray) -> np.ndarray:
  """Bilinear flow at sub-pixel points `[P, 2]` (x, y) -> `[P, 2]` (borders replicated)."""
  pts = points.reshape(-1, 1, 2).astype(np.float32)
  out = cv2.remap(flow, pts[..., 0], pts[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
  return out.reshape(-1, 2)


def estimate_camera_motion(prev_gray: np.ndarray, flow: np.ndarray, *, ransac_threshold: float = 1.0,
                           min_inliers: int = 20) -> CameraMotion:
  """Fits the camera homography to textured grid points of `prev_gray` displaced by `flow` (RANSAC).

  Args:
    prev_gray: uint8 `[H, W]` frame t.
    flow: float32 `[H, W, 2]` flow from frame t to frame t+1 (not clipped).
    ransac_threshold: RANSAC reprojection threshold in px.
    min_inliers: minimum number of inliers to accept the fit.

  Returns:
    The fitted `CameraMotion`, or the identity when the fit is missing or implausible.
  """
  h, w = prev_gray.shape
  src = _textured_grid_points(prev_gray)
  if len(src) < min_inliers:
    return CameraMotion(IDENTITY, len(src), 0, True)
  dst = src + sample_flow(flow, src)
  # USAC_FAST (OpenCV's local-optimisation RANSAC): the same fits as plain RANSAC on the known-motion test videos, at
  # a quarter of its time on real ones (BENCHMARKS.md).
  hom, inlier_mask = cv2.findHomography(src, dst, cv2.USAC_FAST, ransac_threshold, maxIters=500, confidence=0.99)
  n_in = int(inlier_mask.sum()) if inlier_mask is not None else 0
  if hom is None or n_in < min_inliers or not _plausible(hom, h, w):
    return CameraMotion(IDENTITY, len(src), 0, True)
  return CameraMotion(hom, len(src), n_in, False)


def _textured_grid_points(gray: np.ndarray, step: int = 12) -> np.ndarray:
  """Centres `[P, 2]` (x, y) of the `step`-px blocks whose gradient energy is above a quarter of the median: a
  cheap stand-in for corner detection (flow in flat regions is interpolated and unreliable). The structure tensor is
  computed on the frame at half resolution (6x fewer operations than at full size; the blocks are the same)."""
  h, w = gray.shape
  gh, gw = h // step, w // step
  if gh == 0 or gw == 0:
    return np.zeros((0, 2), np.float32)
  half = step // 2
  small = cv2.resize(gray[:gh * step, :gw * step], (gw * half, gh * half), interpolation=cv2.INTER_AREA)
  gx = cv2.Sobel(small, cv2.CV_32F, 1, 0, ksize=3)
  gy = cv2.Sobel(small, cv2.CV_32F, 0, 1, ksize=3)
  # Smaller eigenvalue of the block structure tensor: high only where the texture has two directions (no aperture
  # problem).
  sxx = cv2.resize(gx * gx, (gw, gh), interpolation=cv2.INTER_AREA)
  syy = cv2.resize(gy * gy, (gw, gh), interpolation=cv2.INTER_AREA)
  sxy = cv2.resize(gx * gy, (gw, gh), interpolation=cv2.INTER_AREA)
  min_eig = 0.5 * (sxx + syy - np.sqrt((sxx - syy)**2 + 4 * sxy * sxy))
  keep = min_eig > max(0.25 * float(np.median(min_eig)), 1e-3 * float(min_eig.max()) + 1e-6)
  ys, xs = np.nonzero(keep)
  return np.stack([xs * step + step / 2, ys * step + step / 2], axis=-1).astype(np.float32)


def _plausible(hom: np.ndarray, h: int, w: int) -> bool:
  """Rejects degenerate fits: frame corners must stay in front of the camera and move < 1/4 of the diagonal."""
  if not np.all(np.isfinite(hom)):
    return False
  corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64).T
  mapped = hom @ corners
  if np.any(mapped[2] <= 1e-6):
    return False
  moved = mapped[:2] / mapped[2] - corners[:2]
  return float(np.max(np.hypot(moved[0], moved[1]))) < 0.25 * np.hypot(h, w)


def remove_camera_motion(flow: np.ndarray, homography: np.ndarray) -> np.ndarray:
  """Flow relative to the camera: `w'(p) = H^-1(p + w(p)) - p` for every pixel `p`.

  Args:
    flow: float32 `[H, W, 2]` flow from frame t to frame t+1.
    homography: `[3, 3]` camera motion (frame t -> frame t+1).

  Returns:
    float32 `[H, W, 2]`.
  """
  h, w = flow.shape[:2]
  grid = _pixel_grid(h, w)
  target = flow + grid
  back = cv2.perspectiveTransform(target.reshape(-1, 1, 2), np.linalg.inv(homography)).reshape(h, w, 2)
  back -= grid
  return back


@functools.lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> np.ndarray:
  """float32 `[h, w, 2]` pixel coordinates (x, y), read-only."""
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
  grid = np.stack([xs, ys], axis=-1)
  grid.setflags(write=False)
  return grid


def warp_next_frame(next_gray: np.ndarray, homography: np.ndarray) -> np.ndarray:
  """Frame t+1 warped by `H^-1` (pixel q takes the value of frame t+1 at `H q`), so the static scene aligns with t."""
  h, w = next_gray.shape
  return cv2.warpPerspective(next_gray, homography, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REPLICATE)


def warped_flow(prev_gray: np.ndarray, next_gray: np.ndarray, estimator: FlowEstimator, config: PrepConfig, *,
                timer=None) -> tuple[np.ndarray, CameraMotion | None]:
  """Flow from frame t to t+1 with the camera motion removed as `config.camera_motion` says, clipped.

  Args:
    prev_gray, next_gray: uint8 `[H, W]` frames t and t+1.
    estimator: the flow method.
    config: `camera_motion`, `ransac_threshold`, `min_inliers`, `flow_bound`.
    timer: optional object with a `stage(name)` context manager (stages `flow` and `camera`).

  Returns:
    (float32 `[H, W, 2]` flow, the `CameraMotion` or None when removal is off).
  """
  stage = timer.stage if timer is not None else (lambda name: contextlib.nullcontext())
  with stage('flow'):
    flow = estimator(prev_gray, next_gray)
  camera = None
  if config.camera_motion != 'none':
    with stage('camera'):
      camera = estimate_camera_motion(prev_gray, flow, ransac_threshold=config.ransac_threshold,
                                      min_inliers=config.min_inliers)
      if not camera.is_identity and config.camera_motion == 'compose':
        flow = remove_camera_motion(flow, camera.homography)
      elif not camera.is_identity:
        warped = warp_next_frame(next_gray, camera.homography)
    if not camera.is_identity and config.camera_motion == 'rewarp':
      with stage('flow'):
        flow = estimator(prev_gray, warped, continues=False)
  np.clip(flow, -config.flow_bound, config.flow_bound, out=flow)
  return flow, camera
