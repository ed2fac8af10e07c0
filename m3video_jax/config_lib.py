"""The shared base of every file in `configs/`: the base configs of each task, the switches several configs share,
arg-string parsing, the one `tiny` shrink, and the checks of the fields every task has.

A config file starts from `pretrain_base()` or `classification_base(task)` and spells out what its recipe changes.
`tasks.validate(config)` runs before anything is compiled: `validate_shared` here, then the task's own fields; it
raises `ConfigError` naming the field, its value and what is allowed.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import types
from typing import Any

import ml_collections

from m3video_jax import cli
from m3video_jax.data import schema

ENCODER_VARIANTS = ('mu', 'XS', 'S', 'B', 'L')
MASK_KINDS = ('tube', 'cube')
DECODER_MODES = ('joint', 'separate')
DTYPES = ('float32', 'bfloat16')
# `model.attention` (models/layers.py `ATTENTION_IMPLEMENTATIONS`, repeated here so configs stay cheap to import).
ATTENTION_IMPLEMENTATIONS = ('auto', 'explicit', 'xla', 'cudnn')
SAMPLINGS = ('dense', 'segment')


def sibling_config(config_file: str, name: str) -> types.ModuleType:
  """The config module `name` from the folder of `config_file` (a config's `__file__`), loaded by path, so configs
  that build on each other load from any working directory (`configs/` is not an installed package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'm3video_config_{name}', path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: {config_file} builds on the config {name!r} beside it')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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


def add_demo_data(c: ml_collections.ConfigDict) -> None:
  """The fields of demo and CPU-experiment configs only (`m3video_jax/demo.py`): write synthetic videos and run data
  prep into `data.prepare_dir` (default `<workdir>/data`) unless it already holds them, and train on those shards."""
  c.next_commands = ()  # Shell commands the closing summary suggests ('{workdir}' = this run's workdir).
  d = c.data
  d.prepare_if_missing = True
  d.prepare_dir = ''
  # In a multi-process run process 0 prepares the data; the others wait this long for it, then stop with an error.
  d.prepare_timeout_s = 3600.0
  d.synthetic_num_videos = 0
  d.synthetic_size = 0
  d.synthetic_frames = 0
  d.synthetic_seed = 0
  d.synthetic_max_pan = 1.5  # Camera pan bound of the synthetic videos, px/frame.
  d.synthetic_num_objects = 1  # Moving objects per video (data_prep.synthetic --num_objects).
  d.synthetic_object_scale = 1.0  # Their size (data_prep.synthetic --object_scale).
  d.synthetic_task = 'motion'  # What defines the classes: motion or appearance (data_prep.synthetic --task).
  d.prep_short_side = 0
  d.prep_flow = 'dis_fast'  # data_prep.extract --flow.
  d.prep_camera_motion = 'compose'  # data_prep.extract --camera_motion.
  d.prep_motion_maps = ''  # data_prep.extract --motion_maps ('' = none).


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
  # Warn (once) when a target part's loss on moving tokens stays >= 0.98 of predicting zero for this many logged
  # intervals after warmup: it learns nothing from the input (`metrics.LearningAlarm`). 0 = off.
  c.learn_alarm_intervals = 8

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
  c.data.mean = schema.IMAGENET_MEAN  # The normalisation of the model input (`schema.normalize_video`).
  c.data.std = schema.IMAGENET_STD

  c.model = ml_collections.ConfigDict()
  c.model.encoder = 'B'
  c.model.patch_size = (2, 16, 16)
  c.model.drop_path = 0.0
  c.model.dtype = 'float32'  # Compute dtype; params and the loss stay float32.
  # 'auto': the hand-written attention on CPU, jax.nn.dot_product_attention (XLA) on GPU/TPU; 'explicit', 'xla' or
  # 'cudnn' (cuDNN flash attention: CUDA GPUs, dtype bfloat16) force one (models/layers.py).
  c.model.attention = 'auto'
  c.model.remat = False  # Recompute each transformer block's activations in the backward pass (less memory).

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


def target_defaults() -> ml_collections.ConfigDict:
  """Every `config.target` field with its default: the paper-faithful trajectory target (docs/design.md §3); the
  values each field takes and their meaning are `m3video_jax/targets.py`'s, which checks them (`targets.validate`)."""
  c = ml_collections.ConfigDict()
  c.kind = 'trajectory'  # Components of targets.KINDS joined with '+'.
  # trajectory / trajectory_reference
  c.traj_len = 6  # L: steps per trajectory used (the first L of the stored ones). The reference variant uses 4.
  c.position = True  # Include the position part (displacements).
  c.shape = True  # Include the shape part (trajectory-aligned HOG; static tubelet HOG for trajectory_reference).
  # Per-token normalisation of each part (paper Table 5 "patch norm" = 'joint'); see the module docstring.
  c.position_norm = 'joint'  # One of targets.POSITION_NORMS ('per_step' or 'none' for trajectory_reference).
  c.position_eps = 1e-6  # px^2, added to the variance of the position values.
  c.position_scale = 1.0  # px: position_norm='none' divides the displacements by this.
  c.shape_norm = 'joint'  # One of targets.SHAPE_NORMS (trajectory kind).
  c.shape_eps = 1e-6  # Added to the variance of the HOG values.
  c.noise_floor = 'none'  # One of targets.NOISE_FLOORS: what happens to the position part of tokens that do not move.
  c.norm_valid_only = True  # trajectory: statistics over the token's valid trajectories only.
  # The loss weighs every counted element once (paper eq. 1; a part's share = its size) or, True, every part equally.
  c.balance_parts = False
  c.norm_eps = 1e-6  # eps of the other normalisations (reference PatchStd, VideoMAE pixel norm, hog_norm).
  # pixel
  c.pixel_norm = True  # VideoMAE's per-tubelet, per-colour normalisation of the target pixels.
  # hog and the shape part of trajectory_reference
  c.hog_frame = 1  # Frame of the tubelet whose HOG is the target (the reference uses the 2nd, index 1).
  c.hog_norm = False  # hog: normalise the 108 values per token (paper's HOG baseline: no normalisation).
  # Paper Table 2: None = each part at the paper's main setting; True / False = every part dense / only at the input
  # frames (module docstring).
  c.interpolate = ml_collections.config_dict.placeholder(bool)
  c.density = 'dense'  # One of targets.DENSITIES (paper Table 4): trajectories per token.
  # flow / hof / mbh parts: per-token normalisation (one of targets.MAP_NORMS) and its eps, in the part's units squared.
  for name in schema.MOTION_MAPS:
    c[f'{name}_norm'] = 'joint'
    c[f'{name}_eps'] = 1e-6
  return c


def pretrain_base() -> ml_collections.ConfigDict:
  """Paper defaults for M3Video pretraining (Table 13 and §4), ViT-B, 16 frames at 224², before dataset specifics."""
  c = _base('pretrain')
  # Multi-scale crop (reference GroupMultiScaleCrop): side scales relative to the short side, max scale-index distance.
  c.data.crop_scales = (1.0, 0.875, 0.75, 0.66)
  c.data.crop_max_distort = 1
  # Paper §3.1 toy experiment (Fig. 3): the model sees one frame of each clip repeated, the targets come from the
  # real clip. Applied on the device, after the input pipeline.
  c.data.static_input = False
  # Clips drawn from each record read (the repeated sampling of MAE-style video pretraining): R clips with their own
  # start, crop, flip and mask share one record's read and parse, and go into the same batch. 1 = one clip per record.
  c.data.clips_per_record = 1
  # Where a clip's arithmetic runs (data/clip_device.py): 'device' = the host decodes the crop and sends windows of
  # the stored trajectories and HOG maps, the jitted step resizes, flips, resamples and looks up; 'host' = all of it
  # in tf.data (same clips up to float rounding); 'auto' = 'device' on a GPU or TPU, 'host' on CPU (where the
  # "device" is the same cores, so moving work there frees none).
  c.data.clip_ops = 'auto'
  # Data prep's --short_side (0 = native size): the longest crop side, which sizes the windows the host sends.
  c.data.prep_short_side = 256
  c.data.hog_margin_cells = 4  # HOG map cells sent beyond the crop on each side (trajectories leaving the crop).

  c.model.decoder_width = 192
  c.model.decoder_depth = 1
  c.model.decoder_heads = 6
  c.model.decoder_mode = 'joint'  # 'separate' = two decoders, one per target part (paper Table 8).

  c.mask = ml_collections.ConfigDict()
  c.mask.kind = 'tube'
  c.mask.ratio = 0.7

  c.target = target_defaults()
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


# Defined with the CLI convention (`cli.py`), so that `targets`, which checks the target fields, raises the same type.
ConfigError = cli.ConfigError
check = cli.check_config


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


def check_tuple_fields(c: ml_collections.ConfigDict) -> None:
  """The `TUPLE_FIELDS` the config has: each a tuple of the right length and element type."""
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
    check(ok, field, tuple(node) if isinstance(node, list) else node, expected)


def validate_shared(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Checks the fields every task has (run cadence, clip, encoder, optimiser, mesh); each task's `validate` calls
  this first and then checks its own fields (`tasks.validate` checks a whole config).

  Args:
    config: a full training config.
    num_devices: global device count (batch divisibility is checked when given).

  Raises:
    ConfigError: naming the first invalid field, its value and the allowed values.
  """
  c = config
  check_tuple_fields(c)
  for name in ('total_steps', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    check(isinstance(c[name], int) and c[name] > 0, name, c[name], 'a positive integer')
  check(isinstance(c.eval_every_steps, int) and c.eval_every_steps >= 0, 'eval_every_steps', c.eval_every_steps,
        'an integer >= 0 (0 = evaluate only at the end)')
  check(isinstance(c.viz_every_steps, int) and c.viz_every_steps >= 0, 'viz_every_steps', c.viz_every_steps,
        'an integer >= 0 (0 = no pictures)')
  alarm = c.get('learn_alarm_intervals', 0)
  check(isinstance(alarm, int) and alarm >= 0, 'learn_alarm_intervals', alarm,
        'an integer >= 0 (logged intervals; 0 = no alarm)')
  check(all(isinstance(x, str) for x in c.get('next_commands', ())), 'next_commands', c.get('next_commands'),
        'a tuple of strings')
  d = c.data
  check(d.batch_size > 0, 'data.batch_size', d.batch_size, 'a positive integer')
  check(d.num_frames > 0, 'data.num_frames', d.num_frames, 'a positive integer')
  pt, ph, pw = c.model.patch_size
  check(pt > 0 and ph > 0 and ph == pw, 'model.patch_size', tuple(c.model.patch_size), '(t, p, p), all positive')
  check(d.num_frames % pt == 0, 'data.num_frames', d.num_frames, f'a multiple of the tubelet length {pt}')
  check(d.res > 0 and d.res % ph == 0, 'data.res', d.res, f'a positive multiple of the patch size {ph}')
  check(d.frame_stride >= 1, 'data.frame_stride', d.frame_stride, 'an integer >= 1')
  check(d.shuffle_buffer >= 1, 'data.shuffle_buffer', d.shuffle_buffer, 'an integer >= 1')
  check(all(s > 0 for s in d.std), 'data.std', tuple(d.std), 'three positive values')
  if 'prepare_if_missing' in d:
    _validate_demo_data(d)
  if not d.get('prepare_if_missing'):
    check(bool(d.train_files), 'data.train_files', d.train_files,
          'a glob of TFRecord shards written by data_prep (e.g. /data/ssv2/train-*.tfrecord)')
  m = c.model
  check(m.encoder in ENCODER_VARIANTS, 'model.encoder', m.encoder, f'one of {ENCODER_VARIANTS}')
  check(0.0 <= m.drop_path < 1.0, 'model.drop_path', m.drop_path, 'a rate in [0, 1)')
  check(m.dtype in DTYPES, 'model.dtype', m.dtype, f'one of {DTYPES}')
  # A config.json of an older run has neither field: the defaults apply (`model_options`).
  attention, remat = model_options(c)
  check(attention in ATTENTION_IMPLEMENTATIONS, 'model.attention', attention, f'one of {ATTENTION_IMPLEMENTATIONS}')
  check(attention != 'cudnn' or m.dtype == 'bfloat16', 'model.attention', attention,
        "'cudnn' together with model.dtype='bfloat16' (cuDNN flash attention has no float32 kernel), or 'auto' / "
        "'xla' / 'explicit' for float32")
  check(isinstance(remat, bool), 'model.remat', remat, 'True or False')
  if num_devices is not None and attention == 'cudnn':  # Validating for this machine: its backend must have cuDNN.
    import jax  # Only here: configs stay cheap to import.

    backend = jax.default_backend()
    check(backend == 'gpu', 'model.attention', attention,
          f"'auto', 'xla' or 'explicit' on the {backend} backend ('cudnn', cuDNN flash attention, needs a CUDA GPU)")
  o = c.optim
  check(o.base_lr > 0, 'optim.base_lr', o.base_lr, 'a positive learning rate')
  check(0 <= o.min_lr <= o.base_lr, 'optim.min_lr', o.min_lr, f'in [0, optim.base_lr={o.base_lr}]')
  check(isinstance(o.warmup_steps, int) and o.warmup_steps >= 0, 'optim.warmup_steps', o.warmup_steps,
        'an integer >= 0 (clamped to total_steps)')
  check(0 <= o.b1 < 1, 'optim.b1', o.b1, 'a beta in [0, 1)')
  check(0 <= o.b2 < 1, 'optim.b2', o.b2, 'a beta in [0, 1)')
  check(o.weight_decay >= 0, 'optim.weight_decay', o.weight_decay, 'a value >= 0')
  check(o.grad_clip_norm >= 0, 'optim.grad_clip_norm', o.grad_clip_norm, 'a value >= 0 (0 = off)')
  check(o.grad_accum_steps >= 1, 'optim.grad_accum_steps', o.grad_accum_steps, 'an integer >= 1')
  check(d.batch_size % o.grad_accum_steps == 0, 'data.batch_size', d.batch_size,
        f'a multiple of optim.grad_accum_steps={o.grad_accum_steps}')
  check(c.mesh.fsdp >= 1, 'mesh.fsdp', c.mesh.fsdp, 'an integer >= 1')
  check(c.mesh.data == -1 or c.mesh.data >= 1, 'mesh.data', c.mesh.data, '-1 (all remaining devices) or >= 1')
  if num_devices is not None:
    fsdp = c.mesh.fsdp
    data = num_devices // fsdp if c.mesh.data == -1 else c.mesh.data
    check(data * fsdp == num_devices, 'mesh', c.mesh.to_dict(), f'data x fsdp == the {num_devices} available devices')
    micro = d.batch_size // o.grad_accum_steps
    check(micro % num_devices == 0, 'data.batch_size', d.batch_size,
          f'a multiple of {num_devices} devices x optim.grad_accum_steps={o.grad_accum_steps}')


def model_options(config) -> tuple[str, bool]:
  """`(model.attention, model.remat)` of a config, with the defaults ('auto', False) for a config (e.g. a run's
  `config.json`) written before the fields existed."""
  m = config.model
  return m.get('attention', 'auto'), m.get('remat', False)


def _validate_demo_data(d: ml_collections.ConfigDict) -> None:
  check(d.synthetic_max_pan >= 0, 'data.synthetic_max_pan', d.synthetic_max_pan, 'a speed >= 0 (px/frame)')
  check(d.synthetic_num_objects >= 1, 'data.synthetic_num_objects', d.synthetic_num_objects, 'an integer >= 1')
  check(d.synthetic_object_scale > 0, 'data.synthetic_object_scale', d.synthetic_object_scale, 'a scale > 0')


def classification_base(task: str = 'finetune') -> ml_collections.ConfigDict:
  """Fine-tuning recipe of paper Table 14 (= VideoMAE's), ViT-B, 16 frames at 224², before dataset specifics.

  `task='linear_probe'` gives the same recipe for a frozen encoder: eval-mode features, so no drop path (the
  reference's drop path 0.1 there is a bug), and no layer decay (only `head` trains, `tasks.LinearProbeTask`).
  `task='attentive_probe'` is the same with the pooler's fields (`tasks.AttentiveProbeTask`); its configs set the
  V-JEPA probe recipe.
  """
  c = _base(task)
  c.init_from = ''  # Pretrained encoder: a workdir/checkpoint of ours or one written by interop.import_weights.
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
  if task in ('linear_probe', 'attentive_probe'):
    c.model.drop_path = 0.0
    c.optim.layer_decay = 1.0
  if task == 'attentive_probe':
    c.model.pool_heads = 0  # The pooler's heads; 0 = the encoder's.
    c.model.pool_queries = 1  # Learnable queries; the head classifies their mean.
    c.model.pool_mlp = True  # The residual MLP after the cross-attention (V-JEPA's probe); False = attention only.
  return c


def attentive_probe_recipe(c: ml_collections.ConfigDict) -> None:
  """V-JEPA's attentive-probe optimiser and augmentation (facebookresearch/jepa `configs/evals/*_16x*x3.yaml` and its
  frozen video-classification eval): AdamW, lr 1e-3 at 256 videos per step, cosine to 0 without warmup (the
  schedule's warmup is the caller's), weight decay 0.01, plain cross entropy; random resized crop of 30-100 % of the
  area, no RandAugment, mixup, cutmix or erasing."""
  c.optim.update(base_lr=1e-3, min_lr=0.0, weight_decay=0.01)
  c.aug.update(crop_area=(0.3, 1.0), randaug_num_ops=0, erase_prob=0.0, mixup_alpha=0.0, cutmix_alpha=0.0,
               label_smoothing=0.0)


PRETRAIN_ARGS = dict(variant='B', mask_ratio=0.7, target='trajectory', traj_len=6, patch_norm=True,
                     decoder='joint', decoder_depth=1, interpolate='paper', density='dense', tiny=False)
# Names of the `target` config arg's components (joined with '+'): (target.kind component, position, shape).
TARGET_ARG_COMPONENTS = {
    'trajectory': ('trajectory', True, True),
    'trajectory_position': ('trajectory', True, False), 'trajectory_position_only': ('trajectory', True, False),
    'trajectory_shape_only': ('trajectory', False, True),
    'trajectory_reference': ('trajectory_reference', True, True),
    'pixel': ('pixel', None, None), 'hog': ('hog', None, None),
    'flow': ('flow', None, None), 'hof': ('hof', None, None), 'mbh': ('mbh', None, None),
}
INTERPOLATE_ARGS = {'paper': None, 'true': True, 'false': False}


def apply_target_arg(c: ml_collections.ConfigDict, target: str) -> None:
  """Sets `c.target.kind`, `position` and `shape` from a `target` config arg: a name of `TARGET_ARG_COMPONENTS` or
  several joined with '+' (paper Table 1: `hog+flow`, `hog+hof`, `hog+mbh`, `hog+trajectory_position` = "HOG + Traj.
  w/o shape"; Table 16: `trajectory+hof+mbh`).

  Raises:
    ValueError: naming the unknown component and the known ones.
  """
  kinds, position, shape = [], False, False
  for name in target.split('+'):
    if name not in TARGET_ARG_COMPONENTS:
      raise ValueError(f'config arg target={target!r} is invalid: {name!r} is not one of '
                       f'{sorted(TARGET_ARG_COMPONENTS)} (several may be joined with +, e.g. hog+mbh)')
    kind, pos, shp = TARGET_ARG_COMPONENTS[name]
    kinds.append(kind)
    if pos is not None:
      position, shape = pos, shp
  c.target.kind = '+'.join(kinds)
  c.target.position, c.target.shape = position, shape


def apply_pretrain_args(c: ml_collections.ConfigDict, a: ml_collections.ConfigDict) -> None:
  """Applies the ablation switches of the paper pretraining configs (docs/design.md §3.5, paper Tables 1-8, 16).

  `target` is one of `trajectory` (paper default), `trajectory_position_only`, `trajectory_shape_only`, `pixel`,
  `hog`, `flow`, `hof`, `mbh`, `trajectory_reference` (the released code's target: L=4, static RGB HOG, per-step norm,
  any-of-4 validity), or a '+' combination (`apply_target_arg`); `interpolate=paper|true|false` (Table 2) and
  `density=dense|sparse_mean|sparse_max` (Table 4) set the target fields of those names.
  """
  c.model.encoder = a.variant
  c.model.decoder_mode = a.decoder
  c.model.decoder_depth = a.decoder_depth
  c.mask.ratio = a.mask_ratio
  c.target.traj_len = a.traj_len
  # Paper Table 5: patch norm (the joint per-token normalisation of both parts) on or off.
  c.target.position_norm = c.target.shape_norm = 'joint' if a.patch_norm else 'none'
  apply_target_arg(c, a.target)
  if a.interpolate not in INTERPOLATE_ARGS:
    raise ValueError(f'config arg interpolate={a.interpolate!r} is invalid: expected one of {sorted(INTERPOLATE_ARGS)}')
  c.target.interpolate = INTERPOLATE_ARGS[a.interpolate]
  c.target.density = a.density
  if a.target == 'trajectory_reference':
    c.target.traj_len = 4
    c.target.position_norm = 'per_step' if a.patch_norm else 'none'  # The reference's PatchStd.


# data=<dataset dir>: where `python -m data_prep.extract --output_dir=<dir> --split=...` wrote the splits.
CLASSIFICATION_ARGS = dict(variant='B', recipe='paper', repeated_aug=2, tiny=False, data='')
RECIPES = ('paper', 'reference')


def use_prepared_splits(c: ml_collections.ConfigDict, dataset_dir: str, *, eval_split: str,
                        train_split: str = 'train') -> None:
  """Points `data.train_files` / `data.eval_files` at the splits data prep wrote into `dataset_dir`
  (`<dataset_dir>/<split>/*.tfrecord`, docs/data_prep.md)."""
  root = dataset_dir.rstrip('/')
  c.data.train_files = f'{root}/{train_split}/*.tfrecord'
  c.data.eval_files = f'{root}/{eval_split}/*.tfrecord'


def apply_classification_args(c: ml_collections.ConfigDict, a: ml_collections.ConfigDict) -> None:
  """Applies the switches of the paper classification configs: `variant=S|B|L`, `repeated_aug=N` (512 videos per
  step either way) and `recipe=paper|reference` (paper Table 14 vs the released scripts, docs/design.md §5: the
  scripts use RandAugment m7-n4; their other differences are per dataset, in each config file)."""
  if a.recipe not in RECIPES:
    raise ValueError(f'config arg recipe={a.recipe!r} is invalid: expected one of {RECIPES}')
  c.model.encoder = a.variant
  c.data.repeated_aug = a.repeated_aug
  c.data.batch_size = 512 * a.repeated_aug
  if a.recipe == 'reference':
    c.aug.randaug_num_ops, c.aug.randaug_magnitude = 4, 7.0


def epochs_schedule(c: ml_collections.ConfigDict, *, num_train_videos: int, epochs: float, warmup_epochs: float,
                    checkpoint_epochs: float, eval_epochs: float = 0, videos_per_step: int = 512) -> None:
  """Sets `total_steps`, `optim.warmup_steps`, `checkpoint_every_steps` and `eval_every_steps` (0 = only at the end)
  from epochs of `num_train_videos` at `videos_per_step`."""
  c.total_steps = epochs_to_steps(epochs, num_train_videos, videos_per_step)
  c.optim.warmup_steps = epochs_to_steps(warmup_epochs, num_train_videos, videos_per_step) if warmup_epochs else 0
  c.checkpoint_every_steps = epochs_to_steps(checkpoint_epochs, num_train_videos, videos_per_step)
  c.eval_every_steps = epochs_to_steps(eval_epochs, num_train_videos, videos_per_step) if eval_epochs else 0


def shrink_for_tests(c: ml_collections.ConfigDict) -> None:
  """The `tiny` arg of the paper configs: the recipe at a model and clip small enough for CPU tests in seconds. The
  only place that shrinks a config (demo and experiment configs are small by design, `configs/motion_mini.py`)."""
  c.model.encoder = 'mu'
  c.data.update(num_frames=4, res=32, batch_size=8, shuffle_buffer=16, frame_stride=1)
  c.total_steps, c.log_every_steps, c.checkpoint_every_steps = 4, 1, 2
  c.optim.warmup_steps = 1
  if 'target' in c:  # Pretraining.
    c.model.decoder_width, c.model.decoder_heads, c.model.decoder_depth = 32, 2, 1
    c.target.traj_len = min(c.target.traj_len, 4)
  if 'eval' in c:  # Classification.
    c.data.repeated_aug = 2
    c.eval.update(batch_size=8, test_temporal_views=2, test_spatial_views=3)
    c.eval_every_steps = 2
