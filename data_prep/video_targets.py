"""The whole per-video path: frames -> JPEG frames, warped flow, trajectories, HOG cell maps -> one record.

Pure functions (no Beam): `extract_from_frames` works on any iterable of RGB frames (tests, tools), `extract_video` on
a video path, `to_record` serialises the result with `m3video_jax.data.schema.encode`. Work is streamed frame by frame,
so memory grows only with the stored output, not with decoded frames or flow fields.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Iterable, Iterator

import cv2
import numpy as np

from data_prep import hog as hog_lib
from data_prep import optical_flow
from data_prep import tfds_io
from data_prep import tracking
from data_prep import video_io
from data_prep.options import PrepConfig
from m3video_jax.data import schema


class StageTimer:
  """Accumulates wall time per named stage: `with timer.stage('flow'): ...`; `timer.seconds` maps stage -> s."""

  def __init__(self):
    self.seconds: dict[str, float] = collections.defaultdict(float)

  @contextlib.contextmanager
  def stage(self, name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[name] += time.perf_counter() - t0


class _NoTimer:

  @contextlib.contextmanager
  def stage(self, name: str) -> Iterator[None]:
    del name
    yield


@dataclasses.dataclass
class VideoTargets:
  """Everything stored for one video, before serialisation.

  Attributes:
    jpeg_frames: N JPEG-encoded RGB frames `H x W`.
    height, width: prep resolution.
    fps: frames per second (0 if unknown).
    traj_disp: float32 `[S, L, Gh, Gw, 2]` displacements (Δx, Δy) in prep px, starts `0, s, 2s, ...`.
    traj_valid: bool `[S, Gh, Gw]`.
    traj_inside_steps: uint8 `[S, Gh, Gw]`: leading positions p_1..p_k inside the frame (valid for L' iff >= L').
    hog_map: float32 `[N, Gh, Gw, 9]`.
    camera_fallbacks: number of frame pairs whose camera homography fell back to identity.
    motion_maps: `{name: float32 [N - 1, Gh, Gw, C]}` of the flow-derived maps the config asks for, entry n of the
      frame pair (n, n + 1) (`data_prep/hog.py`).
  """
  jpeg_frames: list[bytes]
  height: int
  width: int
  fps: float
  traj_disp: np.ndarray
  traj_valid: np.ndarray
  traj_inside_steps: np.ndarray
  hog_map: np.ndarray
  camera_fallbacks: int = 0
  motion_maps: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def num_frames(self) -> int:
    return len(self.jpeg_frames)


def video_id(path: str) -> str:
  """Stable id of a source path: `<file stem>-<first 12 hex digits of sha1(path)>`."""
  stem = os.path.splitext(os.path.basename(path.rstrip('/')))[0]
  return f'{stem}-{hashlib.sha1(path.encode()).hexdigest()[:12]}'


def extract_from_frames(frames: Iterable[np.ndarray], config: PrepConfig, *, fps: float = 0.0,
                        timer: StageTimer | None = None) -> VideoTargets:
  """Runs the per-video path on RGB frames that are already at prep resolution.

  Args:
    frames: uint8 RGB `[H, W, 3]` frames, all the same size (an iterator is consumed once, frame by frame).
    config: prep settings (trajectory length and start stride, flow method, camera motion, JPEG quality).
    fps: stored as is.
    timer: optional per-stage timing.

  Returns:
    The `VideoTargets`.

  Raises:
    video_io.BadVideoError: TOO_SHORT if there are fewer than `L + 1` frames, TOO_SMALL if a frame is smaller than
      one grid cell.
  """
  timer = timer or _NoTimer()
  estimator = optical_flow.FlowEstimator(config.flow)
  jpeg_params = [cv2.IMWRITE_JPEG_QUALITY, int(config.jpeg_quality)]
  jpegs: list[bytes] = []
  hogs: list[np.ndarray] = []
  disps: list[np.ndarray] = []
  valids: list[np.ndarray] = []
  steps: list[np.ndarray] = []
  maps: dict[str, list[np.ndarray]] = {name: [] for name in config.motion_maps}
  tracker = None
  prev_gray = None
  fallbacks = 0
  height = width = 0
  for n, rgb in enumerate(frames):
    if n == 0:
      height, width = rgb.shape[:2]
      if height < schema.GRID_STEP or width < schema.GRID_STEP:
        raise video_io.BadVideoError(video_io.TOO_SMALL,
                                     f'prep size {width}x{height} is smaller than one {schema.GRID_STEP}px cell')
      tracker = tracking.StreamingTracker(height, width, config.traj_len, config.traj_start_stride)
    elif rgb.shape[:2] != (height, width):
      raise ValueError(f'frame {n} is {rgb.shape[:2]}, frame 0 is {(height, width)}; frames must share one size')
    with timer.stage('jpeg'):
      ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), jpeg_params)
      if not ok:
        raise video_io.BadVideoError(video_io.ERROR, f'JPEG encoding of frame {n} failed')
      jpegs.append(buf.tobytes())
    with timer.stage('hog'):
      gray = hog_lib.to_gray(rgb)
      hogs.append(hog_lib.hog_cell_map(gray))
    if prev_gray is not None:
      flow, camera = optical_flow.warped_flow(prev_gray, gray, estimator, config, timer=timer)
      fallbacks += int(camera is not None and camera.is_identity)
      if maps:
        with timer.stage('motion_maps'):
          for name, value in hog_lib.motion_cell_maps(flow, config.motion_maps).items():
            maps[name].append(value)
      with timer.stage('tracking'):
        for _, disp, valid, inside_steps in tracker.add_flow(n - 1, flow):
          disps.append(disp)
          valids.append(valid)
          steps.append(inside_steps)
    prev_gray = gray
  n_frames = len(jpegs)
  if n_frames < config.min_frames:
    raise video_io.BadVideoError(video_io.TOO_SHORT,
                                 f'{n_frames} frames; one trajectory of L={config.traj_len} needs {config.min_frames}')
  expected = schema.num_starts(n_frames, config.traj_len, config.traj_start_stride)
  assert len(disps) == expected, (len(disps), expected)  # StreamingTracker invariant.
  return VideoTargets(jpeg_frames=jpegs, height=height, width=width, fps=fps, traj_disp=np.stack(disps),
                      traj_valid=np.stack(valids), traj_inside_steps=np.stack(steps), hog_map=np.stack(hogs),
                      camera_fallbacks=fallbacks, motion_maps={k: np.stack(v) for k, v in maps.items()})


def _timed(frames: Iterable[np.ndarray], timer: StageTimer | _NoTimer) -> Iterator[np.ndarray]:
  it = iter(frames)
  while True:
    with timer.stage('decode'):
      frame = next(it, None)
    if frame is None:
      return
    yield frame


def extract_video(path: str, config: PrepConfig, *, timer: StageTimer | None = None) -> VideoTargets:
  """Decodes a video (local path or `tf.io.gfile` URL) and runs the per-video path on it.

  Raises:
    video_io.BadVideoError: with the reason the video is unusable.
  """
  timer = timer or _NoTimer()
  if tfds_io.is_tfds_path(path):
    return _extract_tfds(path, config, timer)
  with video_io.local_path(path) as local:
    with timer.stage('decode'):
      reader = video_io.VideoReader(local, config.short_side, max_frames=config.max_frames,
                                    min_native_side=config.min_native_side)
    with reader:
      targets = extract_from_frames(_timed(reader, timer), config, fps=reader.info.fps, timer=timer)
      reader.check_complete()
  return targets


def _extract_tfds(path: str, config: PrepConfig, timer) -> VideoTargets:
  """`extract_video` for an example of a TFDS video dataset (`data_prep.tfds_io`): frames resized to prep size."""
  with timer.stage('decode'):
    frames = tfds_io.read_frames(path)
  if len(frames) == 0:
    raise video_io.BadVideoError(video_io.NOT_A_VIDEO, f'{path} has no frames')
  nh, nw = frames.shape[1:3]
  if min(nh, nw) < config.min_native_side:
    raise video_io.BadVideoError(video_io.TOO_SMALL, f'{path} is {nw}x{nh}; both sides must be >= '
                                 f'{config.min_native_side} px')
  h, w = video_io.prep_size(nh, nw, config.short_side)
  if config.max_frames:
    frames = frames[:config.max_frames]
  resized = (video_io.resize(f, h, w) for f in frames)  # RGB already.
  return extract_from_frames(_timed(resized, timer), config, timer=timer)


def to_record(targets: VideoTargets, meta: schema.VideoMeta, config: PrepConfig, frames: tuple[int, int] | None = None
              ) -> bytes:
  """Serialises the whole video, or its frames `[a, b)` as a segment record, with `schema.encode`.

  A segment starts at a multiple `a` of the start stride: its trajectory starts are the video's starts `a / s, ...`
  whose `L` steps end inside it, and its motion maps are those of the pairs inside it, `[a, b - 1)`.
  """
  a, b = frames or (0, targets.num_frames)
  s = config.traj_start_stride
  starts = slice(a // s, a // s + schema.num_starts(b - a, config.traj_len, s))
  return schema.encode(meta, targets.jpeg_frames[a:b], targets.height, targets.width, targets.traj_disp[starts],
                       targets.traj_valid[starts], targets.hog_map[a:b], traj_start_stride=s,
                       traj_inside_steps=targets.traj_inside_steps[starts], segment_start=a,
                       video_frames=targets.num_frames,
                       motion_maps={k: v[a:b - 1] for k, v in targets.motion_maps.items()})


def segment_bounds(num_frames: int, segment_frames: int, overlap: int, start_stride: int) -> list[tuple[int, int]]:
  """Frame ranges `[a, b)` of the segments of a video (one range, the whole video, when `segment_frames` is 0 or the
  video is not longer).

  Segments start every `segment_frames - overlap` frames while a whole segment fits; the frames after the last one go
  into a final segment that ends with the video and starts at `num_frames - segment_frames` rounded down to a multiple
  of `start_stride` (so it overlaps its predecessor more, and may be up to `start_stride - 1` frames longer). Every
  segment start is a multiple of `start_stride`, so its trajectory starts are the video's.
  """
  if not segment_frames or num_frames <= segment_frames:
    return [(0, num_frames)]
  hop = segment_frames - overlap
  bounds = [(a, a + segment_frames) for a in range(0, num_frames - segment_frames + 1, hop)]
  if bounds[-1][1] < num_frames:
    tail = num_frames - segment_frames
    tail -= tail % start_stride
    if tail == bounds[-1][0]:  # The last full segment just grows by the < start_stride frames left over.
      bounds.pop()
    bounds.append((tail, num_frames))
  return bounds


def to_records(targets: VideoTargets, meta: schema.VideoMeta, config: PrepConfig) -> list[bytes]:
  """Serialises a video as one record, or as its segments (`config.segment_frames`, `segment_bounds`)."""
  bounds = segment_bounds(targets.num_frames, config.segment_frames, config.segment_overlap, config.traj_start_stride)
  return [to_record(targets, meta, config, bound) for bound in bounds]


def extract_video_timed(path: str, config: PrepConfig) -> tuple[VideoTargets, dict[str, float]]:
  """`extract_video` plus the seconds spent per stage (decode, jpeg, hog, flow, camera, tracking, motion_maps)."""
  timer = StageTimer()
  targets = extract_video(path, config, timer=timer)
  return targets, dict(timer.seconds)
