"""Video decoding with OpenCV: open (local or `tf.io.gfile` URL), check, convert to RGB, resize to the prep size.

Every way a video can be unusable raises `BadVideoError` with a short machine-readable `reason`, which the job counts
and writes into its failure report.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator

import cv2
import numpy as np

from m3video_jax.data import schema

# Reasons a video is rejected (the `reason` field of the failure report).
MISSING = 'missing'  # the listed path does not exist
UNREADABLE = 'unreadable'  # path cannot be read
ZERO_BYTE = 'zero_byte'
NOT_A_VIDEO = 'not_a_video'  # OpenCV cannot open it or decode a single frame
TRUNCATED = 'truncated'  # far fewer frames decode than the container announces
TOO_SHORT = 'too_short'  # fewer than L + 1 frames
TOO_SMALL = 'too_small'  # native width or height below the minimum
UNSUPPORTED_SIZE = 'unsupported_size'  # the prep frame would be larger than MAX_PREP_SIDE (e.g. a 20000x16 video)
DECODER_CRASH = 'decoder_crash'  # the decoding process died (segfault, abort, out of memory)
TIMEOUT = 'timeout'
ERROR = 'error'  # anything else (the message says what)


class BadVideoError(ValueError):
  """A video cannot be turned into a record. `reason` is one of the constants of this module."""

  def __init__(self, reason: str, message: str):
    super().__init__(f'{reason}: {message}')
    self.reason = reason
    self.message = message

  def __reduce__(self):  # Crosses process boundaries (isolated_worker) intact.
    return (BadVideoError, (self.reason, self.message))


def is_remote(path: str) -> bool:
  return '://' in path


@contextlib.contextmanager
def local_path(path: str) -> Iterator[str]:
  """Yields a local file path for `path`: itself if local, else a temporary copy of the `tf.io.gfile` URL."""
  if not is_remote(path):
    yield path
    return
  import tensorflow as tf  # Only for remote URLs (gs://, s3://, hdfs://).

  tmp_dir = tempfile.mkdtemp(prefix='m3v_prep_')
  try:
    local = os.path.join(tmp_dir, 'video' + os.path.splitext(path)[1])
    try:
      tf.io.gfile.copy(path, local, overwrite=True)
    except Exception as e:  # gfile raises NotFoundError, PermissionDeniedError, ...
      raise BadVideoError(UNREADABLE, f'cannot copy {path}: {e}') from e
    yield local
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)


MAX_PREP_SIDE = 8192  # Longest prep side accepted: beyond it a frame's flow and HOG cost and memory are unbounded.


def prep_size(height: int, width: int, short_side: int, grid_step: int = schema.GRID_STEP) -> tuple[int, int]:
  """Prep resolution `(H, W)` for a native `height x width` video.

  The short side becomes `short_side` and the long side the nearest multiple of `grid_step` that keeps the aspect ratio
  (at most `grid_step / 2` px off), so the trajectory grid covers the whole frame. `short_side = 0` keeps the native size.
  """
  if short_side == 0:
    return height, width
  if height <= width:
    long_side = max(grid_step, int(round(width * short_side / height / grid_step)) * grid_step)
    return short_side, long_side
  long_side = max(grid_step, int(round(height * short_side / width / grid_step)) * grid_step)
  return long_side, short_side


def to_rgb(frame: np.ndarray) -> np.ndarray:
  """Converts a decoded OpenCV frame (gray `[H, W]`/`[H, W, 1]`, BGR `[H, W, 3]`, BGRA `[H, W, 4]`; uint8 or uint16)
  to uint8 RGB `[H, W, 3]`."""
  if frame.dtype == np.uint16:
    frame = (frame >> 8).astype(np.uint8)
  elif frame.dtype != np.uint8:
    raise BadVideoError(ERROR, f'unsupported frame dtype {frame.dtype}; expected uint8 or uint16')
  if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
    return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2RGB)
  if frame.ndim == 3 and frame.shape[2] == 3:
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
  if frame.ndim == 3 and frame.shape[2] == 4:
    return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
  raise BadVideoError(ERROR, f'unsupported frame shape {frame.shape}; expected [H, W] or [H, W, 1|3|4]')


def resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes `[h, w, C]` to `[height, width, C]`.

  Shrinking by k >= 2 first box-filters by the integer factor k (OpenCV's fast area path) and then interpolates
  bilinearly: about 10x faster than a fractional-factor area resize, within ~1 gray level of it.
  """
  h, w = frame.shape[:2]
  if (h, w) == (height, width):
    return frame
  k = min(h // height, w // width)
  if k >= 2:
    frame = cv2.resize(frame, (w // k, h // k), interpolation=cv2.INTER_AREA)
  return cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)


@dataclasses.dataclass
class VideoInfo:
  """What the container says about a video, plus the prep size."""
  fps: float
  native_height: int
  native_width: int
  announced_frames: int  # CAP_PROP_FRAME_COUNT, 0 if unknown
  height: int  # prep resolution
  width: int


def check_file(path: str) -> None:
  """Raises `BadVideoError` for a local path that does not exist, cannot be read, or is empty."""
  if not os.path.exists(path):
    raise BadVideoError(MISSING, f'{path} does not exist')
  if not os.path.isfile(path):
    raise BadVideoError(UNREADABLE, f'{path} is not a regular file')
  if not os.access(path, os.R_OK):
    raise BadVideoError(UNREADABLE, f'{path} is not readable (permissions)')
  if os.path.getsize(path) == 0:
    raise BadVideoError(ZERO_BYTE, f'{path} is empty (0 bytes)')


class VideoReader:
  """Streams RGB frames at prep resolution from a local video file.

  Usage: `reader = VideoReader(path, short_side=256)`; `reader.info` has fps and sizes; iterate to get uint8 RGB
  frames `[H, W, 3]`; `reader.frames_decoded` counts them. Call `close()` (or use `with`) to release the decoder.
  """

  def __init__(self, path: str, short_side: int, *, max_frames: int = 0, min_native_side: int = 16):
    check_file(path)
    self._path = path
    self._max_frames = max_frames
    self._cap = cv2.VideoCapture(path)
    if not self._cap.isOpened():
      self._cap.release()
      raise BadVideoError(NOT_A_VIDEO, f'OpenCV cannot open {path} as a video')
    ok, first = self._cap.read()
    if not ok or first is None or first.size == 0:
      self._cap.release()
      raise BadVideoError(NOT_A_VIDEO, f'no frame decodes from {path}')
    self._first = first
    nh, nw = first.shape[:2]
    if min(nh, nw) < min_native_side:
      self._cap.release()
      raise BadVideoError(TOO_SMALL, f'{path} is {nw}x{nh}; both sides must be >= {min_native_side} px')
    fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not np.isfinite(fps) or fps <= 0 or fps > 1000:
      fps = 0.0
    announced = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    h, w = prep_size(nh, nw, short_side)
    if max(h, w) > MAX_PREP_SIDE:
      self._cap.release()
      raise BadVideoError(UNSUPPORTED_SIZE, f'{path} is {nw}x{nh}: at short side {short_side or "native"} its prep '
                          f'frames would be {w}x{h}, above the {MAX_PREP_SIDE}-px limit on either side (an extreme '
                          'aspect ratio or size); crop it, or prepare it at a smaller --short_side')
    self.info = VideoInfo(fps=fps, native_height=nh, native_width=nw, announced_frames=max(announced, 0),
                          height=h, width=w)
    self.frames_decoded = 0

  def __iter__(self) -> Iterator[np.ndarray]:
    h, w = self.info.height, self.info.width
    frame = self._first
    while frame is not None:
      self.frames_decoded += 1
      yield to_rgb(resize(frame, h, w))  # Colour conversion after the resize: fewer pixels.
      if self._max_frames and self.frames_decoded >= self._max_frames:
        return
      ok, raw = self._cap.read()
      frame = raw if ok and raw is not None and raw.size else None

  def check_complete(self) -> None:
    """After iterating to the end: raises `BadVideoError(TRUNCATED)` if far fewer frames decoded than announced."""
    n, announced = self.frames_decoded, self.info.announced_frames
    if self._max_frames and n >= self._max_frames:
      return
    # Container frame counts are estimates; allow a few frames (and 5%) of slack.
    if announced and n < announced - max(3, int(0.05 * announced)):
      raise BadVideoError(TRUNCATED, f'{self._path}: decoded {n} of the {announced} frames the container announces')

  def close(self) -> None:
    self._cap.release()

  def __enter__(self) -> VideoReader:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_video(path: str, short_side: int = 256, *, max_frames: int = 0) -> tuple[np.ndarray, float]:
  """Decodes a whole local video: (uint8 RGB `[N, H, W, 3]` at prep resolution, fps)."""
  with VideoReader(path, short_side, max_frames=max_frames) as reader:
    frames = np.stack(list(reader))
    reader.check_complete()
    return frames, reader.info.fps
