"""Settings of the per-video motion-target extraction (one frozen dataclass, validated once)."""
from __future__ import annotations

import dataclasses
from typing import Any

from m3video_jax.data import schema

FLOW_METHODS = ('dis_fine', 'dis_fast', 'dis_medium', 'dis_ultrafast', 'farneback')
# compose: one flow per frame pair; the homography is fitted on it and removed analytically (w' = H^-1(p + w) - p).
# rewarp: the paper's recipe: warp frame t+1 by H^-1 and compute the flow a second time (about 2x the flow cost).
# none: plain flow (no camera-motion removal).
CAMERA_MOTION_MODES = ('compose', 'rewarp', 'none')


@dataclasses.dataclass(frozen=True)
class PrepConfig:
  """What `data_prep` computes for every video. Stored in the manifest; part of the resume fingerprint.

  Attributes:
    short_side: prep resolution: the short side is resized to this many pixels (a multiple of the grid step) and the
      long side to the nearest multiple of the grid step keeping the aspect ratio; 0 keeps the native size.
    traj_len: trajectory length `L` (flow steps per trajectory).
    traj_start_stride: trajectories start at frames 0, s, 2s, ... (2 keeps every tubelet start of even clips;
      docs/design.md §2).
    flow: optical-flow method, one of `FLOW_METHODS`.
    camera_motion: camera-motion removal, one of `CAMERA_MOTION_MODES`.
    flow_bound: flow is clipped to ±flow_bound px (paper: 20).
    ransac_threshold: RANSAC reprojection threshold in px for the camera homography.
    min_inliers: fewer RANSAC inliers than this -> the homography falls back to identity.
    jpeg_quality: JPEG quality of the stored frames (0-100).
    max_frames: keep at most this many frames per video (0 = all).
    min_native_side: videos whose native width or height is below this are rejected as too small.
    segment_frames: 0 writes one record per video; K > 0 writes a video longer than K frames as records of K
      consecutive frames (segments, each with its trajectories and HOG maps), so that pretraining reads about K
      frames per clip instead of the whole video (docs/data_prep.md, "Segment records").
    segment_overlap: frames shared by consecutive segments (the hop is `segment_frames - segment_overlap`, a multiple
      of `traj_start_stride`). A clip spanning F frames can start anywhere only if the overlap is >= F - 1.
    motion_maps: the flow-derived maps to store per frame pair, a subset of `schema.MOTION_MAPS` ('hof', 'mbh',
      'flow'; the targets of paper Table 1's short-term motion baselines); () stores none (the default: the records
      and their size are those of a run without the option).
  """
  short_side: int = 256
  traj_len: int = 6
  traj_start_stride: int = 2
  flow: str = 'dis_fine'
  camera_motion: str = 'compose'
  flow_bound: float = 20.0
  ransac_threshold: float = 1.0
  min_inliers: int = 20
  jpeg_quality: int = 90
  max_frames: int = 0
  min_native_side: int = 16
  segment_frames: int = 0
  segment_overlap: int = 0
  motion_maps: tuple[str, ...] = ()

  def __post_init__(self):
    try:
      names = schema.motion_map_names(self.motion_maps)
    except ValueError as e:
      raise ValueError(f'motion_maps={self.motion_maps!r}: {e}') from None
    object.__setattr__(self, 'motion_maps', names)
    g = schema.GRID_STEP
    if self.short_side < 0 or self.short_side % g:
      raise ValueError(f'short_side={self.short_side} must be 0 (native size) or a positive multiple of the grid step {g}')
    if not 1 <= self.traj_len <= 16:
      raise ValueError(f'traj_len={self.traj_len} must be in [1, 16]')
    if self.traj_start_stride < 1:
      raise ValueError(f'traj_start_stride={self.traj_start_stride} must be >= 1')
    if self.flow not in FLOW_METHODS:
      raise ValueError(f'flow={self.flow!r} is not one of {FLOW_METHODS}')
    if self.camera_motion not in CAMERA_MOTION_MODES:
      raise ValueError(f'camera_motion={self.camera_motion!r} is not one of {CAMERA_MOTION_MODES}')
    if not 0 < self.flow_bound <= schema.DISP_MAX_Q / schema.DISP_UNITS_PER_PX:
      raise ValueError(f'flow_bound={self.flow_bound} must be in (0, {schema.DISP_MAX_Q / schema.DISP_UNITS_PER_PX}] '
                       'px (the int8 quarter-pixel storage range)')
    if self.ransac_threshold <= 0:
      raise ValueError(f'ransac_threshold={self.ransac_threshold} must be > 0 px')
    if self.min_inliers < 4:
      raise ValueError(f'min_inliers={self.min_inliers} must be >= 4 (a homography needs 4 points)')
    if not 0 <= self.jpeg_quality <= 100:
      raise ValueError(f'jpeg_quality={self.jpeg_quality} must be in [0, 100]')
    if self.max_frames < 0 or 0 < self.max_frames < self.traj_len + 1:
      raise ValueError(f'max_frames={self.max_frames} must be 0 (all) or >= traj_len + 1 = {self.traj_len + 1}')
    if self.min_native_side < 1:
      raise ValueError(f'min_native_side={self.min_native_side} must be >= 1')
    if self.segment_frames < 0 or 0 < self.segment_frames < self.traj_len + 1:
      raise ValueError(f'segment_frames={self.segment_frames} must be 0 (whole videos) or >= traj_len + 1 = '
                       f'{self.traj_len + 1}')
    if self.segment_frames:
      hop = self.segment_frames - self.segment_overlap
      if self.segment_overlap < 0 or hop <= 0 or hop % self.traj_start_stride:
        raise ValueError(f'segment_overlap={self.segment_overlap} must be >= 0 and leave a hop segment_frames - '
                         f'segment_overlap = {hop} that is positive and a multiple of traj_start_stride='
                         f'{self.traj_start_stride}')
    elif self.segment_overlap:
      raise ValueError(f'segment_overlap={self.segment_overlap} needs segment_frames > 0')

  @property
  def min_frames(self) -> int:
    """Frames needed for one trajectory: `L + 1`."""
    return self.traj_len + 1

  def to_json(self) -> dict[str, Any]:
    """The settings as JSON values; `motion_maps` as 'hof,mbh', and left out when empty (so the manifest and resume
    fingerprint of a run without maps are those of earlier versions)."""
    out = dataclasses.asdict(self)
    out['motion_maps'] = ','.join(self.motion_maps)
    if not out['motion_maps']:
      del out['motion_maps']
    return out
