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
Grid point `(gy, gx)` lies in token `(gy // 2, gx // 2)` (in its tubelet's time slot) as point
`k = (gy % 2) * 2 + gx % 2`, i.e. `k = 2 * row + col` of the 2 x 2 points of the patch. Only the first
`L = cfg.traj_len` steps are used.

Target layouts (index within a token's target vector; `L = traj_len`, `K = 4`):

* `trajectory` (paper-faithful, DESIGN §2.5): parts `position` then `shape` (each can be switched off).
    position  `K*L*2` (48 for L=6): index `k*2L + j*2 + c`, `c` = 0 for dx, 1 for dy.
    shape     `K*L*9` (216 for L=6): index `k*9L + j*9 + b`, `b` = HOG bin.
  With `patch_norm`, each part is normalised over its own values in the token: `(x - mean) / sqrt(var + norm_eps)`
  (population variance); with `norm_valid_only` the mean and variance use only the token's valid trajectories.
  Weight: element of trajectory `k` = `traj_valid` of that trajectory (both parts).
* `trajectory_reference` (the released code's target, DESIGN §2.8; use with `traj_len=4`):
    position  `2*L*K` (32 for L=4): `dp / 20`, index `c*(L*K) + j*K + k`; with `patch_norm`, every `(c, j)` is
              normalised over its K points: `(x - mean) / (std + norm_eps)` with the unbiased std (reference PatchStd).
              Weight: 1 on every element of a token if **any** of its K trajectories is valid, else 0.
    shape     `3*9*K` = 108: static RGB HOG of frame `hog_frame` (default 1, the 2nd) of the tubelet, computed on the
              normalised input, index `(colour*9 + b)*K + k` (colour R, G, B; `k = 2 * cell_row + cell_col`), no
              normalisation; weight 1.
* `pixel` (VideoMAE): part `pixel`, `pt*ph*pw*3` (1536): the un-normalised [0, 1] RGB tubelet, index
  `((dt*ph + dy)*pw + dx)*3 + colour`; with `pixel_norm`, each colour is normalised over the tubelet's `pt*ph*pw`
  pixels as VideoMAE: `(x - mean) / (std + norm_eps)`, unbiased std. Weight 1.
* `hog` (MaskFeat-style baseline): part `hog`, 108: as the reference shape part above (HOG of frame `hog_frame` of each
  tubelet, RGB, on the normalised input, index `(colour*9 + b)*K + k`); with `hog_norm`, normalised over the 108 values
  like a trajectory part. Weight 1.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from m3video_jax import hog
from m3video_jax.models import vit

KINDS = ('trajectory', 'trajectory_reference', 'pixel', 'hog')
GRID_STEP = 8
HOG_BINS = hog.NUM_BINS
NUM_COLOURS = 3
REFERENCE_DISP_SCALE = 20.0  # The reference divides displacements by the flow bound (20 px) before PatchStd.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Batch = dict[str, jax.Array]


def default_config() -> ml_collections.ConfigDict:
  """Every target field with its default (paper-faithful trajectory target, DESIGN §2)."""
  c = ml_collections.ConfigDict()
  c.kind = 'trajectory'  # One of KINDS.
  # trajectory / trajectory_reference
  c.traj_len = 6  # L: steps per trajectory used (the first L of the stored ones). The reference variant uses 4.
  c.position = True  # Include the position part (displacements).
  c.shape = True  # Include the shape part (trajectory-aligned HOG; static tubelet HOG for trajectory_reference).
  c.patch_norm = True  # Normalise each part per token (paper Table 5); for the trajectory kinds only.
  c.norm_valid_only = True  # trajectory: patch-norm statistics over the token's valid trajectories only.
  c.norm_eps = 1e-6  # eps of every normalisation (patch norm, PatchStd, VideoMAE pixel norm).
  # pixel
  c.pixel_norm = True  # VideoMAE's per-tubelet, per-colour normalisation of the target pixels.
  # hog and the shape part of trajectory_reference
  c.hog_frame = 1  # Frame of the tubelet whose HOG is the target (the reference uses the 2nd, index 1).
  c.hog_norm = False  # hog: normalise the 108 values per token (paper's HOG baseline: no normalisation).
  return c


def _check(ok: bool, field: str, value: Any, expected: str) -> None:
  if not ok:
    raise ValueError(f'target.{field}={value!r} is invalid: expected {expected}')


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Checks a target config.

  Raises:
    ValueError: naming the first invalid field, its value and the allowed values.
  """
  _check(cfg.kind in KINDS, 'kind', cfg.kind, f'one of {KINDS}')
  for name in ('position', 'shape', 'patch_norm', 'norm_valid_only', 'pixel_norm', 'hog_norm'):
    _check(isinstance(cfg[name], bool), name, cfg[name], 'True or False')
  if cfg.kind in ('trajectory', 'trajectory_reference'):
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


def part_dims(cfg: ml_collections.ConfigDict, patch_size: tuple[int, int, int] = (2, 16, 16)) -> dict[str, int]:
  """Size of each target part, in concatenation order, e.g. `{'position': 48, 'shape': 216}`."""
  validate(cfg)
  kh, kw = _points_per_token(patch_size)
  k = kh * kw
  length = cfg.traj_len
  if cfg.kind == 'trajectory':
    dims = {'position': k * length * 2, 'shape': k * length * HOG_BINS}
    return {name: d for name, d in dims.items() if cfg[name]}
  if cfg.kind == 'trajectory_reference':
    dims = {'position': 2 * length * k, 'shape': NUM_COLOURS * HOG_BINS * k}
    return {name: d for name, d in dims.items() if cfg[name]}
  if cfg.kind == 'pixel':
    pt, ph, pw = patch_size
    return {'pixel': pt * ph * pw * NUM_COLOURS}
  return {'hog': NUM_COLOURS * HOG_BINS * k}


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


def patch_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """`(x - mean) / sqrt(var + eps)` over the last axis, statistics over the elements with weight 1.

  Args:
    x: `[..., D]`.
    weight: 0/1 `[..., D]`; a row with no weight gets mean 0 and variance 0.
    eps: added to the (population) variance.

  Returns:
    `[..., D]` float32.
  """
  count = jnp.maximum(weight.sum(-1, keepdims=True), 1.0)
  mean = (weight * x).sum(-1, keepdims=True) / count
  var = (weight * jnp.square(x - mean)).sum(-1, keepdims=True) / count
  return (x - mean) * jax.lax.rsqrt(var + eps)


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


def _take_steps(x: jax.Array, length: int, name: str) -> jax.Array:
  if x.shape[-2] < length:
    raise ValueError(f'target.traj_len={length} is longer than the {x.shape[-2]} steps stored in batch[{name!r}] '
                     f'{x.shape}')
  return x[..., :length, :].astype(jnp.float32)


def _trajectory(batch: Batch, cfg: ml_collections.ConfigDict, patch_size) -> tuple[jax.Array, jax.Array]:
  length = cfg.traj_len
  valid = _grid_to_tokens(batch['traj_valid'], patch_size).astype(jnp.float32)  # [B, N, K]
  b, n, k = valid.shape
  targets, weights = [], []
  for name, key, width in (('position', 'traj_disp', 2), ('shape', 'traj_hog', HOG_BINS)):
    if not cfg[name]:
      continue
    x = _grid_to_tokens(_take_steps(batch[key], length, key), patch_size).reshape(b, n, k * length * width)
    w = jnp.repeat(valid, length * width, axis=-1)  # Trajectory k owns elements k*L*width ... (k+1)*L*width - 1.
    if cfg.patch_norm:
      x = patch_norm(x, w if cfg.norm_valid_only else jnp.ones_like(w), cfg.norm_eps)
    targets.append(x)
    weights.append(w)
  return jnp.concatenate(targets, -1), jnp.concatenate(weights, -1)


def _trajectory_reference(batch: Batch, cfg: ml_collections.ConfigDict, patch_size) -> tuple[jax.Array, jax.Array]:
  targets, weights = [], []
  if cfg.position:
    valid = _grid_to_tokens(batch['traj_valid'], patch_size)  # [B, N, K]
    disp = _take_steps(batch['traj_disp'], cfg.traj_len, 'traj_disp') / REFERENCE_DISP_SCALE
    x = _grid_to_tokens(disp, patch_size)  # [B, N, K, L, 2]
    b, n = x.shape[:2]
    x = x.transpose(0, 1, 4, 3, 2)  # [B, N, 2, L, K]
    if cfg.patch_norm:
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
            input_mean: tuple[float, ...] = IMAGENET_MEAN,
            input_std: tuple[float, ...] = IMAGENET_STD) -> tuple[jax.Array, jax.Array]:
  """Targets of every token (layouts in the module docstring); pure jnp, jittable.

  Args:
    batch: the model batch (keys in the module docstring; `pixel` and `hog` use only `video`).
    cfg: target config (`default_config()`).
    patch_size: tubelet `(pt, ph, pw)` of the model.
    input_mean, input_std: the normalisation applied to `video` (undone for the `pixel` target).

  Returns:
    `(target, weight)`, float32 `[B, N, D]` each, `D = sum(part_dims(cfg, patch_size).values())`; `weight` is 0 on the
    elements of out-of-frame trajectories and 1 elsewhere. Both carry no gradient.
  """
  validate(cfg)
  if cfg.kind == 'trajectory':
    target, weight = _trajectory(batch, cfg, patch_size)
  elif cfg.kind == 'trajectory_reference':
    target, weight = _trajectory_reference(batch, cfg, patch_size)
  elif cfg.kind == 'pixel':
    target = _pixel(batch, cfg, patch_size, input_mean, input_std)
    weight = jnp.ones_like(target)
  else:
    target = tubelet_hog(batch['video'], patch_size, cfg.hog_frame)
    if cfg.hog_norm:
      target = patch_norm(target, jnp.ones_like(target), cfg.norm_eps)
    weight = jnp.ones_like(target)
  return jax.lax.stop_gradient(target), jax.lax.stop_gradient(weight)
