"""The arithmetic half of a pretraining clip, run on the accelerator inside the jitted step (docs/design.md §3.4).

The host (`data/pretraining.py`, `data.clip_ops='device'`) only reads, decodes and stacks: per clip the decoded crop
of its 16 frames, the stored (quantised) trajectories and HOG maps of a fixed window of cells around the crop, and the
crop box and flip. `assemble` turns that into the batch the targets read, as the host-only path
(`data.clip_ops='host'`, `clip_ops.crop_flip_trajectories`) computes it, up to float rounding:
  * the crop's resize to `res` (bilinear, half-pixel centres, edge clamp: the sampling of OpenCV and `tf.image.resize`)
    as two small matrix products per frame, and the flip as the reversed column weights;
  * the trajectories resampled from the stored grid to the output grid (bilinear blend of the stored trajectories
    around each output point) and their validity;
  * the trajectory-aligned HOG: the stored per-frame cell maps looked up bilinearly along each output trajectory.

Where the two paths may differ: a crop side longer than `res` is resized down on the host before the device resizes
the other side (bilinear is separable: the same result up to the 8-bit rounding in between, <= 1 level); and the HOG
window reaches `hog_margin` cells beyond the crop, so a trajectory that leaves the crop by more than that reads the HOG
at the window's edge instead of at its position (the host-only path reads the whole frame). `bench/input_pipeline.py`
and `tests/clip_device_test.py` measure both.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from m3video_jax.data import schema

# Host-to-device keys of a clip assembled on the device (`pretraining.make_clip_fn` with `ClipLayout.on_device`).
RAW_KEYS = ('frames', 'frame_size', 'crop', 'flip', 'grid_size', 'traj_raw', 'traj_ok', 'traj_origin')
RAW_HOG_KEYS = ('hog_raw', 'hog_scale', 'hog_origin')
# A stored point counts for an output point's validity when its blend weight exceeds this (both paths): an output point
# that hits a stored one exactly blends nothing from its neighbour, whatever the float rounding of its position.
MIN_BLEND_WEIGHT = 1e-3
# Stored per-frame maps a target reads at the output grid's cells (not along trajectories): data prep's HOG map (the
# dense HOG target) and the flow-derived maps. Sent by both paths as windows (`<name>_map_raw`, `<name>_map_scale`,
# `map_origin`, with `crop`, `flip` and `grid_size`) and resampled in the jitted step by `assemble` into
# `map_<name>` float32 `[Tt, G, G, F, C]` (F = `len(ClipLayout.map_offsets)` frames per tubelet).
STORED_MAPS = ('hog', 'hof', 'mbh', 'flow')
MAP_CHANNELS = {'hog': schema.HOG_BINS, **schema.MOTION_MAP_CHANNELS}
MAP_FLIPS = {'hog': schema.HOG_FLIP_PERMUTATION, **schema.MOTION_MAP_FLIPS}
MAP_GEOMETRY_KEYS = ('crop', 'flip', 'grid_size', 'map_origin')


def map_raw_keys(name: str) -> tuple[str, ...]:
  """The host-to-device keys of one stored map (`flow` is int8 quarter px, without a scale)."""
  return (f'{name}_map_raw',) if name == 'flow' else (f'{name}_map_raw', f'{name}_map_scale')


# What a target config (`m3video_jax.targets`, docs/design.md §3.5) reads besides the clip, defined here once for the
# input pipeline and the targets (which import them).


def target_components(target) -> tuple[str, ...]:
  """The components of `target.kind`, in order: `'hog+mbh'` -> `('hog', 'mbh')`."""
  return tuple(str(target.kind).split('+'))


def dense_hog(target) -> bool:
  """Whether the `hog` part is data prep's HOG maps of every raw frame (`interpolate=True`) rather than the static
  HOG of one input frame."""
  return target.get('interpolate', None) is True


def sparse_trajectories(target) -> bool:
  """Whether the trajectory parts take L steps at the input stride (`interpolate=False`) rather than L raw steps."""
  return target.get('interpolate', None) is False and 'trajectory' in target_components(target)


def map_offsets(target, frame_stride: int, tubelet: int) -> tuple[int, ...]:
  """Frames of a stored-map part, as offsets from each tubelet's first frame: every raw frame of the tubelet's window
  `tubelet * frame_stride`, or only the frames the model sees with `target.interpolate=False`."""
  window = tubelet * frame_stride
  return tuple(range(0, window, frame_stride)) if target.get('interpolate', None) is False else tuple(range(window))


def target_maps(target, frame_stride: int, tubelet: int) -> tuple[tuple[str, ...], tuple[int, ...], int]:
  """`(maps, offsets, steps)`: the stored maps to send (`STORED_MAPS` order; 'hog' = the dense HOG part), their
  `map_offsets` (() without maps), and the trajectory steps to read (`traj_len`, times `frame_stride` for
  `sparse_trajectories`)."""
  parts = target_components(target)
  maps = tuple(m for m in STORED_MAPS if m in parts and (m != 'hog' or dense_hog(target)))
  offsets = map_offsets(target, frame_stride, tubelet) if maps else ()
  return maps, offsets, target.traj_len * (frame_stride if sparse_trajectories(target) else 1)


@dataclasses.dataclass(frozen=True)
class ClipLayout:
  """Static shapes of a pretraining clip and of the windows the host sends for its on-device assembly."""
  num_frames: int
  frame_stride: int
  tubelet: int
  res: int
  traj_len: int
  with_hog: bool = True
  on_device: bool = False  # True: the host sends raw parts (`RAW_KEYS`), `assemble` finishes them on the device.
  prep_short_side: int = 256  # The longest crop side in prep px (data prep --short_side): sizes the windows.
  hog_margin: int = 4  # Cells of HOG map sent beyond the trajectory window on every side.
  grid_step: int = schema.GRID_STEP
  maps: tuple[str, ...] = ()  # Stored maps the target reads at the output cells (`STORED_MAPS`), sent by both paths.
  map_offsets: tuple[int, ...] = ()  # Their frames: these offsets from each tubelet's first frame.

  @classmethod
  def from_config(cls, config) -> 'ClipLayout':
    d, t = config.data, config.target
    pt = config.model.patch_size[0]
    maps, offsets, steps = target_maps(t, d.frame_stride, pt)
    return cls(num_frames=d.num_frames, frame_stride=d.frame_stride, tubelet=pt, res=d.res, traj_len=steps,
               with_hog='trajectory' in target_components(t) and t.shape, maps=maps, map_offsets=offsets,
               on_device=finishes_on_device(d.get('clip_ops', 'host')),
               # Demo configs prepare their synthetic videos at native size (prep_short_side 0).
               prep_short_side=d.get('prep_short_side', 256) or d.get('synthetic_size', 0),
               hog_margin=d.get('hog_margin_cells', 4))

  @property
  def tubelets(self) -> int:
    return self.num_frames // self.tubelet

  @property
  def grid(self) -> int:
    return self.res // self.grid_step

  @property
  def traj_window(self) -> int:
    """Cells per side of the stored-trajectory window: every stored point a crop's output grid blends from (a crop
    side of at most `prep_short_side` px spans at most that / 8 cells, plus the bilinear neighbour and rounding)."""
    return -(-self.prep_short_side // self.grid_step) + 3

  @property
  def hog_window(self) -> int:
    return self.traj_window + 2 * self.hog_margin

  @property
  def tubelet_spacing(self) -> int:
    return self.tubelet * self.frame_stride

  @property
  def hog_contiguous(self) -> bool:
    """Whether the HOG frames go as one run of consecutive frames (tubelets' windows overlap) or per tubelet."""
    return (self.tubelets - 1) * self.tubelet_spacing + self.traj_len <= self.tubelets * self.traj_len

  @property
  def hog_frames(self) -> int:
    """HOG maps sent per clip."""
    if self.hog_contiguous:
      return (self.tubelets - 1) * self.tubelet_spacing + self.traj_len
    return self.tubelets * self.traj_len

  def assembly_flops(self) -> float:
    """Matmul FLOPs of `assemble` per clip (the frames' two resize products, the trajectories' two resampling
    products; the HOG lookup is gathers and a few lerps). 0 when the host finishes the clips."""
    if not self.on_device:
      return 0.0
    t, r, tt, g, steps, k = self.num_frames, self.res, self.tubelets, self.grid, self.traj_len, self.traj_window
    frames = 2 * (2.0 * t * r * r * r * 3)
    trajectories = 2.0 * tt * steps * 2 * (g * k * k + g * g * k)
    return frames + trajectories

  @property
  def map_frames(self) -> int:
    """Frames of each stored map sent per clip (`map_offsets` of every tubelet)."""
    return self.tubelets * len(self.map_offsets)

  def hog_frame_index(self) -> np.ndarray:
    """int32 `[Tt, L]`: which of the sent maps holds frame `first_k + j`."""
    k, j = np.arange(self.tubelets)[:, None], np.arange(self.traj_len)[None, :]
    step = self.tubelet_spacing if self.hog_contiguous else self.traj_len
    return (k * step + j).astype(np.int32)


def finishes_on_device(clip_ops: str) -> bool:
  """`data.clip_ops` resolved: 'device' or 'host', and 'auto' = 'device' unless JAX's default backend is the CPU."""
  if clip_ops == 'auto':
    return jax.default_backend() != 'cpu'
  return clip_ops == 'device'


def grid_sources(offset, crop, res: int, grid_step: int, flip=False):
  """Prep-pixel position `[G]` of each output grid point along one axis (`clip_ops.output_grid_sources` in JAX)."""
  g = res // grid_step
  out_pix = jnp.arange(g, dtype=jnp.float32) * grid_step + grid_step / 2
  out_pix = jnp.where(flip, res - 1 - out_pix, out_pix)
  # A true division, as the host's: XLA turns `x / constant` into `x * (1 / constant)`, which moves exact grid hits.
  res_f = jax.lax.optimization_barrier(jnp.float32(res))
  return offset.astype(jnp.float32) + (out_pix + 0.5) * crop.astype(jnp.float32) / res_f - 0.5


def _lerp_weights(u, cells, origin, size: int):
  """`[N, size]` linear-interpolation weights at coordinates `u` `[N]` on a line of `cells` samples (clamped to its
  ends, the upper neighbour clamped too: edge replication), in a window of `size` samples starting at `origin`."""
  u = jnp.clip(u, 0.0, cells.astype(jnp.float32) - 1)
  u0 = jnp.floor(u)
  a = u - u0
  u0 = u0.astype(jnp.int32)
  u1 = jnp.minimum(u0 + 1, cells - 1)
  return (jax.nn.one_hot(u0 - origin, size, dtype=jnp.float32) * (1 - a)[:, None]
          + jax.nn.one_hot(u1 - origin, size, dtype=jnp.float32) * a[:, None])


def _blend_weights(pos, cells, origin, size: int, grid_step: int):
  """Bilinear weights `[G, size]` from a grid of `cells` cell centres (`g*i + g/2`) to positions `pos` (prep px), in
  the coordinates of a window of `size` cells starting at cell `origin`."""
  return _lerp_weights((pos - grid_step / 2) / grid_step, cells, origin, size)


def _resize_weights(src_size, res: int, flip=False):
  """`[res, res]` bilinear weights (half-pixel centres, edge clamp) from the first `src_size` of `res` buffer pixels
  to `res` output pixels; with `flip` the output order is reversed."""
  o = jnp.arange(res, dtype=jnp.float32)
  o = jnp.where(flip, res - 1 - o, o)
  return _lerp_weights((o + 0.5) * src_size.astype(jnp.float32) / res - 0.5, src_size, 0, res)


def _frames(clip, layout: ClipLayout):
  """uint8 `[T, res, res, 3]`: the crop in the top-left `frame_size` of the buffer, resized to `res` and flipped."""
  res = layout.res
  wy = _resize_weights(clip['frame_size'][0], res)
  wx = _resize_weights(clip['frame_size'][1], res, clip['flip'])
  x = clip['frames'].astype(jnp.float32)
  # Exact on CPU; on TPU `HIGH` (3 bf16 passes) keeps the 8-bit levels (one bf16 pass could move a pixel by a level).
  x = jnp.einsum('yh,thwc->tywc', wy, x, precision=jax.lax.Precision.HIGH)
  x = jnp.einsum('tywc,xw->tyxc', x, wx, precision=jax.lax.Precision.HIGH)
  return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def _trajectories(clip, layout: ClipLayout):
  """disp `[Tt, G, G, L, 2]` (model px), valid `[Tt, G, G]`, hog `[Tt, G, G, L, 9]` or None, quantum `[]`."""
  oy, ox, ch, cw = clip['crop'][0], clip['crop'][1], clip['crop'][2], clip['crop'][3]
  flip = clip['flip']
  gh, gw = clip['grid_size'][0], clip['grid_size'][1]
  g, k, res = layout.grid_step, layout.traj_window, layout.res
  y0 = grid_sources(oy, ch, res, g)
  x0 = grid_sources(ox, cw, res, g, flip)
  wy = _blend_weights(y0, gh, clip['traj_origin'][0], k, g)
  wx = _blend_weights(x0, gw, clip['traj_origin'][1], k, g)
  disp = clip['traj_raw'].astype(jnp.float32) * (1.0 / schema.DISP_UNITS_PER_PX)  # [Tt, L, K, K, 2] prep px
  disp = jnp.einsum('yh,tlhwc->tylwc', wy, disp, precision=jax.lax.Precision.HIGHEST)
  disp = jnp.einsum('tylwc,xw->tyxlc', disp, wx, precision=jax.lax.Precision.HIGHEST)  # [Tt, G, G, L, 2]
  bad = 1.0 - clip['traj_ok'].astype(jnp.float32)
  used_y, used_x = (wy > MIN_BLEND_WEIGHT).astype(jnp.float32), (wx > MIN_BLEND_WEIGHT).astype(jnp.float32)
  invalid = jnp.einsum('yh,thw,xw->tyx', used_y, bad, used_x,
                       precision=jax.lax.Precision.HIGHEST)
  hog = _trajectory_hog(clip, disp, x0, y0, layout) if layout.with_hog else None
  if hog is not None:
    hog = jnp.where(flip, hog[..., jnp.asarray(schema.HOG_FLIP_PERMUTATION)], hog)
  scale = jnp.stack([res / cw.astype(jnp.float32), res / ch.astype(jnp.float32)])
  sign = jnp.where(flip, jnp.asarray([-1.0, 1.0]), jnp.asarray([1.0, 1.0]))
  quantum = res / jnp.minimum(ch, cw).astype(jnp.float32) / schema.DISP_UNITS_PER_PX
  return disp * (scale * sign), invalid < 0.5, hog, quantum


def _trajectory_hog(clip, disp, x0, y0, layout: ClipLayout):
  """`HOG(p_j)` `[Tt, G, G, L, 9]` at the tracked positions `p_j = p_0 + sum_{i<j} disp_i` (prep px), bilinear in the
  sent window of each frame's cell map (`clip_ops.trajectory_hog` on the host)."""
  g, s = layout.grid_step, layout.hog_window
  gh, gw = clip['grid_size'][0].astype(jnp.float32), clip['grid_size'][1].astype(jnp.float32)
  origin = clip['hog_origin'].astype(jnp.float32)
  offsets = jnp.cumsum(disp, axis=3) - disp  # p_j - p_0
  u = jnp.clip((x0[None, None, :, None] + offsets[..., 0] - g / 2) / g, 0.0, gw - 1) - origin[1]
  v = jnp.clip((y0[None, :, None, None] + offsets[..., 1] - g / 2) / g, 0.0, gh - 1) - origin[0]
  u, v = jnp.clip(u, 0.0, s - 1), jnp.clip(v, 0.0, s - 1)
  u0, v0 = jnp.minimum(jnp.floor(u), s - 2), jnp.minimum(jnp.floor(v), s - 2)
  wu, wv = (u - u0)[..., None], (v - v0)[..., None]
  q = clip['hog_raw'].astype(jnp.float32)  # [NH, S, S, 9], sqrt-quantised (schema: HOG_MAP)
  maps = (q * q * (clip['hog_scale'][:, None, None, None] * (1.0 / 255.0**2))).reshape(-1, schema.HOG_BINS)
  frame = jnp.asarray(layout.hog_frame_index())[:, None, None, :]  # [Tt, 1, 1, L]
  at00 = frame * (s * s) + v0.astype(jnp.int32) * s + u0.astype(jnp.int32)
  g00, g01, g10, g11 = maps[at00], maps[at00 + 1], maps[at00 + s], maps[at00 + s + 1]
  top = g00 + (g01 - g00) * wu
  bottom = g10 + (g11 - g10) * wu
  return top + (bottom - top) * wv


def _maps(clip, layout: ClipLayout) -> dict:
  """`map_<name>` float32 `[Tt, G, G, F, C]`: each sent map window resampled bilinearly to the output grid's cells (the
  trajectories' start points), flipped with the frames (bins mirrored, flow's dx negated) and, for flow, in model px."""
  oy, ox, ch, cw = clip['crop'][0], clip['crop'][1], clip['crop'][2], clip['crop'][3]
  flip = clip['flip']
  g, k, res = layout.grid_step, layout.traj_window, layout.res
  wy = _blend_weights(grid_sources(oy, ch, res, g), clip['grid_size'][0], clip['map_origin'][0], k, g)
  wx = _blend_weights(grid_sources(ox, cw, res, g, flip), clip['grid_size'][1], clip['map_origin'][1], k, g)
  out = {}
  for name in layout.maps:
    q = clip[f'{name}_map_raw'].astype(jnp.float32)  # [Tt * F, k, k, C]
    if name == 'flow':
      values = q * (1.0 / schema.DISP_UNITS_PER_PX)
    else:  # Square-root companded as the HOG map (schema).
      values = q * q * (clip[f'{name}_map_scale'][:, None, None, None] * (1.0 / 255.0**2))
    values = jnp.einsum('yh,fhwc->fywc', wy, values, precision=jax.lax.Precision.HIGHEST)
    values = jnp.einsum('fywc,xw->fyxc', values, wx, precision=jax.lax.Precision.HIGHEST)  # [Tt * F, G, G, C]
    if name == 'flow':
      scale = jnp.stack([res / cw.astype(jnp.float32), res / ch.astype(jnp.float32)])
      values = values * scale * jnp.where(flip, jnp.asarray(schema.FLOW_FLIP_SIGN), 1.0)
    else:
      values = jnp.where(flip, values[..., jnp.asarray(MAP_FLIPS[name])], values)
    grid = values.shape[1]
    values = values.reshape(layout.tubelets, len(layout.map_offsets), grid, grid, -1)
    out[f'map_{name}'] = values.transpose(0, 2, 3, 1, 4)
  return out


def _assemble_maps(batch: dict, layout: ClipLayout) -> dict:
  keys = tuple(k for name in layout.maps for k in map_raw_keys(name))
  maps = jax.vmap(lambda clip: _maps(clip, layout))({k: batch[k] for k in keys + MAP_GEOMETRY_KEYS})
  drop = set(keys) | {'map_origin'}
  if not is_raw(batch):  # The host-only path sent the crop, flip and grid size for the maps alone.
    drop |= set(MAP_GEOMETRY_KEYS)
  return {**{k: v for k, v in batch.items() if k not in drop}, **maps}


def is_raw(batch) -> bool:
  """Whether a batch holds clips still to be assembled (`assemble`)."""
  return 'traj_raw' in batch


def assemble(batch: dict, layout: ClipLayout) -> dict:
  """The batch the targets and the model read (`video`, `traj_disp`, `traj_valid`, `traj_hog`, `traj_quantum`; the
  other keys pass through) from the host's raw clip parts (`RAW_KEYS`, `RAW_HOG_KEYS`). A batch already assembled
  (the host-only path) is returned as it is, but for its stored maps (`ClipLayout.maps`: `map_<name>`, resampled here
  on either path). Traceable: call it inside the jitted step."""
  if layout.maps and f'{layout.maps[0]}_map_raw' in batch:
    batch = _assemble_maps(batch, layout)
  if not is_raw(batch):
    return batch

  def one(clip):
    disp, valid, hog, quantum = _trajectories(clip, layout)
    out = {'video': _frames(clip, layout), 'traj_disp': disp, 'traj_valid': valid, 'traj_quantum': quantum}
    if hog is not None:
      out['traj_hog'] = hog
    return out

  raw = {k: batch[k] for k in RAW_KEYS + (RAW_HOG_KEYS if layout.with_hog else ())}
  rest = {k: v for k, v in batch.items() if k not in RAW_KEYS + RAW_HOG_KEYS}
  return {**rest, **jax.vmap(one)(raw)}


def example_maps(layout: ClipLayout, batch_size: int) -> dict[str, np.ndarray]:
  """Zero stored-map windows and their geometry, shaped as both paths send them (`ClipLayout.maps`; {} without)."""
  if not layout.maps:
    return {}
  b, k, res, f = batch_size, layout.traj_window, layout.res, layout.map_frames
  side = layout.prep_short_side
  out = {'crop': np.tile(np.asarray([[0, 0, res, res]], np.int32), (b, 1)), 'flip': np.zeros((b,), bool),
         'grid_size': np.tile(np.asarray([[side // layout.grid_step, side * 16 // 9 // layout.grid_step]], np.int32),
                              (b, 1)),
         'map_origin': np.zeros((b, 2), np.int32)}
  for name in layout.maps:
    out[f'{name}_map_raw'] = np.zeros((b, f, k, k, MAP_CHANNELS[name]), np.int8 if name == 'flow' else np.uint8)
    if name != 'flow':
      out[f'{name}_map_scale'] = np.ones((b, f), np.float32)
  return out


def example_raw(layout: ClipLayout, batch_size: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
  """A raw batch (with labels) shaped as the host sends it: zeros, or with `rng` random frames, trajectories and HOG of a
  16:9 prep frame (`prep_short_side` high) with random crops and flips (benchmarks, compile checks)."""
  b, t, res, tt, steps = batch_size, layout.num_frames, layout.res, layout.tubelets, layout.traj_len
  k, s, nh = layout.traj_window, layout.hog_window, layout.hog_frames
  side = layout.prep_short_side
  gh, gw = side // layout.grid_step, side * 16 // 9 // layout.grid_step
  out = {
      'frames': np.zeros((b, t, res, res, 3), np.uint8),
      'frame_size': np.full((b, 2), res, np.int32),
      'crop': np.tile(np.asarray([[0, 0, res, res]], np.int32), (b, 1)),
      'flip': np.zeros((b,), bool),
      'grid_size': np.tile(np.asarray([[gh, gw]], np.int32), (b, 1)),
      'traj_raw': np.zeros((b, tt, steps, k, k, 2), np.int8),
      'traj_ok': np.zeros((b, tt, k, k), bool),
      'traj_origin': np.zeros((b, 2), np.int32),
      'label': np.zeros((b,), np.int32),
  }
  if layout.with_hog:
    out.update(hog_raw=np.zeros((b, nh, s, s, schema.HOG_BINS), np.uint8), hog_scale=np.ones((b, nh), np.float32),
               hog_origin=np.full((b, 2), -layout.hog_margin, np.int32))
  out.update({k: v for k, v in example_maps(layout, b).items() if k not in out})
  if rng is not None:
    sizes = [min(int(side * sc), side) for sc in (1.0, 0.875, 0.75, 0.66)]
    for i in range(b):
      ch, cw = rng.choice(sizes), rng.choice(sizes)
      oy, ox = rng.integers(0, side - ch + 1), rng.integers(0, side * 16 // 9 - cw + 1)
      out['crop'][i] = (oy, ox, ch, cw)
      out['frame_size'][i] = (min(ch, res), min(cw, res))
      out['traj_origin'][i] = (max(oy // layout.grid_step - 1, 0), max(ox // layout.grid_step - 1, 0))
      if layout.with_hog:
        out['hog_origin'][i] = out['traj_origin'][i] - layout.hog_margin
      if layout.maps:
        out['map_origin'][i] = out['traj_origin'][i]
    out['flip'] = rng.random(b) < 0.5
    out['frames'] = rng.integers(0, 256, out['frames'].shape, dtype=np.uint8)
    out['traj_raw'] = rng.integers(-8, 9, out['traj_raw'].shape, dtype=np.int8)
    out['traj_ok'] = rng.random(out['traj_ok'].shape) < 0.9
    if layout.with_hog:
      out['hog_raw'] = rng.integers(0, 256, out['hog_raw'].shape, dtype=np.uint8)
    for name in layout.maps:
      key = f'{name}_map_raw'
      out[key] = (rng.integers(-40, 41, out[key].shape, dtype=np.int8) if name == 'flow'
                  else rng.integers(0, 256, out[key].shape, dtype=np.uint8))
  return out
