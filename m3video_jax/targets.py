"""Reconstruction targets for pretraining, computed in JAX inside the jitted step from the batch.

`compute(batch, cfg)` returns `(target [B, N, D], weight [B, N, D])`, float32, for **all** tokens (the loss keeps the
hidden ones); `weight` is the per-element 0/1 out-of-frame mask (all ones for `pixel` and `hog`). `D` is the sum of
`part_dims(cfg)`, whose keys name the parts in the order they are concatenated.

Batch inputs (B clips, T frames, H x W model resolution, tubelet `(pt, ph, pw)` = `(2, 16, 16)`, trajectory grid step
8 px so a token holds `K = (ph / 8) * (pw / 8) = 4` grid points; `Ls` = stored trajectory length >= `cfg.traj_len`):
  video       float32 `[B, T, H, W, 3]`, ImageNet-normalised RGB.
  traj_disp   float32 `[B, T/pt, H/8, W/8, Ls, 2]`: trajectories starting at each tubelet's first frame (raw stride-1
              video), `dp_j = p_{j+1} - p_j` as `(dx, dy)` in model-input pixels.
  traj_valid  bool `[B, T/pt, H/8, W/8]`: the trajectory stayed inside the frame.
  traj_hog    float32 `[B, T/pt, H/8, W/8, Ls, 9]`: trajectory-aligned HOG, `HOG(p_j)`, j = 0 .. Ls-1.
  traj_quantum float32 `[B]` (optional): the storage quantum of `traj_disp` in model-input px (1/4 prep px scaled by
              the crop's resize); absent = `schema`'s 1/4 px unscaled. Only `moving_tokens` uses it.
Grid point `(gy, gx)` lies in token `(gy // 2, gx // 2)` (in its tubelet's time slot) as point
`k = (gy % 2) * 2 + gx % 2`, i.e. `k = 2 * row + col` of the 2 x 2 points of the patch. Only the first
`L = cfg.traj_len` steps are used (the first `L * frame_stride` with `interpolate=False`, see below).

Target layouts (index within a token's target vector; `L = traj_len`, `K = 4`):

* `trajectory` (paper-faithful, docs/design.md §3.3): parts `position` then `shape` (each can be switched off).
    position  `K*L*2` (48 for L=6): index `k*2L + j*2 + c`, `c` = 0 for dx, 1 for dy.
    shape     `K*L*9` (216 for L=6): index `k*9L + j*9 + b`, `b` = HOG bin.
  Each part is normalised per token by `position_norm` / `shape_norm` (`x` = the part's raw values, statistics over
  the token's valid trajectories with `norm_valid_only`, population variance):
    `joint`          `(x - mean) / sqrt(var + eps)` over all the part's values of the token (paper §4.1.3, Table 5:
                     "mean and variance over all K = 4 trajectories"). Default for both parts.
    `per_component`  position only: the same, separately for the `K*L` dx and the `K*L` dy values.
    `per_step`       position only: separately for every `(step j, component c)` over the K points (the axes of the
                     released code's PatchStd, with this module's population variance and eps inside the root).
    `none`           `x / position_scale` (position, px) or `x` (shape).
  `position_eps` is in model-input px² (the variance of Δp), `shape_eps` in HOG units²; a tiny eps turns sub-pixel
  background noise into unit-variance targets (docs/results.md).
  `noise_floor` acts on the position part of tokens that do not move (`moving_tokens`: no valid Δp component above
  1.5 storage quanta): `zero_weight` drops those elements from the loss, `zero_target` makes their target 0.
  Weight: element of trajectory `k` = `traj_valid` of that trajectory (both parts).
* `trajectory_reference` (the released code's target, docs/design.md §3.5; use with `traj_len=4`):
    position  `2*L*K` (32 for L=4): `dp / 20`, index `c*(L*K) + j*K + k`; with `position_norm='per_step'` (what
              `target=trajectory_reference` sets) every `(c, j)` is normalised over its K points:
              `(x - mean) / (std + norm_eps)` with the unbiased std (reference PatchStd); `none` leaves `dp / 20`.
              Weight: 1 on every element of a token if **any** of its K trajectories is valid, else 0.
    shape     `3*9*K` = 108: static RGB HOG of frame `hog_frame` (default 1, the 2nd) of the tubelet, computed on the
              normalised input, index `(colour*9 + b)*K + k` (colour R, G, B; `k = 2 * cell_row + cell_col`), no
              normalisation; weight 1.
* `pixel` (VideoMAE): part `pixel`, `pt*ph*pw*3` (1536): the un-normalised [0, 1] RGB tubelet, index
  `((dt*ph + dy)*pw + dx)*3 + colour`; with `pixel_norm`, each colour is normalised over the tubelet's `pt*ph*pw`
  pixels as VideoMAE: `(x - mean) / (std + norm_eps)`, unbiased std. Weight 1.
* `hog` (MaskFeat-style baseline): part `hog`, 108: as the reference shape part above (HOG of frame `hog_frame` of each
  tubelet, RGB, on the normalised input, index `(colour*9 + b)*K + k`); with `hog_norm`, normalised over the 108 values
  like a trajectory part. Weight 1. With `interpolate=True` (paper Table 2, "HOG, interpolation"): data prep's
  grayscale HOG cell maps of every raw frame of the tubelet's window instead (a stored map, below), `K*F*9`.
* `flow`, `hof`, `mbh` (paper Table 1's short-term motion baselines; records prepared with data prep `--motion_maps`):
  the stored per-frame-pair maps (`schema.MOTION_MAPS`: mean flow (dx, dy) in model px, HOF 8 orientations + zero bin,
  MBHx + MBHy 9 bins each) at the token's K cells, read from `batch['map_<name>']` `[B, T/pt, H/8, W/8, F, C]`:
  `K*F*C` values, index `k*F*C + f*C + c`; normalised per token by `<name>_norm` ('joint' over all its values, eps
  `<name>_eps`, or 'none'). Weight 1. `F` = frames per tubelet: every raw frame of its window (`pt * frame_stride`,
  the default) or, with `interpolate=False`, only the `pt` frames the model sees.

Combinations: `kind` joins components with '+' (e.g. `hog+mbh`, `hog+trajectory` with `position=True, shape=False` =
the paper's "HOG + Traj. w/o shape", `trajectory+hof+mbh` = Table 16); the parts are concatenated in that order and
the loss weighs every element once (or every part equally: `balance_parts`).

`interpolate` (paper §4.1.2, Table 2): None (default) = each part at the paper's main setting: trajectories over L
raw (stride-1) steps, the flow-derived maps of every raw frame of the tubelet, HOG of one input frame (MaskFeat).
True = every part dense (HOG from the stored maps of every raw frame); False = every part only at the frames the model
sees: trajectories of L steps at the input stride `s = data.frame_stride` (`p_j` at frames `f + j*s`: the stored
stride-1 displacements summed in groups of s, the shape part at those frames, valid if the `L*s` raw steps stay inside;
the records must store >= L*s steps), maps of the `pt` input frames, HOG as the default.

`density` (paper Table 4, trajectory parts only): 'dense' = the K = 4 trajectories of every token (the paper's grid);
'sparse_mean' = one trajectory per token, the mean of its valid trajectories (position and shape values averaged);
'sparse_max' = one trajectory per token, its valid trajectory with the longest path (sum of |dp_j|), both parts of
that trajectory. The paper does not define its two sparse variants; this is the reading docs/design.md documents.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from m3video_jax import cli
from m3video_jax import config_lib
from m3video_jax import hog
from m3video_jax import masking
from m3video_jax.data import clip_device
from m3video_jax.data import schema
from m3video_jax.models import vit

# Components of `target.kind` (joined with '+'); `MAP_PARTS` read stored flow-derived maps.
KINDS = ('trajectory', 'trajectory_reference', 'pixel', 'hog', 'flow', 'hof', 'mbh')
MAP_PARTS = ('flow', 'hof', 'mbh')
MAP_NORMS = ('joint', 'none')
DENSITIES = ('dense', 'sparse_mean', 'sparse_max')
POSITION_NORMS = ('joint', 'per_component', 'per_step', 'none')
SHAPE_NORMS = ('joint', 'none')
NOISE_FLOORS = ('none', 'zero_weight', 'zero_target')
GRID_STEP = schema.GRID_STEP
HOG_BINS = schema.HOG_BINS
NUM_COLOURS = 3
REFERENCE_DISP_SCALE = 20.0  # The reference divides displacements by the flow bound (20 px) before PatchStd.
IMAGENET_MEAN, IMAGENET_STD = schema.IMAGENET_MEAN, schema.IMAGENET_STD

Batch = dict[str, jax.Array]


# Every target field with its default: a config building block, so it lives with the others in `config_lib`.
default_config = config_lib.target_defaults


# The target semantics the input pipeline needs too (which parts, which frames), defined once in `clip_device`.
components = clip_device.target_components
dense_hog = clip_device.dense_hog
sparse_trajectories = clip_device.sparse_trajectories


def map_frames(cfg: ml_collections.ConfigDict, tubelet: int, frame_stride: int) -> int:
  """Frames per tubelet of a stored-map part: every raw frame of its window, or the `tubelet` input frames."""
  return len(clip_device.map_offsets(cfg, frame_stride, tubelet))


def _describe_component(cfg: ml_collections.ConfigDict, comp: str) -> str:
  if comp == 'pixel':
    return 'pixel (VideoMAE normalised pixels)'
  if comp == 'hog':
    return ('hog (stored HOG maps of every raw frame)' if dense_hog(cfg) else 'hog (MaskFeat tubelet HOG)') + (
        ', patch norm' if cfg.hog_norm else '')
  if comp in MAP_PARTS:
    frames = 'input frames only' if cfg.get('interpolate', None) is False else 'every raw frame'
    norm = 'joint patch norm' if cfg[f'{comp}_norm'] == 'joint' else 'raw'
    return f'{comp} ({frames}, {norm})'
  single = ml_collections.ConfigDict(cfg.to_dict())
  single.kind = comp
  return describe(single)


def describe(cfg: ml_collections.ConfigDict) -> str:
  """One line saying what the target is, for logs: kind, parts, normalisation, part weighting."""
  comps = components(cfg)
  if len(comps) > 1 or comps[0] in MAP_PARTS or (comps[0] == 'hog' and dense_hog(cfg)):
    weighting = ', parts weighted equally' if cfg.balance_parts else ', every element weighted once'
    return ' + '.join(_describe_component(cfg, comp) for comp in comps) + weighting
  if cfg.kind in ('pixel', 'hog'):
    return {'pixel': 'pixel (VideoMAE normalised pixels)', 'hog': 'hog (MaskFeat tubelet HOG)'}[cfg.kind]
  reference = cfg.kind == 'trajectory_reference'
  norms = {'joint': 'joint patch norm', 'per_component': 'per-component norm', 'per_step': 'per-step norm',
           'none': f'px / {REFERENCE_DISP_SCALE if reference else cfg.position_scale:g}'}
  parts = []
  if cfg.position:
    eps = '' if cfg.position_norm == 'none' else f', eps {cfg.norm_eps if reference else cfg.position_eps:g}'
    floor = f', noise floor {cfg.noise_floor}' if cfg.noise_floor != 'none' else ''
    parts.append(f'position ({norms[cfg.position_norm]}{eps}{floor})')
  if cfg.shape:
    parts.append('shape (' + ('static tubelet HOG' if reference else
                              f'trajectory HOG, {norms[cfg.shape_norm] if cfg.shape_norm == "joint" else "raw"}')
                 + ')')
  paper = (cfg.kind == 'trajectory' and cfg.position_norm == 'joint' and cfg.shape_norm == 'joint'
           and cfg.noise_floor == 'none' and not cfg.balance_parts and cfg.position and cfg.shape
           and cfg.get('interpolate', None) is None and cfg.get('density', 'dense') == 'dense')
  weighting = ', parts weighted equally' if cfg.balance_parts and len(parts) > 1 else ''
  note = (' (paper-faithful normalisation and weighting)' if paper else
          ' (a variant of the paper\'s target, docs/results.md)' if cfg.kind == 'trajectory' else '')
  extra = ''
  if sparse_trajectories(cfg):
    extra += ', at the input stride (no interpolation)'
  if cfg.get('density', 'dense') != 'dense':
    extra += f', {cfg.density} (one trajectory per token)'
  return f'{cfg.kind} L={cfg.traj_len}{extra}: {" + ".join(parts)}{weighting}{note}'


def _check(ok: bool, field: str, value: Any, expected: str) -> None:
  cli.check_config(ok, f'target.{field}', value, expected)


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Checks a target config.

  Raises:
    cli.ConfigError (`config_lib.ConfigError`): naming the first invalid field, its value and the allowed values.
  """
  comps = components(cfg)
  _check(isinstance(cfg.kind, str) and all(c in KINDS for c in comps) and len(set(comps)) == len(comps), 'kind',
         cfg.kind, f"one of {KINDS} or several joined with '+' (e.g. 'hog+mbh'), each once")
  _check(len(comps) == 1 or 'trajectory_reference' not in comps, 'kind', cfg.kind,
         "'trajectory_reference' alone (the released code's target is not combined with others)")
  _check(cfg.get('interpolate', None) in (None, True, False), 'interpolate', cfg.get('interpolate', None),
         'None (each part at the paper\'s setting), True (every part dense) or False (input frames only)')
  _check(cfg.get('density', 'dense') in DENSITIES, 'density', cfg.get('density', 'dense'), f'one of {DENSITIES}')
  for name in MAP_PARTS:
    _check(cfg.get(f'{name}_norm', 'joint') in MAP_NORMS, f'{name}_norm', cfg.get(f'{name}_norm'),
           f'one of {MAP_NORMS}')
    eps = cfg.get(f'{name}_eps', 1e-6)
    _check(isinstance(eps, float) and eps > 0, f'{name}_eps', eps, 'a float > 0')
  if 'trajectory_reference' in comps:
    _check(cfg.get('interpolate', None) is None, 'interpolate', cfg.interpolate,
           "None for target.kind='trajectory_reference' (the released code's target has one setting)")
    _check(cfg.get('density', 'dense') == 'dense', 'density', cfg.density,
           "'dense' for target.kind='trajectory_reference'")
  for name in ('position', 'shape', 'norm_valid_only', 'balance_parts', 'pixel_norm', 'hog_norm'):
    _check(isinstance(cfg[name], bool), name, cfg[name], 'True or False')
  _check(cfg.position_norm in POSITION_NORMS, 'position_norm', cfg.position_norm, f'one of {POSITION_NORMS}')
  _check(cfg.shape_norm in SHAPE_NORMS, 'shape_norm', cfg.shape_norm, f'one of {SHAPE_NORMS}')
  _check(cfg.noise_floor in NOISE_FLOORS, 'noise_floor', cfg.noise_floor, f'one of {NOISE_FLOORS}')
  for name in ('position_eps', 'shape_eps', 'position_scale'):
    _check(isinstance(cfg[name], float) and cfg[name] > 0, name, cfg[name], 'a float > 0')
  if ('trajectory' in comps or 'trajectory_reference' in comps) and not cfg.position:
    _check(cfg.noise_floor == 'none', 'noise_floor', cfg.noise_floor,
           "'none' when target.position=False (the floor acts on the position part only)")
  if 'trajectory_reference' in comps:
    _check(cfg.position_norm in ('per_step', 'none'), 'position_norm', cfg.position_norm,
           "'per_step' (the reference's PatchStd) or 'none' for target.kind='trajectory_reference'")
    _check(cfg.noise_floor == 'none', 'noise_floor', cfg.noise_floor,
           "'none' for target.kind='trajectory_reference' (its any-of-4 validity has no per-trajectory floor)")
  if 'trajectory' in comps or 'trajectory_reference' in comps:
    _check(isinstance(cfg.traj_len, int) and cfg.traj_len >= 1, 'traj_len', cfg.traj_len,
           'an integer >= 1 (L = 0, HOG only, is target.kind="hog")')
    _check(cfg.position or cfg.shape, 'position', cfg.position,
           f'True, or target.shape=True (target.shape={cfg.shape!r}): a trajectory target needs a part')
  _check(isinstance(cfg.norm_eps, float) and cfg.norm_eps > 0, 'norm_eps', cfg.norm_eps, 'a float > 0')
  _check(isinstance(cfg.hog_frame, int) and cfg.hog_frame >= 0, 'hog_frame', cfg.hog_frame,
         'an integer frame index within the tubelet, >= 0')


def _points_per_token(patch_size: tuple[int, int, int]) -> tuple[int, int]:
  _, ph, pw = patch_size
  if ph % GRID_STEP or pw % GRID_STEP:
    raise ValueError(f'patch_size={tuple(patch_size)}: height and width must be multiples of the {GRID_STEP}-px '
                     'trajectory/HOG grid')
  return ph // GRID_STEP, pw // GRID_STEP


def part_dims(cfg: ml_collections.ConfigDict, patch_size: tuple[int, int, int] = (2, 16, 16), *,
              frame_stride: int = 2) -> dict[str, int]:
  """Size of each target part, in concatenation order, e.g. `{'position': 48, 'shape': 216}`. `frame_stride` (the
  clip's, `data.frame_stride`) sizes the stored-map parts of every raw frame."""
  validate(cfg)
  kh, kw = _points_per_token(patch_size)
  k = kh * kw
  length = cfg.traj_len
  frames = map_frames(cfg, patch_size[0], frame_stride)
  out = {}
  for comp in components(cfg):
    if comp == 'trajectory':
      points = k if cfg.get('density', 'dense') == 'dense' else 1
      dims = {'position': points * length * 2, 'shape': points * length * HOG_BINS}
      out.update({name: d for name, d in dims.items() if cfg[name]})
    elif comp == 'trajectory_reference':
      dims = {'position': 2 * length * k, 'shape': NUM_COLOURS * HOG_BINS * k}
      out.update({name: d for name, d in dims.items() if cfg[name]})
    elif comp == 'pixel':
      pt, ph, pw = patch_size
      out['pixel'] = pt * ph * pw * NUM_COLOURS
    elif comp == 'hog':
      out['hog'] = k * frames * HOG_BINS if dense_hog(cfg) else NUM_COLOURS * HOG_BINS * k
    else:
      out[comp] = k * frames * schema.MOTION_MAP_CHANNELS[comp]
  return out


def part_offset(cfg: ml_collections.ConfigDict, name: str, patch_size: tuple[int, int, int] = (2, 16, 16), *,
                frame_stride: int = 2) -> int:
  """Index of part `name`'s first value in a token's target vector."""
  offset = 0
  for part, size in part_dims(cfg, patch_size, frame_stride=frame_stride).items():
    if part == name:
      return offset
    offset += size
  raise KeyError(f'target {cfg.kind!r} has no part {name!r}')


def _grid_to_tokens(a: jax.Array, patch_size: tuple[int, int, int]) -> jax.Array:
  """`[B, t, Gh, Gw, ...]` per grid point -> `[B, N, K, ...]` per token, `k = row * kw + col` inside the token."""
  kh, kw = _points_per_token(patch_size)
  b, t, gh, gw = a.shape[:4]
  rest = a.shape[4:]
  if gh % kh or gw % kw:
    raise ValueError(f'trajectory grid {gh}x{gw} is not a whole number of {kh}x{kw}-point tokens')
  h, w = gh // kh, gw // kw
  a = a.reshape((b, t, h, kh, w, kw) + rest)
  a = a.transpose((0, 1, 2, 4, 3, 5) + tuple(range(6, 6 + len(rest))))
  return a.reshape((b, t * h * w, kh * kw) + rest)


def _standardise(x: jax.Array, weight: jax.Array, axes: tuple[int, ...],
                 eps: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`(x - mean) / sqrt(var + eps)` with statistics over `axes` of the elements with weight 1.

  Returns:
    `(z, mean, scale)`, `mean` and `scale = sqrt(var + eps)` with singleton `axes` (so `x = z * scale + mean`). A
    group with no weight gets mean 0 and variance 0.
  """
  weight = jnp.broadcast_to(weight, x.shape)
  count = jnp.maximum(weight.sum(axes, keepdims=True), 1.0)
  mean = (weight * x).sum(axes, keepdims=True) / count
  var = (weight * jnp.square(x - mean)).sum(axes, keepdims=True) / count
  scale = jnp.sqrt(var + eps)
  return (x - mean) / scale, mean, scale


def patch_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """`(x - mean) / sqrt(var + eps)` over the last axis, statistics over the elements with weight 1.

  Args:
    x: `[..., D]`.
    weight: 0/1 `[..., D]`; a row with no weight gets mean 0 and variance 0.
    eps: added to the (population) variance.

  Returns:
    `[..., D]` float32.
  """
  return _standardise(x, weight, (-1,), eps)[0]


# Axes of a token's `[K, L, 2]` position values (after the `[B, N]` axes) that share one mean and variance.
_POSITION_NORM_AXES = {'joint': (2, 3, 4), 'per_component': (2, 3), 'per_step': (2,)}


def _unbiased_standardise(x: jax.Array, axis: int, eps: float) -> jax.Array:
  """`(x - mean) / (std + eps)` with the unbiased std (PyTorch's `.std()` and `.var()` default), as the reference."""
  mean = x.mean(axis, keepdims=True)
  std = jnp.sqrt(jnp.square(x - mean).sum(axis, keepdims=True) / (x.shape[axis] - 1))
  return (x - mean) / (std + eps)


def tubelet_hog(video: jax.Array, patch_size: tuple[int, int, int], frame: int) -> jax.Array:
  """Static HOG per token: RGB cell histograms of frame `frame` of each tubelet.

  Args:
    video: float `[B, T, H, W, C]` (used as given; the reference computes HOG on the normalised input).
    patch_size: tubelet `(pt, ph, pw)`; each token holds `(ph/8) x (pw/8)` cells.
    frame: frame index within the tubelet, `0 <= frame < pt`.

  Returns:
    float32 `[B, N, C * 9 * K]`, index `(colour * 9 + bin) * K + 2 * cell_row + cell_col` (for K = 2 x 2).
  """
  pt = patch_size[0]
  if not 0 <= frame < pt:
    raise ValueError(f'target.hog_frame={frame} is invalid: expected a frame index in [0, {pt}) of the tubelet')
  vit.token_grid(video.shape, patch_size)
  frames = video[:, frame::pt].astype(jnp.float32)  # [B, t, H, W, C]
  cells = hog.cell_histograms(frames)  # [B, t, Gh, Gw, C, 9]
  tok = _grid_to_tokens(cells, patch_size)  # [B, N, K, C, 9]
  b, n = tok.shape[:2]
  return tok.transpose(0, 1, 3, 4, 2).reshape(b, n, -1)


def _take_steps(x: jax.Array, length: int, name: str, why: str = '') -> jax.Array:
  if x.shape[-2] < length:
    raise ValueError(f'target.traj_len={length}{why} is longer than the {x.shape[-2]} steps stored in batch[{name!r}] '
                     f'{x.shape}')
  return x[..., :length, :].astype(jnp.float32)


def _trajectory_steps(batch: Batch, key: str, cfg: ml_collections.ConfigDict, frame_stride: int) -> jax.Array:
  """`batch[key]` `[..., Ls, C]` -> the `L = cfg.traj_len` steps the target uses, float32 `[..., L, C]`: the first L raw
  steps, or (`sparse_trajectories`) L steps at the input stride s: displacements summed over s raw steps, the other
  per-step values (HOG) of every s-th raw step."""
  length = cfg.traj_len
  if not sparse_trajectories(cfg):
    return _take_steps(batch[key], length, key)
  x = _take_steps(batch[key], length * frame_stride, key, f' at the input stride {frame_stride} (L x s raw steps)')
  if key == 'traj_disp':
    return x.reshape(x.shape[:-2] + (length, frame_stride, x.shape[-1])).sum(-2)
  return x[..., ::frame_stride, :]


def _token_trajectories(batch: Batch, key: str, cfg: ml_collections.ConfigDict, patch_size,
                        frame_stride: int) -> jax.Array:
  """`batch[key]` `[B, t, Gh, Gw, Ls, C]` -> `[B, N, K, L, C]` float32, the steps of `_trajectory_steps`."""
  return _grid_to_tokens(_trajectory_steps(batch, key, cfg, frame_stride), patch_size)


def trajectories_by_token(batch: Batch, cfg: ml_collections.ConfigDict,
                          patch_size: tuple[int, int, int] = (2, 16, 16), *,
                          frame_stride: int = 2) -> tuple[jax.Array, jax.Array]:
  """Raw displacements float32 `[B, N, K, L, 2]` (model px, the `cfg.traj_len` steps the target uses) and validity
  bool `[B, N, K]` of every token's K trajectories, `k = 2 * row + col` (the layout of the module docstring)."""
  return (_token_trajectories(batch, 'traj_disp', cfg, patch_size, frame_stride),
          _grid_to_tokens(batch['traj_valid'], patch_size))


def moving_tokens(batch: Batch, cfg: ml_collections.ConfigDict,
                  patch_size: tuple[int, int, int] = (2, 16, 16), *, frame_stride: int = 2) -> jax.Array:
  """Tokens whose raw motion is above the storage quantum: bool `[B, N]`.

  A token moves if one of its valid trajectories has a `|dx|` or `|dy|` (of the raw stride-1 steps the target covers,
  model px) above 1.5 storage quanta (`batch['traj_quantum']`, default 1/4 px): one quantum is what rounding noise of
  a still point reaches, the half quantum of margin absorbs the crop's bilinear resampling.
  """
  steps = cfg.traj_len * (frame_stride if sparse_trajectories(cfg) else 1)
  disp = _grid_to_tokens(_take_steps(batch['traj_disp'], steps, 'traj_disp'), patch_size)  # [B, N, K, L', 2]
  valid = _grid_to_tokens(batch['traj_valid'], patch_size)
  b = disp.shape[0]
  quantum = batch.get('traj_quantum')
  if quantum is None:
    quantum = jnp.full((b,), 1.0 / schema.DISP_UNITS_PER_PX, jnp.float32)
  amplitude = jnp.abs(disp).max(axis=(-1, -2))  # [B, N, K]
  return jnp.any(valid & (amplitude > 1.5 * jnp.asarray(quantum, jnp.float32)[:, None, None]), axis=-1)


def _pool(values: list[jax.Array], valid: jax.Array, disp: jax.Array,
          density: str) -> tuple[list[jax.Array], jax.Array]:
  """The token's trajectories at `density`: `values` `[B, N, K, L, C]` each and `valid` `[B, N, K]` as they are
  ('dense'), or one trajectory per token `[B, N, 1, L, C]`, valid `[B, N, 1]` if any of the K is: the mean of the valid
  ones ('sparse_mean') or the valid one with the longest path `sum_j |dp_j|` of `disp` ('sparse_max')."""
  if density == 'dense':
    return values, valid
  any_valid = valid.any(-1, keepdims=True)
  if density == 'sparse_mean':
    w = valid.astype(jnp.float32)[..., None, None]
    count = jnp.maximum(w.sum(2, keepdims=True), 1.0)
    return [(v * w).sum(2, keepdims=True) / count for v in values], any_valid
  path = jnp.where(valid, jnp.sqrt(jnp.square(disp).sum(-1)).sum(-1), -1.0)  # [B, N, K]
  pick = jnp.argmax(path, axis=-1)[..., None, None, None]  # [B, N, 1, 1, 1]
  return [jnp.take_along_axis(v, pick, axis=2) for v in values], any_valid


def _trajectory_values(batch: Batch, cfg: ml_collections.ConfigDict, patch_size, frame_stride: int,
                       with_shape: bool) -> tuple[list[jax.Array], jax.Array]:
  """`[disp (, hog)]` per token at `cfg.density`, `[B, N, K', L, 2 | 9]`, and their validity `[B, N, K']`."""
  disp = _token_trajectories(batch, 'traj_disp', cfg, patch_size, frame_stride)
  valid = _grid_to_tokens(batch['traj_valid'], patch_size)
  values = [disp] + ([_token_trajectories(batch, 'traj_hog', cfg, patch_size, frame_stride)] if with_shape else [])
  return _pool(values, valid, disp, cfg.get('density', 'dense'))


def _position_stats(raw: jax.Array, valid: jax.Array, cfg: ml_collections.ConfigDict):
  if cfg.position_norm == 'none':
    return raw, jnp.zeros_like(raw), jnp.full_like(raw, cfg.position_scale)
  valid = valid.astype(jnp.float32)[..., None, None]
  weight = valid if cfg.norm_valid_only else jnp.ones_like(valid)
  _, mean, scale = _standardise(raw, weight, _POSITION_NORM_AXES[cfg.position_norm], cfg.position_eps)
  return raw, jnp.broadcast_to(mean, raw.shape), jnp.broadcast_to(scale, raw.shape)


def position_statistics(batch: Batch, cfg: ml_collections.ConfigDict,
                        patch_size: tuple[int, int, int] = (2, 16, 16), *,
                        frame_stride: int = 2) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The raw position values of every token and the statistics `target.position_norm` normalises them with.

  Returns:
    `(raw, mean, scale)`, each float32 `[B, N, K', L, 2]` (model px; `K' = K`, or 1 with a sparse `density`), such
    that the `trajectory` position target is `(raw - mean) / scale` (before a `zero_target` noise floor). A position
    prediction `p` (reshaped to `[B, N, K', L, 2]`) is un-normalised to px by `p * scale + mean` (what the
    visualisation draws).
  """
  (raw,), valid = _trajectory_values(batch, cfg, patch_size, frame_stride, with_shape=False)
  return _position_stats(raw, valid, cfg)


def predicted_positions(pred: jax.Array, hidden: jax.Array, batch: Batch, cfg: ml_collections.ConfigDict,
                        patch_size: tuple[int, int, int] = (2, 16, 16), *, frame_stride: int = 2) -> jax.Array:
  """The position part of a prediction, un-normalised to model px with each token's target statistics
  (`p * scale + mean`, `position_statistics`): float32 `[B, N, K', L, 2]`, zero on the visible tokens.

  Args:
    pred: `[B, Nm, D]`, the decoder's output on the hidden tokens (in `masking.hidden_indices` order).
    hidden: bool `[B, N]`, the mask it was predicted under.
  """
  _, mean, scale = position_statistics(batch, cfg, patch_size, frame_stride=frame_stride)
  idx = masking.hidden_indices(hidden, pred.shape[1])
  start = part_offset(cfg, 'position', patch_size, frame_stride=frame_stride)
  size = part_dims(cfg, patch_size, frame_stride=frame_stride)['position']
  pos = pred[..., start:start + size].reshape(pred.shape[:2] + mean.shape[2:])
  disp = masking.gather_tokens(scale, idx) * pos + masking.gather_tokens(mean, idx)
  return masking.scatter_tokens(disp, idx, mean.shape[1])


def _trajectory(batch: Batch, cfg: ml_collections.ConfigDict, patch_size,
                frame_stride: int) -> tuple[jax.Array, jax.Array]:
  length = cfg.traj_len
  values, valid = _trajectory_values(batch, cfg, patch_size, frame_stride, with_shape=cfg.shape)
  valid = valid.astype(jnp.float32)  # [B, N, K']
  b, n, k = valid.shape
  targets, weights = [], []
  if cfg.position:
    raw, mean, scale = _position_stats(values[0], valid, cfg)  # [B, N, K', L, 2]
    x = ((raw - mean) / scale).reshape(b, n, k * length * 2)
    w = jnp.repeat(valid, length * 2, axis=-1)  # Trajectory k owns elements k*2L ... (k+1)*2L - 1.
    if cfg.noise_floor != 'none':
      moving = moving_tokens(batch, cfg, patch_size, frame_stride=frame_stride)[..., None]  # [B, N, 1]
      if cfg.noise_floor == 'zero_weight':
        w = w * moving
      else:
        x = jnp.where(moving, x, 0.0)
    targets.append(x)
    weights.append(w)
  if cfg.shape:
    x = values[-1]  # [B, N, K', L, 9]
    if cfg.shape_norm == 'joint':
      weight = valid[..., None, None] if cfg.norm_valid_only else jnp.ones_like(valid[..., None, None])
      x = _standardise(x, weight, (2, 3, 4), cfg.shape_eps)[0]
    targets.append(x.reshape(b, n, k * length * HOG_BINS))
    weights.append(jnp.repeat(valid, length * HOG_BINS, axis=-1))
  return jnp.concatenate(targets, -1), jnp.concatenate(weights, -1)


def _map_part(batch: Batch, name: str, cfg: ml_collections.ConfigDict, patch_size) -> jax.Array:
  """A stored-map part `[B, N, K*F*C]` from `batch['map_<name>']` `[B, t, Gh, Gw, F, C]` (module docstring)."""
  key = f'map_{name}'
  if key not in batch:
    raise ValueError(f'target part {name!r} needs batch[{key!r}], the stored maps the input pipeline sends when '
                     f'target.kind names it (records prepared with data prep --motion_maps for flow/hof/mbh); the '
                     f'batch has {sorted(batch)}')
  x = _grid_to_tokens(batch[key].astype(jnp.float32), patch_size)  # [B, N, K, F, C]
  b, n = x.shape[:2]
  if name == 'hog':
    norm, eps = ('joint' if cfg.hog_norm else 'none'), cfg.norm_eps
  else:
    norm, eps = cfg[f'{name}_norm'], cfg[f'{name}_eps']
  if norm == 'joint':
    x = _standardise(x, jnp.ones_like(x), (2, 3, 4), eps)[0]
  return x.reshape(b, n, -1)


def _trajectory_reference(batch: Batch, cfg: ml_collections.ConfigDict, patch_size) -> tuple[jax.Array, jax.Array]:
  targets, weights = [], []
  if cfg.position:
    valid = _grid_to_tokens(batch['traj_valid'], patch_size)  # [B, N, K]
    disp = _take_steps(batch['traj_disp'], cfg.traj_len, 'traj_disp') / REFERENCE_DISP_SCALE
    x = _grid_to_tokens(disp, patch_size)  # [B, N, K, L, 2]
    b, n = x.shape[:2]
    x = x.transpose(0, 1, 4, 3, 2)  # [B, N, 2, L, K]
    if cfg.position_norm == 'per_step':
      x = _unbiased_standardise(x, -1, cfg.norm_eps)
    x = x.reshape(b, n, -1)
    targets.append(x)
    weights.append(jnp.broadcast_to(valid.any(-1, keepdims=True).astype(jnp.float32), x.shape))
  if cfg.shape:
    x = tubelet_hog(batch['video'], patch_size, cfg.hog_frame)
    targets.append(x)
    weights.append(jnp.ones_like(x))
  return jnp.concatenate(targets, -1), jnp.concatenate(weights, -1)


def _pixel(batch: Batch, cfg: ml_collections.ConfigDict, patch_size, mean, std) -> jax.Array:
  video = batch['video'].astype(jnp.float32)
  video = video * jnp.asarray(std, jnp.float32) + jnp.asarray(mean, jnp.float32)
  x = vit.patchify(video, patch_size)  # [B, N, pt*ph*pw*C], (dt, dy, dx, c) order
  b, n, d = x.shape
  if cfg.pixel_norm:
    c = video.shape[-1]
    x = _unbiased_standardise(x.reshape(b, n, d // c, c), -2, cfg.norm_eps).reshape(b, n, d)
  return x


def compute(batch: Batch, cfg: ml_collections.ConfigDict, *, patch_size: tuple[int, int, int] = (2, 16, 16),
            input_mean: tuple[float, ...] = IMAGENET_MEAN, input_std: tuple[float, ...] = IMAGENET_STD,
            frame_stride: int = 2) -> tuple[jax.Array, jax.Array]:
  """Targets of every token (layouts in the module docstring); pure jnp, jittable.

  Args:
    batch: the model batch (keys in the module docstring; `pixel` and the static `hog` use only `video`, the stored-map
      parts `map_<name>`).
    cfg: target config (`default_config()`).
    patch_size: tubelet `(pt, ph, pw)` of the model.
    input_mean, input_std: the normalisation applied to `video` (undone for the `pixel` target).
    frame_stride: the clip's input stride `s` (`data.frame_stride`): trajectories without interpolation take L steps
      at this stride.

  Returns:
    `(target, weight)`, float32 `[B, N, D]` each, `D = sum(part_dims(cfg, patch_size).values())`; `weight` is 0 on the
    elements of out-of-frame trajectories and 1 elsewhere. Both carry no gradient.
  """
  validate(cfg)
  parts, weights = [], []
  for comp in components(cfg):
    if comp == 'trajectory':
      target, weight = _trajectory(batch, cfg, patch_size, frame_stride)
    elif comp == 'trajectory_reference':
      target, weight = _trajectory_reference(batch, cfg, patch_size)
    else:
      if comp == 'pixel':
        target = _pixel(batch, cfg, patch_size, input_mean, input_std)
      elif comp == 'hog' and not dense_hog(cfg):
        target = tubelet_hog(batch['video'], patch_size, cfg.hog_frame)
        if cfg.hog_norm:
          target = patch_norm(target, jnp.ones_like(target), cfg.norm_eps)
      else:
        target = _map_part(batch, comp, cfg, patch_size)
      weight = jnp.ones_like(target)
    parts.append(target)
    weights.append(weight)
  target, weight = jnp.concatenate(parts, -1), jnp.concatenate(weights, -1)
  return jax.lax.stop_gradient(target), jax.lax.stop_gradient(weight)
