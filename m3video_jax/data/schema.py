"""The TFRecord storage contract between `data_prep/` and the training input pipeline.

One `tf.train.Example` per video, or per segment of a video (data prep `--segment_frames`). This module is the only
place that knows feature names, dtypes, shapes and the quantisation of the stored arrays: `data_prep` writes records
with `encode`, tools and tests read them with `decode`, and the tf.data pipeline parses them with `tf_feature_spec`
plus the `tf_*` helpers here.

Geometry (prep resolution, i.e. after data prep resized the video to its short side):
  frames `[N, H, W, 3]` uint8 RGB, stored as one JPEG per frame.
  Grid step `g = 8` px; `Gh = H // g`, `Gw = W // g`; grid point `(gy, gx)` starts at pixel `(x, y) = (g*gx + g/2, g*gy + g/2)`.
  Trajectories start at frames `f = 0, s, 2s, ...` (`s = traj_start_stride`, default 2: tubelet starts `f0 + 2ks` are even
  when clip starts are even) while `f + L <= N - 1`, so `S = (N - 1 - L) // s + 1` start frames.
  `traj_disp[i, j, gy, gx] = p_{j+1} - p_j` (Δx, Δy in prep pixels) of the point tracked from start frame `s*i`.
  `traj_valid[i, gy, gx]`: every position `p_1 ... p_L` stayed inside the frame (`0 <= x < W`, `0 <= y < H`);
  `traj_inside_steps[i, gy, gx]` = the number k of leading positions `p_1 ... p_k` inside, so the trajectory cut to
  `L' <= L` steps is valid iff `traj_inside_steps >= L'` (what the paper's shorter-L ablations need).
  `hog_map[n, gy, gx, b]`: 9-bin unsigned HOG (20° bins, magnitude-weighted linear votes, no block normalisation) of the
  8x8 cell centred at grid point `(gy, gx)` of frame `n`, computed on grayscale in [0, 1] intensity units.
  Trajectory-aligned HOG `traj_hog[i, j] = HOG(p_j)` in frame `s*i + j` is the bilinear lookup of `hog_map` at the tracked
  position (`decode` does that lookup; the input pipeline does the same in TF for the starts it needs).

Segments: a record may hold frames `[a, a + K)` of a longer video (`segment_start = a`, `video_frames` = the whole
video's frame count; a whole-video record has `a = 0` and `video_frames = num_frames`). Indices inside the record are
local to it: its frame 0 is the video's frame `a`, its trajectory starts are frames `0, s, 2s, ...` of the segment, and
`a` is a multiple of `s`, so a segment's starts are starts of the whole video (docs/design.md §2).

Encoding of the non-JPEG arrays (kept small, see the storage budget in docs/design.md §2):
  traj_disp: int8 in units of 1/4 px (clipped to ±127 → ±31.75 px; flow is clipped to ±20 px), one zlib stream per start.
  traj_inside_steps: uint8 `[Gh, Gw]`, one zlib stream per start (almost all equal to L: compresses to ~nothing).
  hog_map: uint8 with square-root companding, `v = (q / 255)**2 * hog_scale[n]`, stored raw (`Gh * Gw * 9` bytes per
    frame): zlib saved only ~15 % on these codes and its inflation was a sixth of the input pipeline's time per clip.
  hof_map, mbh_map (optional): companded as hog_map with their own per-pair scales; flow_map (optional): int8 quarter
    px as traj_disp; each one zlib stream per frame pair (mostly still pixels compress well, unlike HOG codes).
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np

# 2: per-point inside-step counts replace the validity bits, so any L' <= L is servable.
# 3: HOG maps stored raw (no zlib); segment records (`segment_start`, `video_frames`).
# 4: optional flow-derived maps per frame pair (`hof_map`, `mbh_map`, `flow_map`; data prep `--motion_maps`).
SCHEMA_VERSION = 4
# Versions `decode` and the input pipeline read: a version-3 record is a version-4 record without motion maps.
READABLE_VERSIONS = (3, 4)
GRID_STEP = 8
HOG_BINS = 9
# Bin b is centred at b * 20 degrees (unsigned orientation, bin 9 == bin 0). A horizontal flip maps an orientation
# theta to 180 - theta, hence bin b to (9 - b) mod 9.
HOG_FLIP_PERMUTATION = tuple((HOG_BINS - b) % HOG_BINS for b in range(HOG_BINS))
DISP_UNITS_PER_PX = 4  # traj_disp quantisation: 1/4 px (and flow_map's)
DISP_MAX_Q = 127
ZLIB_LEVEL = 6

# Flow-derived maps (data prep `--motion_maps`, `data_prep/hog.py`), one per frame pair `(n, n + 1)`, on the HOG grid:
#   hof   9 values per cell: flow orientation over the full circle in 8 bins centred at b * 45 degrees (linear votes
#         of the flow magnitude), plus a zero-motion bin (the fraction of pixels moving at most HOF_MIN_FLOW px).
#   mbh   18: MBHx (bins 0-8) and MBHy (9-17), the HOG of the flow's dx and dy images (HOG's unsigned 9 bins).
#   flow  2: the mean flow (dx, dy) of the cell in px.
MOTION_MAPS = ('hof', 'mbh', 'flow')
HOF_BINS = 9
HOF_MIN_FLOW = 0.4  # px: a slower pixel votes into HOF's zero-motion bin.
MOTION_MAP_CHANNELS = {'hof': HOF_BINS, 'mbh': 2 * HOG_BINS, 'flow': 2}
# A horizontal flip (dx -> -dx) maps a flow orientation theta to 180 - theta: HOF bin b (of 8) -> (4 - b) mod 8, the
# zero bin stays; MBH's two HOGs take HOG's permutation each; flow negates dx (FLOW_FLIP_SIGN).
MOTION_MAP_FLIPS = {
    'hof': tuple((4 - b) % 8 for b in range(8)) + (8,),
    'mbh': HOG_FLIP_PERMUTATION + tuple(HOG_BINS + b for b in HOG_FLIP_PERMUTATION),
    'flow': (0, 1),
}
FLOW_FLIP_SIGN = (-1.0, 1.0)

# The clip every input hands to the model: uint8 RGB `[..., T, H, W, 3]`, normalised on the device by
# `normalize_video` with the ImageNet statistics the reference uses (exported models expect them too).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Feature keys. Scalars are length-1 lists.
VIDEO_ID = 'video_id'  # bytes: stable id (sha1 of the source path, prefixed by the file stem)
LABEL = 'label'  # int64: class index, -1 if unlabelled
LABEL_NAME = 'label_name'  # bytes: '' if unlabelled
SOURCE_PATH = 'source_path'  # bytes
FPS = 'fps'  # float
NUM_FRAMES = 'num_frames'  # int64: N
HEIGHT = 'height'  # int64: H (prep resolution)
WIDTH = 'width'  # int64: W (prep resolution)
TRAJ_LEN = 'traj_len'  # int64: L
GRID = 'grid_step'  # int64: g
TRAJ_START_STRIDE = 'traj_start_stride'  # int64: s
NUM_STARTS = 'num_starts'  # int64: S
VERSION = 'schema_version'  # int64
SEGMENT_START = 'segment_start'  # int64: the video frame this record's frame 0 is (0 for a whole-video record)
VIDEO_FRAMES = 'video_frames'  # int64: frames of the whole video (== num_frames for a whole-video record)
FRAMES = 'frames'  # bytes list [N]: JPEG per frame
TRAJ_DISP = 'traj_disp'  # bytes list [S]: zlib(int8 [L, Gh, Gw, 2])
TRAJ_INSIDE = 'traj_inside_steps'  # bytes list [S]: zlib(uint8 [Gh, Gw])
HOG_MAP = 'hog_map'  # bytes list [N]: uint8 [Gh, Gw, 9], raw
HOG_SCALE = 'hog_scale'  # float list [N]
# Optional (version 4, data prep --motion_maps), P = N - 1 frame pairs, entry n = the pair (n, n + 1):
# Each map zlib-compressed (mostly still pixels: HOF and flow shrink to 8-45 %, MBH to ~60 % on the sample videos).
HOF_MAP, HOF_SCALE = 'hof_map', 'hof_scale'  # bytes list [P]: zlib(uint8 [Gh, Gw, 9]) companded as hog_map; floats [P]
MBH_MAP, MBH_SCALE = 'mbh_map', 'mbh_scale'  # bytes list [P]: zlib(uint8 [Gh, Gw, 18]) companded; float list [P]
FLOW_MAP = 'flow_map'  # bytes list [P]: zlib(int8 [Gh, Gw, 2]), 1/4 px (as traj_disp)
MAP_KEYS = {'hof': (HOF_MAP, HOF_SCALE), 'mbh': (MBH_MAP, MBH_SCALE), 'flow': (FLOW_MAP, None)}

_INT_SCALARS = (LABEL, NUM_FRAMES, HEIGHT, WIDTH, TRAJ_LEN, GRID, TRAJ_START_STRIDE, NUM_STARTS, VERSION, SEGMENT_START,
                VIDEO_FRAMES)
_BYTES_SCALARS = (VIDEO_ID, LABEL_NAME, SOURCE_PATH)
_BYTES_LISTS = (FRAMES, TRAJ_DISP, TRAJ_INSIDE, HOG_MAP)
NON_JPEG_KEYS = (TRAJ_DISP, TRAJ_INSIDE, HOG_MAP, HOG_SCALE)
_MAP_LISTS = (HOF_MAP, MBH_MAP, FLOW_MAP)
_MAP_SCALES = (HOF_SCALE, MBH_SCALE)


class SchemaError(ValueError):
  """A serialized record does not follow this schema (wrong version, missing field, inconsistent shapes)."""


@dataclasses.dataclass(frozen=True)
class VideoMeta:
  """Per-video scalars stored beside the arrays."""
  video_id: str
  label: int
  label_name: str
  source_path: str
  fps: float


def num_starts(num_frames: int, traj_len: int, start_stride: int) -> int:
  """Number of trajectory start frames `S` for a video of `num_frames` frames (0 if it is too short)."""
  if num_frames - 1 < traj_len:
    return 0
  return (num_frames - 1 - traj_len) // start_stride + 1


def grid_shape(height: int, width: int, grid_step: int = GRID_STEP) -> tuple[int, int]:
  return height // grid_step, width // grid_step


def quantize_disp(disp: np.ndarray) -> np.ndarray:
  """float px -> int8 quarter pixels (rounded to nearest, ties to even; clipped)."""
  q = np.rint(np.asarray(disp, np.float32) * DISP_UNITS_PER_PX)
  return np.clip(q, -DISP_MAX_Q, DISP_MAX_Q).astype(np.int8)


def dequantize_disp(q: np.ndarray) -> np.ndarray:
  return q.astype(np.float32) / DISP_UNITS_PER_PX


def quantize_hog(hog: np.ndarray) -> tuple[np.ndarray, float]:
  """float [Gh, Gw, 9] >= 0 -> (uint8 sqrt-companded codes, scale). Exact zero stays zero."""
  hog = np.maximum(np.asarray(hog, np.float32), 0.0)
  scale = float(hog.max()) if hog.size else 0.0
  if scale <= 0.0:
    return np.zeros(hog.shape, np.uint8), 0.0
  q = np.rint(np.sqrt(hog / scale) * 255.0)
  return np.clip(q, 0, 255).astype(np.uint8), scale


def dequantize_hog(q: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
  x = q.astype(np.float32) / 255.0
  return x * x * np.asarray(scale, np.float32)


def motion_map_names(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
  """`'hof,mbh'` (or a sequence) -> `('hof', 'mbh')` in `MOTION_MAPS` order; '' or 'none' -> ().

  Raises:
    ValueError: naming a map that is not one of `MOTION_MAPS`.
  """
  names = [n.strip() for n in spec.split(',')] if isinstance(spec, str) else list(spec)
  names = [n for n in names if n and n != 'none']
  bad = [n for n in names if n not in MOTION_MAPS]
  if bad:
    raise ValueError(f'motion map(s) {bad} unknown: expected a comma-separated subset of {MOTION_MAPS} (or none)')
  return tuple(n for n in MOTION_MAPS if n in names)


def motion_maps_mask(names) -> int:
  """Bit `i` set for `MOTION_MAPS[i]` in `names` (a setting the shard checks compare as an int)."""
  return sum(1 << i for i, n in enumerate(MOTION_MAPS) if n in motion_map_names(names))


def motion_maps_from_mask(mask: int) -> tuple[str, ...]:
  return tuple(n for i, n in enumerate(MOTION_MAPS) if mask >> i & 1)


def encode(meta: VideoMeta, jpeg_frames: list[bytes], height: int, width: int, traj_disp: np.ndarray,
           traj_valid: np.ndarray, hog_map: np.ndarray, *, traj_start_stride: int,
           grid_step: int = GRID_STEP, traj_inside_steps: np.ndarray | None = None, segment_start: int = 0,
           video_frames: int | None = None, motion_maps: dict[str, np.ndarray] | None = None) -> bytes:
  """Serializes one video into a `tf.train.Example`.

  Args:
    meta: id, label, source path and fps.
    jpeg_frames: N JPEG-encoded RGB frames of size `height x width`.
    height, width: prep resolution.
    traj_disp: float32 `[S, L, Gh, Gw, 2]` displacements (Δx, Δy) in prep pixels.
    traj_valid: bool `[S, Gh, Gw]`.
    hog_map: float32 `[N, Gh, Gw, 9]` per-frame cell histograms.
    traj_start_stride: frames between consecutive trajectory starts (`s`).
    grid_step: grid spacing in pixels.
    traj_inside_steps: uint8 `[S, Gh, Gw]` leading inside steps (must be L exactly where `traj_valid`); default:
      L where valid, 0 elsewhere (all-or-nothing, when only the full-length validity is known).
    segment_start: for a segment record, the video frame of its frame 0 (a multiple of `traj_start_stride`).
    video_frames: frames of the whole video (default: N, a whole-video record).
    motion_maps: optional flow-derived maps `{name: float32 [N - 1, Gh, Gw, MOTION_MAP_CHANNELS[name]]}`, entry n
      of the frame pair (n, n + 1) (`data_prep/hog.py`); absent maps are not written.

  Returns:
    The serialized record.

  Raises:
    SchemaError: if the shapes are inconsistent with each other.
  """
  import tensorflow as tf  # Local import: decode() must work without TensorFlow.

  n = len(jpeg_frames)
  gh, gw = grid_shape(height, width, grid_step)
  traj_disp = np.asarray(traj_disp)
  traj_valid = np.asarray(traj_valid, bool)
  hog_map = np.asarray(hog_map)
  if traj_disp.ndim != 5 or traj_disp.shape[2:] != (gh, gw, 2):
    raise SchemaError(f'traj_disp must be [S, L, {gh}, {gw}, 2] for {height}x{width}, got {traj_disp.shape}')
  s, traj_len = traj_disp.shape[:2]
  if s != num_starts(n, traj_len, traj_start_stride):
    raise SchemaError(f'traj_disp has {s} starts; {n} frames with L={traj_len} and start stride '
                      f'{traj_start_stride} need {num_starts(n, traj_len, traj_start_stride)}')
  if traj_valid.shape != (s, gh, gw):
    raise SchemaError(f'traj_valid must be {(s, gh, gw)}, got {traj_valid.shape}')
  if traj_inside_steps is None:
    traj_inside_steps = np.where(traj_valid, traj_len, 0)
  traj_inside_steps = np.asarray(traj_inside_steps)
  if traj_inside_steps.shape != (s, gh, gw) or not np.array_equal(traj_inside_steps >= traj_len, traj_valid):
    raise SchemaError(f'traj_inside_steps must be {(s, gh, gw)} and reach L={traj_len} exactly where traj_valid')
  if hog_map.shape != (n, gh, gw, HOG_BINS):
    raise SchemaError(f'hog_map must be {(n, gh, gw, HOG_BINS)}, got {hog_map.shape}')
  video_frames = n if video_frames is None else int(video_frames)
  if segment_start < 0 or segment_start % traj_start_stride or segment_start + n > video_frames:
    raise SchemaError(f'segment_start={segment_start} must be a multiple of the start stride {traj_start_stride} with '
                      f'segment_start + {n} frames <= video_frames={video_frames}')

  motion_maps = dict(motion_maps or {})
  for name, values in motion_maps.items():
    if name not in MOTION_MAPS:
      raise SchemaError(f'motion map {name!r} is not one of {MOTION_MAPS}')
    expected = (max(n - 1, 0), gh, gw, MOTION_MAP_CHANNELS[name])
    if np.shape(values) != expected:
      raise SchemaError(f'motion map {name!r} must be {expected} (one per frame pair), got {np.shape(values)}')

  disp_q = quantize_disp(traj_disp)
  disp_bytes = [zlib.compress(disp_q[i].tobytes(), ZLIB_LEVEL) for i in range(s)]
  steps_q = np.clip(traj_inside_steps, 0, traj_len).astype(np.uint8)
  inside_bytes = [zlib.compress(steps_q[i].tobytes(), ZLIB_LEVEL) for i in range(s)]
  hog_bytes, hog_scales = [], []
  for i in range(n):
    q, scale = quantize_hog(hog_map[i])
    hog_bytes.append(q.tobytes())
    hog_scales.append(scale)

  def ints(*v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in v]))

  def byts(*v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(v)))

  def floats(*v):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(x) for x in v]))

  feature = {
      VIDEO_ID: byts(meta.video_id.encode()),
      LABEL: ints(meta.label),
      LABEL_NAME: byts(meta.label_name.encode()),
      SOURCE_PATH: byts(meta.source_path.encode()),
      FPS: floats(meta.fps),
      NUM_FRAMES: ints(n),
      HEIGHT: ints(height),
      WIDTH: ints(width),
      TRAJ_LEN: ints(traj_len),
      GRID: ints(grid_step),
      TRAJ_START_STRIDE: ints(traj_start_stride),
      NUM_STARTS: ints(s),
      VERSION: ints(SCHEMA_VERSION),
      SEGMENT_START: ints(segment_start),
      VIDEO_FRAMES: ints(video_frames),
      FRAMES: byts(*jpeg_frames),
      TRAJ_DISP: byts(*disp_bytes),
      TRAJ_INSIDE: byts(*inside_bytes),
      HOG_MAP: byts(*hog_bytes),
      HOG_SCALE: floats(*hog_scales),
  }
  for name, values in motion_maps.items():
    map_key, scale_key = MAP_KEYS[name]
    if scale_key is None:  # flow: signed px, quantised as the trajectories.
      feature[map_key] = byts(*[zlib.compress(quantize_disp(v).tobytes(), ZLIB_LEVEL) for v in values])
    else:
      codes = [quantize_hog(v) for v in values]
      feature[map_key] = byts(*[zlib.compress(q.tobytes(), ZLIB_LEVEL) for q, _ in codes])
      feature[scale_key] = floats(*[sc for _, sc in codes])
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def normalize_video(video, mean=IMAGENET_MEAN, std=IMAGENET_STD):
  """RGB in [0, 255] (uint8 or float, `[..., 3]`) -> `(x / 255 - mean) / std` float32: the one normalisation of the
  model input, applied inside the jitted step and the jitted predict functions (a JAX array in, a JAX array out;
  NumPy works the same)."""
  x = video.astype(np.float32) * np.float32(1.0 / 255.0)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def denormalize_video(video, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
  """The inverse of `normalize_video`, rounded to uint8 RGB (for pictures of what the model saw)."""
  x = (np.asarray(video, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)) * 255.0
  return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def parse_example(serialized: bytes) -> dict[str, Any]:
  """Parses the protobuf without TensorFlow ops (the proto classes are enough) into the stored fields, undecoded."""
  from tensorflow.core.example import example_pb2  # Pure protobuf, no TF runtime.

  ex = example_pb2.Example()
  try:
    ex.ParseFromString(serialized)
  except Exception as e:  # protobuf raises DecodeError; keep the message.
    raise SchemaError(f'record is not a tf.train.Example: {e}') from e
  f = ex.features.feature
  out: dict[str, Any] = {}
  for key in _INT_SCALARS + _BYTES_SCALARS + _BYTES_LISTS + (FPS, HOG_SCALE):
    if key not in f:
      raise SchemaError(f'record has no feature {key!r}; present: {sorted(f.keys())}')
  for key in _INT_SCALARS:
    out[key] = int(f[key].int64_list.value[0])
  for key in _BYTES_SCALARS:
    out[key] = f[key].bytes_list.value[0].decode()
  for key in _BYTES_LISTS:
    out[key] = list(f[key].bytes_list.value)
  out[FPS] = float(f[FPS].float_list.value[0])
  out[HOG_SCALE] = np.asarray(f[HOG_SCALE].float_list.value, np.float32)
  for key in _MAP_LISTS:  # Optional: absent in version 3 and when data prep wrote no such map.
    out[key] = list(f[key].bytes_list.value) if key in f else []
  for key in _MAP_SCALES:
    out[key] = np.asarray(f[key].float_list.value if key in f else [], np.float32)
  return out


def stored_motion_maps(rec: dict[str, Any]) -> tuple[str, ...]:
  """The flow-derived maps a parsed record (`parse_example`) holds."""
  return tuple(name for name in MOTION_MAPS if rec[MAP_KEYS[name][0]])


def bilinear_lookup(grid_values: np.ndarray, x: np.ndarray, y: np.ndarray, grid_step: int = GRID_STEP) -> np.ndarray:
  """Samples a per-cell map at pixel positions, bilinearly between cell centres (edge cells extend to the border).

  Args:
    grid_values: `[Gh, Gw, C]` values at the cell centres `(g*gx + g/2, g*gy + g/2)`.
    x, y: pixel positions, any matching shape `P`.
    grid_step: `g`.

  Returns:
    `[*P, C]` interpolated values.
  """
  gh, gw = grid_values.shape[:2]
  u = np.clip((np.asarray(x, np.float32) - grid_step / 2) / grid_step, 0.0, gw - 1)
  v = np.clip((np.asarray(y, np.float32) - grid_step / 2) / grid_step, 0.0, gh - 1)
  u0 = np.minimum(np.floor(u).astype(np.int64), max(gw - 2, 0))
  v0 = np.minimum(np.floor(v).astype(np.int64), max(gh - 2, 0))
  u1 = np.minimum(u0 + 1, gw - 1)
  v1 = np.minimum(v0 + 1, gh - 1)
  wu = (u - u0)[..., None]
  wv = (v - v0)[..., None]
  top = grid_values[v0, u0] * (1 - wu) + grid_values[v0, u1] * wu
  bot = grid_values[v1, u0] * (1 - wu) + grid_values[v1, u1] * wu
  return (top * (1 - wv) + bot * wv).astype(np.float32)


def start_positions(gh: int, gw: int, grid_step: int = GRID_STEP) -> tuple[np.ndarray, np.ndarray]:
  """Pixel positions `(x, y)`, each `[Gh, Gw]`, of the grid points at their start frame."""
  half = grid_step / 2
  y, x = np.meshgrid(np.arange(gh, dtype=np.float32) * grid_step + half,
                     np.arange(gw, dtype=np.float32) * grid_step + half, indexing='ij')
  return x, y


def trajectory_hog(hog_map: np.ndarray, traj_disp: np.ndarray, start_frames: np.ndarray,
                   grid_step: int = GRID_STEP) -> np.ndarray:
  """Trajectory-aligned HOG: `HOG(p_j)` in frame `start + j`, j = 0 ... L-1.

  Args:
    hog_map: float32 `[N, Gh, Gw, 9]`.
    traj_disp: float32 `[S, L, Gh, Gw, 2]`.
    start_frames: int `[S]` frame index of each start.
    grid_step: `g`.

  Returns:
    float32 `[S, L, Gh, Gw, 9]`.
  """
  s, traj_len, gh, gw, _ = traj_disp.shape
  x0, y0 = start_positions(gh, gw, grid_step)
  # Positions p_0 ... p_{L-1}: p_0 is the grid point, p_j = p_0 + sum of the first j displacements.
  cum = np.concatenate([np.zeros_like(traj_disp[:, :1]), np.cumsum(traj_disp, axis=1)[:, :-1]], axis=1)
  out = np.empty((s, traj_len, gh, gw, HOG_BINS), np.float32)
  for i in range(s):
    for j in range(traj_len):
      frame = int(start_frames[i]) + j
      out[i, j] = bilinear_lookup(hog_map[frame], x0 + cum[i, j, ..., 0], y0 + cum[i, j, ..., 1], grid_step)
  return out


def decode(serialized: bytes, *, decode_frames: bool = True) -> dict[str, Any]:
  """Decodes one serialized record into numpy arrays.

  Args:
    serialized: one record as written by `data_prep` (bytes of a `tf.train.Example`).
    decode_frames: decode the JPEG frames (set False to skip the most expensive part).

  Returns:
    A dict with
      frames: uint8 `[N, H, W, 3]` RGB (absent if `decode_frames=False`),
      traj_disp: float32 `[S, L, Gh, Gw, 2]` (Δx, Δy) in prep pixels,
      traj_valid: bool `[S, Gh, Gw]` (the full stored length L stayed inside),
      traj_inside_steps: uint8 `[S, Gh, Gw]` (valid for `L' <= L` steps iff `>= L'`),
      traj_hog: float32 `[S, L, Gh, Gw, 9]` trajectory-aligned HOG,
      hog_map: float32 `[N, Gh, Gw, 9]` per-frame cell histograms,
      hof_map, mbh_map, flow_map: float32 `[N - 1, Gh, Gw, 9 | 18 | 2]` per frame pair (entry n: frames n, n + 1),
        only those the record holds (data prep `--motion_maps`); `motion_maps`: their names,
      traj_start_frames: int32 `[S]` frame index of each start,
      label: int, label_name: str, video_id: str, source_path: str, fps: float,
      num_frames, height, width, traj_len, grid_step, traj_start_stride, schema_version, segment_start,
      video_frames: int.

  Raises:
    SchemaError: on a record of another schema version or with missing/inconsistent fields.
  """
  rec = parse_example(serialized)
  if rec[VERSION] not in READABLE_VERSIONS:
    raise SchemaError(f'record schema_version={rec[VERSION]}, this code reads versions {READABLE_VERSIONS}; '
                      're-run data_prep with this version of the code')
  n, h, w = rec[NUM_FRAMES], rec[HEIGHT], rec[WIDTH]
  traj_len, g, stride, s = rec[TRAJ_LEN], rec[GRID], rec[TRAJ_START_STRIDE], rec[NUM_STARTS]
  gh, gw = grid_shape(h, w, g)
  for key, expected in ((FRAMES, n), (HOG_MAP, n), (TRAJ_DISP, s), (TRAJ_INSIDE, s)):
    if len(rec[key]) != expected:
      raise SchemaError(f'{key} has {len(rec[key])} entries, expected {expected}')
  if len(rec[HOG_SCALE]) != n:
    raise SchemaError(f'{HOG_SCALE} has {len(rec[HOG_SCALE])} entries, expected {n}')
  disp = np.stack([np.frombuffer(zlib.decompress(b), np.int8).reshape(traj_len, gh, gw, 2)
                   for b in rec[TRAJ_DISP]]) if s else np.zeros((0, traj_len, gh, gw, 2), np.int8)
  inside = np.stack([np.frombuffer(zlib.decompress(b), np.uint8).reshape(gh, gw)
                     for b in rec[TRAJ_INSIDE]]) if s else np.zeros((0, gh, gw), np.uint8)
  for i, b in enumerate(rec[HOG_MAP]):
    if len(b) != gh * gw * HOG_BINS:
      raise SchemaError(f'{HOG_MAP}[{i}] has {len(b)} bytes, expected {gh} x {gw} x {HOG_BINS} = {gh * gw * HOG_BINS}')
  hog_map = np.stack([dequantize_hog(np.frombuffer(b, np.uint8).reshape(gh, gw, HOG_BINS), sc)
                      for b, sc in zip(rec[HOG_MAP], rec[HOG_SCALE])])
  traj_disp = dequantize_disp(disp)
  start_frames = np.arange(s, dtype=np.int32) * stride
  maps = {}
  for name in stored_motion_maps(rec):
    map_key, scale_key = MAP_KEYS[name]
    c = MOTION_MAP_CHANNELS[name]
    try:
      pairs = [zlib.decompress(b) for b in rec[map_key]]
    except zlib.error as e:
      raise SchemaError(f'{map_key} of {rec[VIDEO_ID]!r} is not zlib data: {e}') from e
    if len(pairs) != max(n - 1, 0) or any(len(b) != gh * gw * c for b in pairs):
      raise SchemaError(f'{map_key} must hold {max(n - 1, 0)} maps of {gh} x {gw} x {c} bytes, got '
                        f'{[len(b) for b in pairs[:3]]}... ({len(pairs)} entries)')
    if scale_key is None:
      maps[map_key] = np.stack([dequantize_disp(np.frombuffer(b, np.int8).reshape(gh, gw, c)) for b in pairs])
    else:
      if len(rec[scale_key]) != len(pairs):
        raise SchemaError(f'{scale_key} has {len(rec[scale_key])} entries, expected {len(pairs)}')
      maps[map_key] = np.stack([dequantize_hog(np.frombuffer(b, np.uint8).reshape(gh, gw, c), sc)
                                for b, sc in zip(pairs, rec[scale_key])])
  out = {
      'traj_disp': traj_disp,
      'traj_valid': inside >= traj_len,
      'traj_inside_steps': inside,
      'traj_hog': trajectory_hog(hog_map, traj_disp, start_frames, g),
      'hog_map': hog_map,
      **maps,
      'motion_maps': tuple(stored_motion_maps(rec)),
      'traj_start_frames': start_frames,
      'label': rec[LABEL],
      'label_name': rec[LABEL_NAME],
      'video_id': rec[VIDEO_ID],
      'source_path': rec[SOURCE_PATH],
      'fps': rec[FPS],
      'num_frames': n,
      'height': h,
      'width': w,
      'traj_len': traj_len,
      'grid_step': g,
      'traj_start_stride': stride,
      'schema_version': rec[VERSION],
      'segment_start': rec[SEGMENT_START],
      'video_frames': rec[VIDEO_FRAMES],
  }
  if decode_frames:
    import cv2  # Local import: OpenCV is a core dependency, but only needed here for frames.

    frames = []
    for i, b in enumerate(rec[FRAMES]):
      img = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
      if img is None or img.shape[:2] != (h, w):
        raise SchemaError(f'frame {i} of {rec[VIDEO_ID]!r} is not a {h}x{w} JPEG')
      frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    out['frames'] = np.stack(frames)
  return out


def non_jpeg_bytes(serialized: bytes) -> int:
  """Bytes of the stored non-JPEG arrays (trajectories, validity, HOG) in one record: the storage-budget figure."""
  rec = parse_example(serialized)
  return (sum(len(b) for k in (TRAJ_DISP, TRAJ_INSIDE, HOG_MAP) + _MAP_LISTS for b in rec[k])
          + 4 * sum(len(rec[k]) for k in (HOG_SCALE,) + _MAP_SCALES))


def motion_map_bytes(serialized: bytes) -> dict[str, int]:
  """Bytes of each stored flow-derived map (codes and scales) in one record: `{name: bytes}` for the maps it holds."""
  rec = parse_example(serialized)
  out = {}
  for name in stored_motion_maps(rec):
    map_key, scale_key = MAP_KEYS[name]
    out[name] = sum(len(b) for b in rec[map_key]) + (4 * len(rec[scale_key]) if scale_key else 0)
  return out


def tf_feature_spec() -> dict[str, Any]:
  """The `tf.io.parse_single_example` spec for the input pipeline (lists as VarLen, scalars as Fixed)."""
  import tensorflow as tf

  spec: dict[str, Any] = {k: tf.io.FixedLenFeature([], tf.int64) for k in _INT_SCALARS}
  spec.update({k: tf.io.FixedLenFeature([], tf.string) for k in _BYTES_SCALARS})
  spec.update({k: tf.io.VarLenFeature(tf.string) for k in _BYTES_LISTS})
  spec[FPS] = tf.io.FixedLenFeature([], tf.float32)
  spec[HOG_SCALE] = tf.io.VarLenFeature(tf.float32)
  spec.update({k: tf.io.VarLenFeature(tf.string) for k in _MAP_LISTS})  # Empty when a record has no such map.
  spec.update({k: tf.io.VarLenFeature(tf.float32) for k in _MAP_SCALES})
  return spec
