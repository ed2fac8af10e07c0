"""Config helpers shared by every file in `configs/`: arg-string parsing, the pretraining base config, validation.

Config files build on `pretrain_base()` and change only what their experiment changes; `validate()` runs before anything
is compiled and raises `ValueError` naming the field, its value and what is allowed.
"""
from __future__ import annotations

import ast
from typing import Any

import ml_collections

ENCODER_VARIANTS = ('mu', 'XS', 'S', 'B', 'L')
MASK_KINDS = ('tube', 'cube')
DECODER_MODES = ('joint', 'separate')
DTYPES = ('float32', 'bfloat16')
TASKS = ('pretrain', 'finetune', 'linear_probe')
SAMPLINGS = ('dense', 'segment')

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


def _base(task: str) -> ml_collections.ConfigDict:
  """Fields every task shares (run cadence, input basics, encoder, optimiser, mesh), at the pretraining defaults."""
  c = ml_collections.ConfigDict()
  c.task = task
  c.seed = 0
  c.total_steps = 100_000
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1_000
  c.keep_checkpoints = 3
  c.init_from = ''  # Orbax checkpoint dir or workdir whose params initialise the model (resume from workdir wins).
  c.eval_every_steps = 0  # Periodic evaluation (classification tasks); 0 = only at the end. Pretraining has none.
  c.viz_every_steps = 0  # TensorBoard pictures of the task (pretraining: target vs predicted trajectories); 0 = off.
  c.next_commands = ()  # Shell commands the closing summary suggests ('{workdir}' = this run's workdir); demos.

  c.data = ml_collections.ConfigDict()
  c.data.train_files = ''  # Glob of TFRecord shards written by data_prep (comma-separate several globs).
  c.data.batch_size = 512  # Global batch size (all processes).
  c.data.num_frames = 16
  c.data.frame_stride = 2
  c.data.res = 224
  c.data.flip = False
  c.data.shuffle_buffer = 1_024
  # True: train without damaged shards (found at start: wrong size, not TFRecord, unreadable) and skip and count
  # records that fail to read or decode, instead of stopping with an error naming the shard and record. A record
  # damaged inside a shard also loses the rest of that shard for the epoch (TFRecord reading cannot resync).
  c.data.skip_corrupt = False
  c.data.num_parallel_calls = -1  # -1 = tf.data.AUTOTUNE
  c.data.prefetch_batches = 2
  c.data.mean = IMAGENET_MEAN
  c.data.std = IMAGENET_STD
  # Demo and CPU experiments only: write synthetic videos and run data prep into `prepare_dir` (default
  # `<workdir>/data`) unless it already holds them, and train on those shards.
  c.data.prepare_if_missing = False
  c.data.prepare_dir = ''
  c.data.synthetic_num_videos = 0
  c.data.synthetic_size = 0
  c.data.synthetic_frames = 0
  c.data.synthetic_seed = 0
  c.data.synthetic_max_pan = 1.5  # Camera pan bound of the synthetic videos, px/frame.
  c.data.synthetic_num_objects = 1  # Moving objects per video (data_prep.synthetic --num_objects).
  c.data.synthetic_object_scale = 1.0  # Their size (data_prep.synthetic --object_scale).
  c.data.prep_short_side = 0
  c.data.prep_flow = 'dis_fast'  # data_prep.extract --flow.
  c.data.prep_camera_motion = 'compose'  # data_prep.extract --camera_motion.

  c.model = ml_collections.ConfigDict()
  c.model.encoder = 'B'
  c.model.patch_size = (2, 16, 16)
  c.model.drop_path = 0.0
  c.model.dtype = 'float32'  # Compute dtype; params and the loss stay float32.

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


def pretrain_base() -> ml_collections.ConfigDict:
  """Paper defaults for M3Video pretraining (Table 13 and §4), ViT-B, 16 frames at 224², before dataset specifics."""
  from m3video_jax import targets  # Imported here so `configs/*.py` stay cheap to import.

  c = _base('pretrain')
  # Multi-scale crop (reference GroupMultiScaleCrop): side scales relative to the short side, max scale-index distance.
  c.data.crop_scales = (1.0, 0.875, 0.75, 0.66)
  c.data.crop_max_distort = 1
  # Paper §3.1 toy experiment (Fig. 3): the model sees one frame of each clip repeated, the targets come from the
  # real clip. Applied on the device, after the input pipeline.
  c.data.static_input = False

  c.model.decoder_width = 192
  c.model.decoder_depth = 1
  c.model.decoder_heads = 6
  c.model.decoder_mode = 'joint'  # 'separate' = two decoders, one per target part (paper Table 8).

  c.mask = ml_collections.ConfigDict()
  c.mask.kind = 'tube'
  c.mask.ratio = 0.7

  c.target = targets.default_config()
  return c


def pretrain_config_from_dict(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """A pretraining config rebuilt from a run's `config.json`: `pretrain_base()` with every saved field applied.

  Fields the saved run lacks (an older version) keep their defaults; saved fields this version does not know are
  ignored; lists become tuples where the default is a tuple.
  """
  c = pretrain_base()
  saved = _upgrade_saved_target(saved)

  def apply(node: ml_collections.ConfigDict, values: dict[str, Any]) -> None:
    for key, value in values.items():
      if key not in node:
        continue
      if isinstance(node[key], ml_collections.ConfigDict) and isinstance(value, dict):
        apply(node[key], value)
      else:
        node[key] = tuple(value) if isinstance(node[key], tuple) and isinstance(value, list) else value

  with c.unlocked():
    apply(c, saved)
  return c


def _upgrade_saved_target(saved: dict[str, Any]) -> dict[str, Any]:
  """A `config.json` of a version before the per-part target options: its one `target.patch_norm` switch and shared
  `norm_eps` become the `position_norm`/`shape_norm` and eps fields that reproduce the same target."""
  target = saved.get('target')
  if not isinstance(target, dict) or 'patch_norm' not in target or 'position_norm' in target:
    return saved
  target = dict(target)
  norm = bool(target.pop('patch_norm'))
  reference = target.get('kind') == 'trajectory_reference'
  target['position_norm'] = ('per_step' if reference else 'joint') if norm else 'none'
  target['shape_norm'] = 'joint' if norm else 'none'
  if 'norm_eps' in target:
    target['position_eps'] = target['shape_eps'] = float(target['norm_eps'])
  return {**saved, 'target': target}


def epochs_to_steps(epochs: float, num_videos: int, batch_size: int) -> int:
  return max(1, int(round(epochs * num_videos / batch_size)))


class ConfigError(ValueError):
  """A config field, or the workdir, cannot be used; the message names it, its value and what is expected."""


def _check(ok: bool, field: str, value: Any, expected: str) -> None:
  if not ok:
    raise ConfigError(f'config.{field}={value!r} is invalid: expected {expected}')


# Tuple fields: (length or None for any non-empty length, element type, an example). Checked before any field is
# used, so a bad override is one message naming the field, not a TypeError from a comparison.
TUPLE_FIELDS = {
    'model.patch_size': (3, int, '(2,16,16)'),
    'data.mean': (3, float, '(0.485,0.456,0.406)'),
    'data.std': (3, float, '(0.229,0.224,0.225)'),
    'data.crop_scales': (None, float, '(1.0,0.875,0.75,0.66)'),
    'aug.crop_area': (2, float, '(0.25,1.0)'),
    'aug.crop_aspect': (2, float, '(0.75,1.333)'),
}


def _check_tuples(c: ml_collections.ConfigDict) -> None:
  for field, (length, kind, example) in TUPLE_FIELDS.items():
    node, present = c, True
    for key in field.split('.'):
      if key not in node:
        present = False
        break
      node = node[key]
    if not present:
      continue
    numbers = 'integers' if kind is int else 'numbers'
    expected = (f'a tuple of {length} {numbers}' if length else f'a non-empty tuple of {numbers}') + \
        f', e.g. --config.{field}="{example}"'
    ok = isinstance(node, (tuple, list)) and (len(node) == length if length else len(node) >= 1)
    ok = ok and all(isinstance(x, (int, float) if kind is float else int) and not isinstance(x, bool) for x in node)
    _check(ok, field, tuple(node) if isinstance(node, list) else node, expected)


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Checks a config before anything compiles.

  Args:
    config: a full training config.
    num_devices: global device count (batch divisibility is checked when given).

  Raises:
    ValueError: naming the first invalid field, its value and the allowed values.
  """
  c = config
  _check(c.task in TASKS, 'task', c.task, f'one of {TASKS}')
  _check_tuples(c)
  for name in ('total_steps', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    _check(isinstance(c[name], int) and c[name] > 0, name, c[name], 'a positive integer')
  _check(isinstance(c.eval_every_steps, int) and c.eval_every_steps >= 0, 'eval_every_steps', c.eval_every_steps,
         'an integer >= 0 (0 = evaluate only at the end)')
  _check(isinstance(c.viz_every_steps, int) and c.viz_every_steps >= 0, 'viz_every_steps', c.viz_every_steps,
         'an integer >= 0 (0 = no pictures)')
  _check(all(isinstance(x, str) for x in c.next_commands), 'next_commands', c.next_commands, 'a tuple of strings')
  d = c.data
  _check(d.batch_size > 0, 'data.batch_size', d.batch_size, 'a positive integer')
  _check(d.num_frames > 0, 'data.num_frames', d.num_frames, 'a positive integer')
  pt, ph, pw = c.model.patch_size
  if c.task == 'pretrain':
    _check(pt > 0 and ph % 8 == 0 and pw % 8 == 0 and ph == pw, 'model.patch_size', tuple(c.model.patch_size),
           '(t, p, p) with p a multiple of the 8-px trajectory grid step')
  else:
    _check(pt > 0 and ph > 0 and ph == pw, 'model.patch_size', tuple(c.model.patch_size), '(t, p, p), all positive')
  _check(d.num_frames % pt == 0, 'data.num_frames', d.num_frames, f'a multiple of the tubelet length {pt}')
  _check(d.res > 0 and d.res % ph == 0, 'data.res', d.res, f'a positive multiple of the patch size {ph}')
  _check(d.frame_stride >= 1, 'data.frame_stride', d.frame_stride, 'an integer >= 1')
  _check(d.shuffle_buffer >= 1, 'data.shuffle_buffer', d.shuffle_buffer, 'an integer >= 1')
  _check(d.synthetic_max_pan >= 0, 'data.synthetic_max_pan', d.synthetic_max_pan, 'a speed >= 0 (px/frame)')
  _check(d.synthetic_num_objects >= 1, 'data.synthetic_num_objects', d.synthetic_num_objects, 'an integer >= 1')
  _check(d.synthetic_object_scale > 0, 'data.synthetic_object_scale', d.synthetic_object_scale, 'a scale > 0')
  _check(all(s > 0 for s in d.std), 'data.std', tuple(d.std), 'three positive values')
  if not d.prepare_if_missing:
    _check(bool(d.train_files), 'data.train_files', d.train_files,
           'a glob of TFRecord shards written by data_prep (e.g. /data/ssv2/train-*.tfrecord)')
  m = c.model
  _check(m.encoder in ENCODER_VARIANTS, 'model.encoder', m.encoder, f'one of {ENCODER_VARIANTS}')
  _check(0.0 <= m.drop_path < 1.0, 'model.drop_path', m.drop_path, 'a rate in [0, 1)')
  _check(m.dtype in DTYPES, 'model.dtype', m.dtype, f'one of {DTYPES}')
  if c.task == 'pretrain':
    _validate_pretrain(c)
  else:
    _validate_classification(c, num_devices)
  o = c.optim
  _check(o.base_lr > 0, 'optim.base_lr', o.base_lr, 'a positive learning rate')
  _check(0 <= o.min_lr <= o.base_lr, 'optim.min_lr', o.min_lr, f'in [0, optim.base_lr={o.base_lr}]')
  _check(isinstance(o.warmup_steps, int) and o.warmup_steps >= 0, 'optim.warmup_steps', o.warmup_steps,
         'an integer >= 0 (clamped to total_steps)')
  _check(0 <= o.b1 < 1, 'optim.b1', o.b1, 'a beta in [0, 1)')
  _check(0 <= o.b2 < 1, 'optim.b2', o.b2, 'a beta in [0, 1)')
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


def _validate_pretrain(c: ml_collections.ConfigDict) -> None:
  from m3video_jax import targets

  d, m = c.data, c.model
  _check(len(d.crop_scales) >= 1 and all(0 < s <= 1 for s in d.crop_scales), 'data.crop_scales',
         tuple(d.crop_scales), 'a non-empty tuple of scales in (0, 1]')
  _check(d.crop_max_distort >= 0, 'data.crop_max_distort', d.crop_max_distort, 'an integer >= 0')
  _check(isinstance(d.static_input, bool), 'data.static_input', d.static_input, 'True or False')
  _check(m.decoder_mode in DECODER_MODES, 'model.decoder_mode', m.decoder_mode, f'one of {DECODER_MODES}')
  _check(m.decoder_depth >= 1, 'model.decoder_depth', m.decoder_depth, 'an integer >= 1')
  _check(m.decoder_width > 0 and m.decoder_width % m.decoder_heads == 0, 'model.decoder_width', m.decoder_width,
         f'a positive multiple of model.decoder_heads={m.decoder_heads}')
  _check(c.mask.kind in MASK_KINDS, 'mask.kind', c.mask.kind, f'one of {MASK_KINDS}')
  _check(0.0 < c.mask.ratio < 1.0, 'mask.ratio', c.mask.ratio, 'a ratio in (0, 1)')
  targets.validate(c.target)


def _validate_classification(c: ml_collections.ConfigDict, num_devices: int | None) -> None:
  d, m, a, e = c.data, c.model, c.aug, c.eval
  if not d.prepare_if_missing:
    _check(bool(d.eval_files), 'data.eval_files', d.eval_files,
           'a glob of held-out TFRecord shards written by data_prep (e.g. /data/ssv2/val-*.tfrecord)')
  _check(d.sampling in SAMPLINGS, 'data.sampling', d.sampling, f'one of {SAMPLINGS}')
  _check(d.repeated_aug >= 1, 'data.repeated_aug', d.repeated_aug, 'an integer >= 1 (1 = off)')
  _check(d.batch_size % (d.repeated_aug * c.optim.grad_accum_steps) == 0, 'data.batch_size', d.batch_size,
         f'a multiple of data.repeated_aug={d.repeated_aug} x optim.grad_accum_steps={c.optim.grad_accum_steps} '
         '(all clips of a video go into the same micro-batch)')
  _check(m.num_classes >= 2, 'model.num_classes', m.num_classes, 'an integer >= 2')
  _check(m.head_init_scale > 0, 'model.head_init_scale', m.head_init_scale, 'a positive scale')
  _check(0 < a.crop_area[0] <= a.crop_area[1] <= 1, 'aug.crop_area', tuple(a.crop_area), '(lo, hi), 0 < lo <= hi <= 1')
  _check(0 < a.crop_aspect[0] <= a.crop_aspect[1], 'aug.crop_aspect', tuple(a.crop_aspect), '(lo, hi), 0 < lo <= hi')
  _check(a.randaug_num_ops >= 0, 'aug.randaug_num_ops', a.randaug_num_ops, 'an integer >= 0 (0 = no RandAugment)')
  _check(0 <= a.randaug_magnitude <= 10, 'aug.randaug_magnitude', a.randaug_magnitude, 'in [0, 10]')
  _check(a.randaug_magnitude_std >= 0, 'aug.randaug_magnitude_std', a.randaug_magnitude_std, 'a value >= 0')
  for name in ('randaug_prob', 'erase_prob', 'mix_prob', 'mix_switch_prob'):
    _check(0 <= a[name] <= 1, f'aug.{name}', a[name], 'a probability in [0, 1]')
  for name in ('mixup_alpha', 'cutmix_alpha'):
    _check(a[name] >= 0, f'aug.{name}', a[name], 'a value >= 0 (0 = off)')
  _check(0 <= a.label_smoothing < 1, 'aug.label_smoothing', a.label_smoothing, 'in [0, 1)')
  _check(e.test_temporal_views >= 1, 'eval.test_temporal_views', e.test_temporal_views, 'an integer >= 1')
  _check(e.test_spatial_views >= 1, 'eval.test_spatial_views', e.test_spatial_views, 'an integer >= 1')
  _check(e.batch_size > 0, 'eval.batch_size', e.batch_size, 'a positive integer')
  if num_devices is not None:
    _check(e.batch_size % num_devices == 0, 'eval.batch_size', e.batch_size, f'a multiple of {num_devices} devices')
  _check(0 < c.optim.layer_decay <= 1, 'optim.layer_decay', c.optim.layer_decay, 'in (0, 1] (1 = off)')


PRETRAIN_ARGS = dict(variant='B', mask_ratio=0.7, target='trajectory', traj_len=6, patch_norm=True,
                     decoder='joint', decoder_depth=1, tiny=False)


def apply_pretrain_args(c: ml_collections.ConfigDict, a: ml_collections.ConfigDict) -> None:
  """Applies the ablation switches shared by the pretraining configs (docs/design.md §3.5, paper Tables 1, 3, 5, 7, 8).

  `target` is one of `trajectory` (paper default), `trajectory_position_only`, `trajectory_shape_only`, `pixel`,
  `hog`, `trajectory_reference` (the released code's target: L=4, static RGB HOG, per-step norm, any-of-4 validity).
  """
  c.model.encoder = a.variant
  c.model.decoder_mode = a.decoder
  c.model.decoder_depth = a.decoder_depth
  c.mask.ratio = a.mask_ratio
  c.target.traj_len = a.traj_len
  # Paper Table 5: patch norm (the joint per-token normalisation of both parts) on or off.
  c.target.position_norm = c.target.shape_norm = 'joint' if a.patch_norm else 'none'
  kinds = {'trajectory': ('trajectory', True, True), 'trajectory_position_only': ('trajectory', True, False),
           'trajectory_shape_only': ('trajectory', False, True), 'pixel': ('pixel', False, False),
           'hog': ('hog', False, False), 'trajectory_reference': ('trajectory_reference', True, True)}
  if a.target not in kinds:
    raise ValueError(f'config arg target={a.target!r} is invalid: expected one of {sorted(kinds)}')
  c.target.kind, c.target.position, c.target.shape = kinds[a.target]
  if a.target == 'trajectory_reference':
    c.target.traj_len = 4
    c.target.position_norm = 'per_step' if a.patch_norm else 'none'  # The reference's PatchStd.


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


def classification_base(task: str = 'finetune') -> ml_collections.ConfigDict:
  """Fine-tuning recipe of paper Table 14 (= VideoMAE's), ViT-B, 16 frames at 224², before dataset specifics.

  `task='linear_probe'` gives the same recipe for a frozen encoder (eval-mode features, no drop path; only `head`
  trains, see `optim.py`).
  """
  c = _base(task)
  c.init_from = ''  # Pretrained encoder: a workdir/checkpoint of ours or one written by m3video_jax.import_weights.
  c.data.eval_files = ''  # Held-out shards (single-view validation during training, multi-view test at the end).
  c.data.batch_size = 1_024  # Clips per step = 512 videos x repeated_aug 2; the lr scales with videos per step.
  c.data.sampling = 'dense'  # 'dense': num_frames at frame_stride; 'segment': num_frames equal segments (TSN, SSV2).
  c.data.frame_stride = 4
  c.data.repeated_aug = 2  # Clips per video per step, each augmented independently (reference --num_sample 2).

  c.model.num_classes = 400
  c.model.drop_path = 0.1
  c.model.head_init_scale = 0.001

  c.aug = ml_collections.ConfigDict()
  c.aug.crop_area = (0.25, 1.0)  # Random resized crop: area fraction (reference --crop_min 0.25) ...
  c.aug.crop_aspect = (3 / 4, 4 / 3)  # ... and aspect ratio (log-uniform).
  c.aug.randaug_num_ops = 2  # Paper "RandAug (9, 0.5)" = timm rand-m9-mstd0.5 (2 ops); reference script m7-n4.
  c.aug.randaug_magnitude = 9.0
  c.aug.randaug_magnitude_std = 0.5
  c.aug.randaug_prob = 0.5
  c.aug.erase_prob = 0.25  # Random erasing (one box, same on every frame).
  c.aug.mixup_alpha = 0.8
  c.aug.cutmix_alpha = 1.0
  c.aug.mix_prob = 1.0
  c.aug.mix_switch_prob = 0.5
  c.aug.label_smoothing = 0.1

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 128  # Global clips per evaluation batch.
  c.eval.test_temporal_views = 2
  c.eval.test_spatial_views = 3

  c.optim.base_lr = 1e-3  # Scaled by videos per step / 256.
  c.optim.min_lr = 1e-6
  c.optim.layer_decay = 0.75  # Layer-wise lr decay (finetune only; 1 = off).
  return c


CLASSIFICATION_ARGS = dict(variant='B', recipe='paper', repeated_aug=2, tiny=False)


def classification_config(arg: str | None, *, task: str, num_train_videos: int, num_classes: int, sampling: str,
                          frame_stride: int, flip: bool, epochs: dict[str, int], test_temporal_views: dict[str, int],
                          lr: dict[str, float] | None = None) -> ml_collections.ConfigDict:
  """A paper fine-tuning / linear-probing config for one dataset.

  Args:
    arg: config arg string: `variant=S|B|L`, `recipe=paper|reference` (paper Table 14 vs the released scripts, see
      docs/design.md §5), `repeated_aug=N`, `tiny` (CPU-sized, for tests).
    task: 'finetune' or 'linear_probe'.
    num_train_videos: epoch length.
    epochs, test_temporal_views, lr: per recipe (`lr` defaults to 1e-3 for both).
  """
  a = parse_arg(arg, **CLASSIFICATION_ARGS)
  if a.recipe not in ('paper', 'reference'):
    raise ValueError(f"config arg recipe={a.recipe!r} is invalid: expected one of ('paper', 'reference')")
  c = classification_base(task)
  c.model.encoder = a.variant
  c.model.num_classes = num_classes
  c.data.update(sampling=sampling, frame_stride=frame_stride, flip=flip, repeated_aug=a.repeated_aug)
  c.data.batch_size = 512 * a.repeated_aug
  if a.recipe == 'reference':
    c.aug.randaug_num_ops, c.aug.randaug_magnitude = 4, 7.0
  c.optim.base_lr = (lr or {}).get(a.recipe, 1e-3)
  c.eval.test_temporal_views = test_temporal_views[a.recipe]
  if task == 'linear_probe':
    c.model.drop_path = 0.0  # The frozen encoder gives eval-mode features (the reference's drop path 0.1 is a bug).
    c.optim.layer_decay = 1.0  # Only the head trains; its layer-decay scale is 1.
  steps_per_epoch = num_train_videos / 512
  c.total_steps = epochs_to_steps(epochs[a.recipe], num_train_videos, 512)
  c.optim.warmup_steps = epochs_to_steps(5, num_train_videos, 512)
  c.checkpoint_every_steps = max(1, int(round(steps_per_epoch)))
  c.eval_every_steps = epochs_to_steps(5, num_train_videos, 512)
  if a.tiny:
    c.model.encoder = 'mu'
    c.data.update(num_frames=4, res=32, batch_size=8, repeated_aug=2, shuffle_buffer=16, frame_stride=1)
    c.eval.update(batch_size=8, test_temporal_views=2, test_spatial_views=3)
    c.total_steps, c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 4, 1, 2, 2
    c.optim.warmup_steps = 1
  return c
