"""Config helpers shared by every file in `configs/`: arg-string parsing, the pretraining base config, validation.

Config files build on `pretrain_base()` and change only what their experiment changes; `validate()` runs before anything
is compiled and raises `ValueError` naming the field, its value and what is allowed.
"""
from __future__ import annotations

import ast
from typing import Any

import ml_collections

ENCODER_VARIANTS = ('mu', 'S', 'B', 'L')
MASK_KINDS = ('tube', 'cube')
DECODER_MODES = ('joint', 'separate')
DTYPES = ('float32', 'bfloat16')
TASKS = ('pretrain',)

# ImageNet statistics: the reference normalises clips with these, and exported models expect them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a config arg string such as `"variant=S,mask_ratio=0.9,tiny"` against typed defaults.

  A bare name sets a boolean default to True. Values are cast to the type of their default.

  Raises:
    ValueError: on an unknown key or a value that cannot be cast.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(','):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'unknown config arg {key!r} in {arg!r}; known args: {sorted(defaults)}')
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f'config arg {key!r} needs a value ({key}=...); its default is {default!r}')
      out[key] = True
      continue
    value = value.strip()
    try:
      if isinstance(default, bool):
        if value.lower() not in ('true', 'false', '1', '0'):
          raise ValueError(value)
        out[key] = value.lower() in ('true', '1')
      elif isinstance(default, (int, float)):
        out[key] = type(default)(ast.literal_eval(value))
      else:
        out[key] = value
    except (ValueError, SyntaxError) as e:
      raise ValueError(f'config arg {key}={value!r} is not a valid {type(default).__name__}') from e
  return out


def pretrain_base() -> ml_collections.ConfigDict:
  """Paper defaults for M3Video pretraining (Table 13 and §4), ViT-B, 16 frames at 224², before dataset specifics."""
  from m3video_jax import targets  # Imported here so `configs/*.py` stay cheap to import.

  c = ml_collections.ConfigDict()
  c.task = 'pretrain'
  c.seed = 0
  c.total_steps = 100_000
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1_000
  c.keep_checkpoints = 3
  c.init_from = ''  # Orbax checkpoint dir or workdir whose params initialise the model (resume from workdir wins).

  c.data = ml_collections.ConfigDict()
  c.data.train_files = ''  # Glob of TFRecord shards written by data_prep (comma-separate several globs).
  c.data.batch_size = 512  # Global batch size (all processes).
  c.data.num_frames = 16
  c.data.frame_stride = 2
  c.data.res = 224
  # Multi-scale crop (reference GroupMultiScaleCrop): side scales relative to the short side, max scale-index distance.
  c.data.crop_scales = (1.0, 0.875, 0.75, 0.66)
  c.data.crop_max_distort = 1
  c.data.flip = False
  c.data.shuffle_buffer = 1_024
  c.data.skip_corrupt = False  # True: skip and count unreadable records instead of stopping with an error.
  c.data.num_parallel_calls = -1  # -1 = tf.data.AUTOTUNE
  c.data.prefetch_batches = 2
  c.data.mean = IMAGENET_MEAN
  c.data.std = IMAGENET_STD
  # Demo only: when `train_files` match nothing, write synthetic videos and run data prep into the workdir first.
  c.data.prepare_if_missing = False
  c.data.synthetic_num_videos = 0
  c.data.synthetic_size = 0
  c.data.synthetic_frames = 0
  c.data.prep_short_side = 0

  c.model = ml_collections.ConfigDict()
  c.model.encoder = 'B'
  c.model.patch_size = (2, 16, 16)
  c.model.decoder_width = 192
  c.model.decoder_depth = 1
  c.model.decoder_heads = 6
  c.model.decoder_mode = 'joint'  # 'separate' = two decoders, one per target part (paper Table 8).
  c.model.drop_path = 0.0
  c.model.dtype = 'float32'  # Compute dtype; params and the loss stay float32.

  c.mask = ml_collections.ConfigDict()
  c.mask.kind = 'tube'
  c.mask.ratio = 0.7

  c.target = targets.default_config()

  c.optim = ml_collections.ConfigDict()
  c.optim.base_lr = 1.5e-4  # Scaled by global batch / 256.
  c.optim.min_lr = 1e-5  # End of the cosine, also scaled by batch / 256.
  c.optim.warmup_steps = 10_000
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999  # Paper Table 13; the reference script uses 0.95.
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.05
  c.optim.grad_clip_norm = 0.0  # 0 = no clipping (paper and reference).
  c.optim.grad_accum_steps = 1  # Micro-batches per optimiser step; batch_size is the effective (summed) batch.

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 = all devices not used by the other axis.
  c.mesh.fsdp = 1
  return c


def epochs_to_steps(epochs: float, num_videos: int, batch_size: int) -> int:
  return max(1, int(round(epochs * num_videos / batch_size)))


def _check(ok: bool, field: str, value: Any, expected: str) -> None:
  if not ok:
    raise ValueError(f'config.{field}={value!r} is invalid: expected {expected}')


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Checks a config before anything compiles.

  Args:
    config: a full training config.
    num_devices: global device count (batch divisibility is checked when given).

  Raises:
    ValueError: naming the first invalid field, its value and the allowed values.
  """
  from m3video_jax import targets

  c = config
  _check(c.task in TASKS, 'task', c.task, f'one of {TASKS}')
  for name in ('total_steps', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    _check(isinstance(c[name], int) and c[name] > 0, name, c[name], 'a positive integer')
  d = c.data
  _check(d.batch_size > 0, 'data.batch_size', d.batch_size, 'a positive integer')
  _check(d.num_frames > 0, 'data.num_frames', d.num_frames, 'a positive integer')
  pt, ph, pw = c.model.patch_size
  _check(pt > 0 and ph % 8 == 0 and pw % 8 == 0 and ph == pw, 'model.patch_size', tuple(c.model.patch_size),
         '(t, p, p) with p a multiple of the 8-px trajectory grid step')
  _check(d.num_frames % pt == 0, 'data.num_frames', d.num_frames, f'a multiple of the tubelet length {pt}')
  _check(d.res > 0 and d.res % ph == 0, 'data.res', d.res, f'a positive multiple of the patch size {ph}')
  _check(d.frame_stride >= 1, 'data.frame_stride', d.frame_stride, 'an integer >= 1')
  _check(len(d.crop_scales) >= 1 and all(0 < s <= 1 for s in d.crop_scales), 'data.crop_scales',
         tuple(d.crop_scales), 'a non-empty tuple of scales in (0, 1]')
  _check(d.crop_max_distort >= 0, 'data.crop_max_distort', d.crop_max_distort, 'an integer >= 0')
  _check(d.shuffle_buffer >= 1, 'data.shuffle_buffer', d.shuffle_buffer, 'an integer >= 1')
  _check(len(d.mean) == 3 and len(d.std) == 3 and all(s > 0 for s in d.std), 'data.std', tuple(d.std),
         'three positive values (and data.mean three values)')
  if not d.prepare_if_missing:
    _check(bool(d.train_files), 'data.train_files', d.train_files,
           'a glob of TFRecord shards written by data_prep (e.g. /data/ssv2/train-*.tfrecord)')
  m = c.model
  _check(m.encoder in ENCODER_VARIANTS, 'model.encoder', m.encoder, f'one of {ENCODER_VARIANTS}')
  _check(m.decoder_mode in DECODER_MODES, 'model.decoder_mode', m.decoder_mode, f'one of {DECODER_MODES}')
  _check(m.decoder_depth >= 1, 'model.decoder_depth', m.decoder_depth, 'an integer >= 1')
  _check(m.decoder_width > 0 and m.decoder_width % m.decoder_heads == 0, 'model.decoder_width', m.decoder_width,
         f'a positive multiple of model.decoder_heads={m.decoder_heads}')
  _check(0.0 <= m.drop_path < 1.0, 'model.drop_path', m.drop_path, 'a rate in [0, 1)')
  _check(m.dtype in DTYPES, 'model.dtype', m.dtype, f'one of {DTYPES}')
  _check(c.mask.kind in MASK_KINDS, 'mask.kind', c.mask.kind, f'one of {MASK_KINDS}')
  _check(0.0 < c.mask.ratio < 1.0, 'mask.ratio', c.mask.ratio, 'a ratio in (0, 1)')
  targets.validate(c.target)
  o = c.optim
  _check(o.base_lr > 0, 'optim.base_lr', o.base_lr, 'a positive learning rate')
  _check(0 <= o.min_lr <= o.base_lr, 'optim.min_lr', o.min_lr, f'in [0, optim.base_lr={o.base_lr}]')
  _check(0 <= o.warmup_steps <= c.total_steps, 'optim.warmup_steps', o.warmup_steps,
         f'in [0, total_steps={c.total_steps}]')
  _check(0 <= o.b1 < 1 and 0 <= o.b2 < 1, 'optim.b2', o.b2, 'betas in [0, 1)')
  _check(o.weight_decay >= 0, 'optim.weight_decay', o.weight_decay, 'a value >= 0')
  _check(o.grad_clip_norm >= 0, 'optim.grad_clip_norm', o.grad_clip_norm, 'a value >= 0 (0 = off)')
  _check(o.grad_accum_steps >= 1, 'optim.grad_accum_steps', o.grad_accum_steps, 'an integer >= 1')
  _check(d.batch_size % o.grad_accum_steps == 0, 'data.batch_size', d.batch_size,
         f'a multiple of optim.grad_accum_steps={o.grad_accum_steps}')
  _check(c.mesh.fsdp >= 1, 'mesh.fsdp', c.mesh.fsdp, 'an integer >= 1')
  _check(c.mesh.data == -1 or c.mesh.data >= 1, 'mesh.data', c.mesh.data, '-1 (all remaining devices) or >= 1')
  if num_devices is not None:
    fsdp = c.mesh.fsdp
    data = num_devices // fsdp if c.mesh.data == -1 else c.mesh.data
    _check(data * fsdp == num_devices, 'mesh', c.mesh.to_dict(),
           f'data x fsdp == the {num_devices} available devices')
    micro = d.batch_size // o.grad_accum_steps
    _check(micro % num_devices == 0, 'data.batch_size', d.batch_size,
           f'a multiple of {num_devices} devices x optim.grad_accum_steps={o.grad_accum_steps}')


PRETRAIN_ARGS = dict(variant='B', mask_ratio=0.7, target='trajectory', traj_len=6, patch_norm=True,
                     decoder='joint', decoder_depth=1, tiny=False)


def apply_pretrain_args(c: ml_collections.ConfigDict, a: ml_collections.ConfigDict) -> None:
  """Applies the ablation switches shared by the pretraining configs (DESIGN §2.8, paper Tables 1, 3, 5, 7, 8).

  `target` is one of `trajectory` (paper default), `trajectory_position_only`, `trajectory_shape_only`, `pixel`,
  `hog`, `trajectory_reference` (the released code's target: L=4, static RGB HOG, per-step norm, any-of-4 validity).
  """
  c.model.encoder = a.variant
  c.model.decoder_mode = a.decoder
  c.model.decoder_depth = a.decoder_depth
  c.mask.ratio = a.mask_ratio
  c.target.traj_len = a.traj_len
  c.target.patch_norm = a.patch_norm
  kinds = {'trajectory': ('trajectory', True, True), 'trajectory_position_only': ('trajectory', True, False),
           'trajectory_shape_only': ('trajectory', False, True), 'pixel': ('pixel', False, False),
           'hog': ('hog', False, False), 'trajectory_reference': ('trajectory_reference', True, True)}
  if a.target not in kinds:
    raise ValueError(f'config arg target={a.target!r} is invalid: expected one of {sorted(kinds)}')
  c.target.kind, c.target.position, c.target.shape = kinds[a.target]
  if a.target == 'trajectory_reference':
    c.target.traj_len = 4


def shrink_for_tests(c: ml_collections.ConfigDict) -> None:
  """The `tiny` variant: a model and clip small enough for CPU tests in seconds. The only place that shrinks."""
  c.model.encoder = 'mu'
  c.model.decoder_width, c.model.decoder_heads, c.model.decoder_depth = 32, 2, 1
  c.data.update(num_frames=4, res=32, batch_size=8, shuffle_buffer=16, frame_stride=1)
  c.target.traj_len = min(c.target.traj_len, 4)
  c.total_steps, c.log_every_steps, c.checkpoint_every_steps = 4, 1, 2
  c.optim.warmup_steps = 1


def pretrain_config(arg: str | None, *, num_train_videos: int, frame_stride: int, flip: bool, epochs: int = 400,
                    warmup_epochs: int = 40) -> ml_collections.ConfigDict:
  """A paper pretraining config for one dataset: steps from epochs at the default batch, then the arg switches."""
  a = parse_arg(arg, **PRETRAIN_ARGS)
  c = pretrain_base()
  c.data.frame_stride = frame_stride
  c.data.flip = flip
  c.total_steps = epochs_to_steps(epochs, num_train_videos, c.data.batch_size)
  c.optim.warmup_steps = epochs_to_steps(warmup_epochs, num_train_videos, c.data.batch_size)
  c.checkpoint_every_steps = epochs_to_steps(10, num_train_videos, c.data.batch_size)
  apply_pretrain_args(c, a)
  if a.tiny:
    shrink_for_tests(c)
  return c
