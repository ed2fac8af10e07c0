"""Per-clip TensorFlow ops of the input pipeline: clip sampling, target assembly, multi-scale crop, flip, JPEG decode.

Frames and trajectories always go through the same crop and flip (docs/design.md §3.4). Every op is a pure function of
its inputs and an explicit stateless seed, so a clip is a deterministic function of (record, seed).

Shapes: `T` clip frames, `Tt = T // pt` tubelets, `L` trajectory steps, prep grid `Gh x Gw` (8-px cells of the stored
video), output grid `G = res // 8` per side.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np
import tensorflow as tf

from m3video_jax.data import clip_device
from m3video_jax.data import schema

# Offsets of the reference's `more_fix_crop` lattice, in quarters of the free space (x, y): corners, centre, edge
# midpoints and quarter points.
_CROP_OFFSETS = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3))


def sample_clip(num_frames: tf.Tensor, num_starts: tf.Tensor, seed: tf.Tensor, *, clip_frames: int, frame_stride: int,
                tubelet: int, traj_len: int, start_stride: int, random_start: bool = True):
  """Chooses the clip start and the trajectory start of every tubelet.

  The start `f0` is a multiple of `start_stride`, so each tubelet's first frame `f0 + k * tubelet * frame_stride` is a
  stored trajectory start. Short videos repeat their last frame; tubelets without stored trajectories are flagged.

  Returns:
    frame_idx int32 `[T]`, tubelet_first int32 `[Tt]` (first raw frame of each tubelet), start_idx int32 `[Tt]`
    (index into the stored starts), has_traj bool `[Tt]`.
  """
  num_frames = tf.cast(num_frames, tf.int32)
  num_starts = tf.cast(num_starts, tf.int32)
  start_stride = tf.cast(start_stride, tf.int32)
  span_frames = (clip_frames - 1) * frame_stride
  span_tubelets = (clip_frames - tubelet) * frame_stride
  last_traj_start = (num_starts - 1) * start_stride
  max_f0 = tf.maximum(tf.minimum(num_frames - 1 - span_frames, last_traj_start - span_tubelets), 0)
  choices = max_f0 // start_stride + 1
  if random_start:
    f0 = start_stride * tf.random.stateless_uniform([], seed, 0, choices, dtype=tf.int32)
  else:  # Centre clip for evaluation.
    f0 = start_stride * (choices // 2)
  f0 = tf.cast(f0, tf.int32)
  frame_idx = tf.minimum(f0 + tf.range(clip_frames, dtype=tf.int32) * frame_stride, num_frames - 1)
  tubelet_first = f0 + tf.range(0, clip_frames, tubelet, dtype=tf.int32) * frame_stride
  start_idx = tubelet_first // start_stride
  has_traj = tf.logical_and(tubelet_first % start_stride == 0, start_idx < num_starts)
  has_traj = tf.logical_and(has_traj, tubelet_first + traj_len <= num_frames - 1)
  start_idx = tf.clip_by_value(start_idx, 0, tf.maximum(num_starts - 1, 0))
  return frame_idx, tubelet_first, start_idx, has_traj


def decode_trajectories(disp_strings: tf.Tensor, inside_strings: tf.Tensor, gh: tf.Tensor, gw: tf.Tensor,
                        stored_len: tf.Tensor, traj_len: int):
  """Decodes stored trajectory starts, cut to `traj_len` steps.

  Args:
    disp_strings: string `[Tt]`, one zlib int8 stream per start.
    inside_strings: string `[Tt]`, one zlib uint8 stream of leading inside-step counts per start.
    gh, gw: prep grid size; stored_len: stored `L`; traj_len: steps to keep (<= stored_len).

  Returns:
    disp float32 `[Tt, L, Gh, Gw, 2]` in prep pixels, valid bool `[Tt, Gh, Gw]`: positions p_1..p_L (of the kept
    `traj_len` steps) inside the frame.
  """
  raw, inside = stored_trajectories(disp_strings, inside_strings, gh, gw, stored_len, traj_len)
  return tf.cast(raw, tf.float32) / schema.DISP_UNITS_PER_PX, inside >= traj_len


def stored_trajectories(disp_strings: tf.Tensor, inside_strings: tf.Tensor, gh: tf.Tensor, gw: tf.Tensor,
                        stored_len: tf.Tensor, traj_len: int):
  """The stored codes of trajectory starts, inflated: int8 `[Tt, L, Gh, Gw, 2]` (the first `traj_len` steps,
  DISP_UNITS_PER_PX per px) and the uint8 inside-step counts `[Tt, Gh, Gw]`."""
  raw = tf.io.decode_raw(tf.io.decode_compressed(disp_strings, 'ZLIB'), tf.int8)
  raw = tf.reshape(raw, tf.stack([-1, stored_len, gh, gw, 2]))[:, :traj_len]
  inside = tf.io.decode_raw(tf.io.decode_compressed(inside_strings, 'ZLIB'), tf.uint8)
  return raw, tf.reshape(inside, tf.stack([-1, gh, gw]))


def hog_codes(hog_strings: tf.Tensor, gh: tf.Tensor, gw: tf.Tensor) -> tf.Tensor:
  """uint8 `[F, Gh, Gw, 9]`: the stored (square-root companded) HOG maps of `F` frames."""
  return tf.reshape(tf.io.decode_raw(hog_strings, tf.uint8), tf.stack([-1, gh, gw, schema.HOG_BINS]))


def trajectory_hog(hog_strings: tf.Tensor, hog_scales: tf.Tensor, disp: tf.Tensor, x0: tf.Tensor, y0: tf.Tensor,
                   gh: tf.Tensor, gw: tf.Tensor, grid_step: int):
  """Trajectory-aligned HOG: bilinear lookup of each frame's cell-histogram map at the tracked positions.

  Only the window of cells the positions reach is de-quantised (a crop covers about half of a 16:9 frame).

  Args:
    hog_strings: string `[Tt, L]`, the stored (raw uint8) map of frame `first_k + j`.
    hog_scales: float32 `[Tt, L]`, their de-quantisation scales.
    disp: float32 `[Tt, Py, Px, L, 2]` displacements in prep pixels of the `Py x Px` trajectories.
    x0: float32 `[Px]`, y0: float32 `[Py]`: their start positions in prep pixels.
    gh, gw: the stored maps' grid (cell centres at `g*i + g/2`).

  Returns:
    float32 `[Tt, Py, Px, L, 9]` (the layout of the targets), `HOG(p_j)` with `p_j = p_0 + sum_{i<j} disp_i`.
  """
  tt, steps = tf.shape(disp)[0], tf.shape(disp)[3]
  offsets = tf.cumsum(disp, axis=3, exclusive=True)  # [Tt, Py, Px, L, 2]: p_j - p_0.
  half = grid_step / 2
  gwf, ghf = tf.cast(gw, tf.float32), tf.cast(gh, tf.float32)
  u = tf.clip_by_value((x0[None, None, :, None] + offsets[..., 0] - half) / grid_step, 0.0, gwf - 1)
  v = tf.clip_by_value((y0[None, :, None, None] + offsets[..., 1] - half) / grid_step, 0.0, ghf - 1)
  u0 = tf.minimum(tf.floor(u), tf.maximum(gwf - 2, 0))
  v0 = tf.minimum(tf.floor(v), tf.maximum(ghf - 2, 0))
  wu, wv = (u - u0)[..., None], (v - v0)[..., None]
  u0, v0 = tf.cast(u0, tf.int32), tf.cast(v0, tf.int32)
  # The window [vlo, vhi] x [ulo, uhi] of cells the lookup touches.
  ulo, vlo = tf.reduce_min(u0), tf.reduce_min(v0)
  uhi, vhi = tf.minimum(tf.reduce_max(u0) + 1, gw - 1), tf.minimum(tf.reduce_max(v0) + 1, gh - 1)
  cw, ch = uhi - ulo + 1, vhi - vlo + 1
  q = tf.cast(hog_codes(hog_strings, gh, gw)[:, vlo:vhi + 1, ulo:uhi + 1], tf.float32)
  maps = tf.reshape(q * q * (tf.reshape(hog_scales, [-1, 1, 1, 1]) * (1.0 / 255.0**2)), [-1, schema.HOG_BINS])
  frame = tf.range(tt)[:, None, None, None] * steps + tf.range(steps)[None, None, None, :]  # [Tt, 1, 1, L]
  at00 = frame * (ch * cw) + (v0 - vlo) * cw + (u0 - ulo)
  du, dv = tf.minimum(1, cw - 1), tf.minimum(1, ch - 1) * cw  # Neighbour offsets (0 on a one-cell-wide map).
  g00, g01 = tf.gather(maps, at00), tf.gather(maps, at00 + du)
  g10, g11 = tf.gather(maps, at00 + dv), tf.gather(maps, at00 + dv + du)
  top = g00 + (g01 - g00) * wu
  bottom = g10 + (g11 - g10) * wu
  return top + (bottom - top) * wv


def multiscale_crop_params(height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor, *, scales, max_distort: int,
                           res: int, random: bool = True):
  """Reference `GroupMultiScaleCrop`: side lengths from `scales` of the short side, one of 13 lattice offsets.

  Returns:
    (offset_y, offset_x, crop_h, crop_w) int32 scalars in prep pixels.
  """
  height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
  base = tf.cast(tf.minimum(height, width), tf.float32)
  sizes = tf.cast(base * tf.constant(scales, tf.float32), tf.int32)
  sizes = tf.where(tf.abs(sizes - res) < 3, res, sizes)  # The reference snaps near-`res` sides to `res`.
  sizes = tf.minimum(sizes, tf.minimum(height, width))
  pairs = [(i, j) for i in range(len(scales)) for j in range(len(scales)) if abs(i - j) <= max_distort]
  if not random:  # Centre crop of the full short side.
    side = tf.minimum(height, width)
    return (height - side) // 2, (width - side) // 2, side, side
  seed_pair, seed_offset = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  k = tf.random.stateless_uniform([], seed_pair, 0, len(pairs), dtype=tf.int32)
  pair = tf.gather(tf.constant(pairs, tf.int32), k)
  crop_h, crop_w = tf.gather(sizes, pair[0]), tf.gather(sizes, pair[1])
  o = tf.gather(tf.constant(_CROP_OFFSETS, tf.int32),
                tf.random.stateless_uniform([], seed_offset, 0, len(_CROP_OFFSETS), dtype=tf.int32))
  return o[1] * ((height - crop_h) // 4), o[0] * ((width - crop_w) // 4), crop_h, crop_w


def output_grid_sources(offset: tf.Tensor, crop: tf.Tensor, res: int, grid_step: int,
                        flip: tf.Tensor | bool = False) -> tf.Tensor:
  """Prep-pixel position `[G]` of each output grid point along one axis.

  Output grid point `i` sits at output pixel `g*i + g/2`; the crop maps output pixel `o` to prep pixel
  `offset + (o + 0.5) * crop / res - 0.5` (half-pixel centres, as `tf.image.resize`). With `flip` the output pixel is
  first mirrored (`o -> res - 1 - o`), exactly as the flipped frame.
  """
  g = res // grid_step
  out_pix = tf.range(g, dtype=tf.float32) * grid_step + grid_step / 2
  out_pix = tf.where(tf.cast(flip, tf.bool), res - 1 - out_pix, out_pix)
  return tf.cast(offset, tf.float32) + (out_pix + 0.5) * tf.cast(crop, tf.float32) / res - 0.5


def _resample_matrix(src_pix: tf.Tensor, src_cells: tf.Tensor, grid_step: int) -> tf.Tensor:
  """Bilinear weights `[G, src_cells]` from the prep grid (cell centres `g*i + g/2`) to positions `src_pix`."""
  n = tf.cast(src_cells, tf.float32)
  u = tf.clip_by_value((src_pix - grid_step / 2) / grid_step, 0.0, n - 1)
  u0 = tf.floor(u)
  a = u - u0
  u0 = tf.cast(u0, tf.int32)
  u1 = tf.minimum(u0 + 1, src_cells - 1)
  return tf.one_hot(u0, src_cells) * (1 - a)[:, None] + tf.one_hot(u1, src_cells) * a[:, None]


def crop_flip_trajectories(disp, valid, hog_strings, hog_scales, *, offset_y, offset_x, crop_h, crop_w, res: int,
                           flip, grid_step: int):
  """Applies the frames' crop (+ resize to `res`) and flip to the trajectories, then looks up their HOG.

  The output grid (`G = res // g` points per side, at the output pixels' cell centres) is mapped into the prep frame;
  each output trajectory is the bilinear blend of the stored trajectories around its start, and its HOG is looked up
  along its own path in the stored per-frame maps.

  Args:
    disp: float32 `[Tt, L, Gh, Gw, 2]` prep pixels; valid: bool `[Tt, Gh, Gw]`;
    hog_strings, hog_scales: `[Tt, L]` stored maps of frames `first_k + j` (see `trajectory_hog`), or None to skip
      the HOG lookup (a fifth of the clip's cost on CPU when the target needs no trajectory-aligned HOG).

  Returns:
    disp `[Tt, G, G, L, 2]` in output pixels (Δ scaled by res/crop, Δx negated on flip), valid `[Tt, G, G]` (AND of
    the source points with a weight above `clip_device.MIN_BLEND_WEIGHT`), hog `[Tt, G, G, L, 9]` (bins mirrored on flip; None
    without maps).
  """
  gh, gw = tf.shape(valid)[1], tf.shape(valid)[2]
  y0 = output_grid_sources(offset_y, crop_h, res, grid_step)
  x0 = output_grid_sources(offset_x, crop_w, res, grid_step, flip)
  wy, wx = _resample_matrix(y0, gh, grid_step), _resample_matrix(x0, gw, grid_step)
  # Two plain contractions (w, then h) and one transpose: ~1.5x faster than the equivalent three-operand einsum.
  disp = tf.tensordot(wy, tf.tensordot(disp, wx, [[3], [1]]), [[1], [2]])  # [y, t, l, c, x]
  disp = tf.transpose(disp, [1, 0, 4, 2, 3])  # [t, y, x, l, c]
  flip = tf.cast(flip, tf.bool)
  hog = None
  if hog_strings is not None:
    hog = trajectory_hog(hog_strings, hog_scales, disp, x0, y0, gh, gw, grid_step)
    hog = tf.cond(flip, lambda: tf.gather(hog, schema.HOG_FLIP_PERMUTATION, axis=-1), lambda: hog)
  scale = tf.stack([res / tf.cast(crop_w, tf.float32), res / tf.cast(crop_h, tf.float32)])
  sign = tf.where(flip, tf.constant([-1.0, 1.0]), tf.constant([1.0, 1.0]))
  disp = disp * (scale * sign)
  used_y, used_x = (tf.cast(w > clip_device.MIN_BLEND_WEIGHT, tf.float32) for w in (wy, wx))
  invalid = tf.einsum('yh,thw,xw->tyx', used_y, 1.0 - tf.cast(valid, tf.float32), used_x)
  return disp, invalid < 0.5, hog


def _resize_uint8(frames: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
  """OpenCV's bilinear resize (half-pixel centres, no antialiasing: the same sampling as `tf.image.resize`'s
  'bilinear', in 8-bit fixed point) of uint8 `[T, h, w, 3]` frames to `[T, height, width or height, 3]`; ~4x faster
  than TF's."""
  height = int(height)
  width = height if width is None else int(width)
  out = np.empty((frames.shape[0], height, width, 3), np.uint8)
  for i in range(frames.shape[0]):
    cv2.resize(frames[i], (width, height), dst=out[i], interpolation=cv2.INTER_LINEAR)
  return out


def decode_crops(jpegs: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  """uint8 `[T, crop_h, crop_w, 3]`: the same window (offset_y, offset_x, crop_h, crop_w) of each JPEG frame, decoded
  alone (integer IDCT). With a static `T` the decodes are unrolled, without a `tf.map_fn` loop's per-frame dispatch
  and TensorArray copies (on the order of 0.4 ms per 16-frame clip on one core, within this VM's noise: BENCHMARKS.md,
  2026-12-07)."""
  decode = lambda b: tf.io.decode_and_crop_jpeg(b, window, channels=3, dct_method='INTEGER_FAST')
  if jpegs.shape.rank == 1 and jpegs.shape[0] is not None:
    return tf.stack([decode(jpegs[i]) for i in range(jpegs.shape[0])])
  return tf.map_fn(decode, jpegs, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def decode_crop_frames(jpegs: tf.Tensor, *, offset_y, offset_x, crop_h, crop_w, res: int, flip) -> tf.Tensor:
  """Decodes only the given JPEG frames, crops the same window from each, resizes to `res` and flips.

  Returns:
    uint8 `[T, res, res, 3]` (normalisation happens on the device, in the jitted step: 4x less to transfer).
  """
  # The resize runs inside tf.data's parallel map: one OpenCV thread per call (OpenCV's own pool would oversubscribe the
  # cores tf.data already uses).
  cv2.setNumThreads(1)
  window = tf.stack([offset_y, offset_x, crop_h, crop_w])
  frames = decode_crops(jpegs, window)
  resize = lambda: tf.ensure_shape(tf.numpy_function(functools.partial(_resize_uint8, height=res), [frames], tf.uint8,
                                                     stateful=False), [None, res, res, 3])
  frames = tf.cond(tf.logical_and(tf.equal(crop_h, res), tf.equal(crop_w, res)), lambda: frames, resize)
  return tf.cond(tf.cast(flip, tf.bool), lambda: tf.reverse(frames, axis=[2]), lambda: frames)


# The host half of a clip assembled on the device (`data.clip_ops='device'`, `clip_device.assemble`): decode and stack.


def decode_crop_frames_raw(jpegs: tf.Tensor, *, offset_y, offset_x, crop_h, crop_w, res: int):
  """Decodes the crop window of the given JPEG frames for the on-device resize: a crop side longer than `res` is
  resized down to `res` here (OpenCV, as `decode_crop_frames`), a shorter one is left for the device; the result sits
  in the top-left corner of a zero `res x res` buffer, unflipped.

  Returns:
    uint8 `[T, res, res, 3]` and int32 `[2]`: the (height, width) the crop fills.
  """
  cv2.setNumThreads(1)
  window = tf.stack([offset_y, offset_x, crop_h, crop_w])
  frames = decode_crops(jpegs, window)
  h, w = tf.minimum(crop_h, res), tf.minimum(crop_w, res)
  shrink = lambda: tf.numpy_function(_resize_uint8, [frames, h, w], tf.uint8, stateful=False)
  frames = tf.cond(tf.logical_or(crop_h > res, crop_w > res), shrink, lambda: frames)
  # Zero padding by two concatenations (memory copies): `tf.pad` of the same buffer is 3-5x slower.
  t = tf.shape(frames)[0]
  frames = tf.concat([frames, tf.zeros(tf.stack([t, h, res - w, 3]), tf.uint8)], 2)
  frames = tf.concat([frames, tf.zeros(tf.stack([t, res - h, res, 3]), tf.uint8)], 1)
  return tf.ensure_shape(frames, [None, res, res, 3]), tf.stack([h, w])


def window_origin(offset, crop, cells, res: int, grid_step: int, flip=False):
  """First cell of the stored grid that the crop's output grid blends from (`output_grid_sources`)."""
  lo = tf.reduce_min(output_grid_sources(offset, crop, res, grid_step, flip))
  u = tf.clip_by_value((lo - grid_step / 2) / grid_step, 0.0, tf.cast(cells, tf.float32) - 1)
  return tf.cast(tf.floor(u), tf.int32)


def _window(x, origin_y, origin_x, size: int, gh, gw, axis: int):
  """`size x size` cells of `x` from (origin_y, origin_x) along `axis, axis + 1`; indices past the grid repeat its
  edge (so a lookup clamped to the window edge there equals one clamped to the grid edge)."""
  rows = tf.clip_by_value(origin_y + tf.range(size), 0, gh - 1)
  cols = tf.clip_by_value(origin_x + tf.range(size), 0, gw - 1)
  shape = tf.shape(x)
  flat = tf.reshape(x, tf.concat([shape[:axis], [-1], shape[axis + 2:]], 0))  # One gather of the window's cells.
  out = tf.gather(flat, tf.reshape(rows[:, None] * gw + cols[None, :], [-1]), axis=axis)
  return tf.reshape(out, tf.concat([shape[:axis], [size, size], shape[axis + 2:]], 0))


def trajectory_window(disp_strings, inside_strings, gh, gw, stored_len, traj_len: int, origin_y, origin_x,
                      size: int):
  """The stored trajectories of a `size x size` window of the prep grid, still quantised.

  Returns:
    int8 `[Tt, L, size, size, 2]` (`traj_len` steps, DISP_UNITS_PER_PX per px) and bool `[Tt, size, size]`
    (inside the frame for all `traj_len` steps).
  """
  raw, inside = stored_trajectories(disp_strings, inside_strings, gh, gw, stored_len, traj_len)
  return (_window(raw, origin_y, origin_x, size, gh, gw, 2),
          _window(inside, origin_y, origin_x, size, gh, gw, 1) >= traj_len)


def hog_window(hog_strings, gh, gw, origin_y, origin_x, size: int):
  """uint8 `[F, size, size, 9]`: a window of the stored (sqrt-quantised) HOG maps of `F` frames."""
  return map_window(hog_strings, gh, gw, origin_y, origin_x, size, schema.HOG_BINS)


def map_window(map_strings, gh, gw, origin_y, origin_x, size: int, channels: int, dtype=tf.uint8, zlib: bool = False):
  """`[F, size, size, channels]` of `dtype`: a window of `F` stored per-frame maps (the raw HOG map, the zlib
  flow-derived maps: `schema`), still quantised."""
  if zlib:
    map_strings = tf.io.decode_compressed(map_strings, 'ZLIB')
  codes = tf.reshape(tf.io.decode_raw(map_strings, dtype), tf.stack([-1, gh, gw, channels]))
  return _window(codes, origin_y, origin_x, size, gh, gw, 1)
