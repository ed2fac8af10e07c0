"""CPU-scale reproduction of the paper's Fig. 3 (static-input toy experiment) and Table 1 (targets), docs/results.md.

Pretrain one target (prepares its synthetic videos and runs data prep into `<workdir>/data`, or `data.prepare_dir`,
when they are missing; re-running resumes):
  python -m m3video_jax.main --config=configs/motion_mini.py:target=trajectory_position_only,seed=0 --workdir=$WD
Fine-tune a pretrained encoder on the held-out probe videos (multi-view test top-1 in `$FT/eval_results.json`):
  python -m m3video_jax.main --config=configs/motion_mini.py:task=finetune,seed=0 --workdir=$FT --config.init_from=$WD
The whole table (all targets, static runs, linear probes, fine-tunes, 3 seeds; JSON, markdown and plots):
  python experiments/motion_mini.py --workdir=/tmp/motion_mini

Args:
  target  pixel (VideoMAE), hog (MaskFeat), trajectory_position_only, trajectory (position + trajectory-aligned HOG,
          the two parts weighted equally), trajectory_paper (the paper-faithful target: joint patch norm of both parts,
          eps 1e-6, every element weighted equally); the rest of paper Table 1 (hog+flow, hog+hof, hog+mbh,
          hog+trajectory_position = "HOG + Traj. w/o shape"), Table 16 (trajectory+hof+mbh) and Table 2's
          trajectory_no_interpolation (L = 2 steps at the input stride 2: the span of the L = 4 raw steps of
          `trajectory`, positions only at the frames the model sees). Every part at this regime's setting (position
          in px / 0.4 px per raw step, HOG raw, flow/HOF/MBH with the paper's joint patch norm), parts weighted
          equally (`target.balance_parts`).
  seed    model/mask/augmentation seed (the videos are fixed: data.synthetic_seed).
  static  the paper §3.1 toy experiment: the model sees one frame of each clip repeated; targets from the real clip.
  task    pretrain | finetune | linear_probe (the training-loop probe of configs/linear_probe_demo.py; the driver's
          Table 1 uses the faster feature probe of m3video_jax/probe.py) | attentive_probe (configs/
          attentive_probe_demo.py).
  steps   optimiser steps (default: 6,000 pretraining, 1,000 fine-tuning).
  probe_task  motion (default) | appearance: the held-out videos of a classification task are labelled by motion, or
          by appearance (object shape x colour family, random motion; data_prep.synthetic --task=appearance).
  smoke   a few videos and steps (CI), same code path.

The regime (why these values: docs/results.md): 96x96, 24-frame synthetic videos of one large textured object
(`object_scale=1.6`) whose motion is the class, static camera, prepared at 192 px with accurate flow (`dis_medium`,
camera-motion removal on); the `mu` encoder on 8 frames at stride 2, 64 px; the position target in px without patch
norm (the joint per-token norm maps a translation right to the same target as one up), and with a shape part the
two parts weighted equally (`target.balance_parts`: by element count the 144 shape values drown the 32 position ones
and the position part is not learned at this scale).
"""
from m3video_jax import config_lib
from m3video_jax import targets

TARGETS = ('pixel', 'hog', 'trajectory_position_only', 'trajectory', 'trajectory_paper', 'hog+flow', 'hog+hof',
           'hog+mbh', 'hog+trajectory_position', 'trajectory+hof+mbh', 'trajectory_no_interpolation')
PROBE_TASKS = ('motion', 'appearance')  # What defines the classes of the held-out probe videos.
PRETRAIN_VIDEOS = 800  # Generated; the 600 of the train split (data_prep.synthetic) are pretrained on.
PROBE_VIDEOS = 800  # Another seed: 600 probe-train, 200 probe-test videos, none seen in pretraining.


def _data(c, a) -> None:
  """The synthetic videos and the prep of the regime (shared by pretraining and the probe data)."""
  config_lib.add_demo_data(c)
  d = c.data
  d.synthetic_size = 96
  d.synthetic_frames = 24
  d.synthetic_max_pan = 0.0
  d.synthetic_num_objects = 1
  d.synthetic_object_scale = 1.6
  d.prep_short_side = 192  # 2x the videos: DIS flow is accurate there (docs/results.md, flow accuracy).
  d.prep_flow = 'dis_medium'
  d.prep_camera_motion = 'compose'
  d.update(num_frames=8, frame_stride=2, res=64, flip=False)
  if a.smoke:
    d.synthetic_num_videos = 16


def _pretrain(a):
  c = config_lib.pretrain_base()
  _data(c, a)
  c.seed = a.seed
  c.data.synthetic_seed = 0
  c.data.synthetic_num_videos = 16 if a.smoke else PRETRAIN_VIDEOS
  c.data.update(batch_size=8, shuffle_buffer=256)
  c.data.static_input = a.static
  # Every target's runs share the prepared videos (`data.prepare_dir` of the driver), so all are prepared with the maps
  # the flow/HOF/MBH targets read; the other targets' clips are the same with or without them.
  c.data.prep_motion_maps = 'hof,mbh,flow'
  c.model.encoder = 'mu'
  c.model.decoder_width, c.model.decoder_heads, c.model.decoder_depth = 64, 4, 1
  t = c.target
  t.traj_len = 4
  if a.target not in TARGETS:
    raise ValueError(f'config arg target={a.target!r} is invalid: expected one of {TARGETS}')
  if a.target == 'trajectory_paper':
    config_lib.apply_target_arg(c, 'trajectory')
  elif a.target == 'trajectory_no_interpolation':
    config_lib.apply_target_arg(c, 'trajectory')
    t.interpolate = False
    t.traj_len = 2  # At the input stride 2: the 4 raw frames the L = 4 dense target spans.
  else:
    config_lib.apply_target_arg(c, a.target)
  if a.target != 'trajectory_paper' and 'trajectory' in t.kind:
    t.position_norm = 'none'
    # Δp in px over 0.4 px, the RMS displacement per raw frame of this data (x 2 for a step of 2 raw frames): the
    # position part's zero-prediction loss is then ~1 per element, as for the normalised shape part.
    t.position_scale = 0.4 * (2 if t.interpolate is False else 1)
  t.balance_parts = a.target != 'trajectory_paper' and len(targets.part_dims(t)) > 1
  c.optim.base_lr = 1e-3 * 256 / c.data.batch_size  # 1e-3 after the batch/256 scaling.
  c.optim.min_lr = 1e-5
  c.total_steps = a.steps or 6_000
  c.optim.warmup_steps = min(200, c.total_steps // 5)
  c.log_every_steps = 250
  c.checkpoint_every_steps = 1_000
  c.keep_checkpoints = 1
  c.viz_every_steps = 1_000
  if a.smoke:
    c.total_steps = a.steps or 6
    c.optim.warmup_steps = 1
    c.log_every_steps, c.checkpoint_every_steps, c.viz_every_steps = 3, 6, 6
  return c


def _classify(a):
  c = config_lib.classification_base(a.task)
  _data(c, a)
  c.seed = a.seed
  if a.probe_task not in PROBE_TASKS:
    raise ValueError(f'config arg probe_task={a.probe_task!r} is invalid: expected one of {PROBE_TASKS}')
  c.data.synthetic_task = a.probe_task
  c.data.synthetic_seed = 1 if a.probe_task == 'motion' else 2  # Videos no pretraining run saw.
  c.data.synthetic_num_videos = 24 if a.smoke else PROBE_VIDEOS
  c.data.update(sampling='dense', batch_size=16, repeated_aug=1, shuffle_buffer=256)
  # The tiny-encoder recipe of the classification demos (docs/finetune.md): no RandAugment, mixup/cutmix or erasing.
  c.aug.update(crop_area=(0.5, 1.0), randaug_num_ops=0, erase_prob=0.0, mixup_alpha=0.0, cutmix_alpha=0.0)
  c.model.encoder = 'mu'
  c.model.num_classes = 8
  c.eval.update(batch_size=32, test_temporal_views=2, test_spatial_views=3)
  c.optim.base_lr = 5e-4 * 256 / c.data.batch_size
  c.total_steps = a.steps or 1_000
  c.optim.warmup_steps = min(50, c.total_steps // 5)
  c.log_every_steps = 100
  c.eval_every_steps = 0
  c.checkpoint_every_steps = c.total_steps
  c.keep_checkpoints = 1
  if a.task == 'linear_probe':  # Only the head trains: a larger lr, no weight decay.
    c.optim.base_lr = 3e-3 * 256 / c.data.batch_size
    c.optim.weight_decay = 0.0
  if a.task == 'attentive_probe':  # V-JEPA's probe optimiser (lr 1e-3, weight decay 0.01) at this batch size.
    c.optim.base_lr = 1e-3 * 256 / c.data.batch_size
    c.optim.weight_decay = 0.01
  if a.smoke:
    c.total_steps = a.steps or 4
    c.optim.warmup_steps = 1
    c.log_every_steps = c.checkpoint_every_steps = c.total_steps
    c.data.batch_size = c.eval.batch_size = 8
  return c


def get_config(arg=None):
  a = config_lib.parse_arg(arg, target='trajectory_position_only', seed=0, static=False, task='pretrain', steps=0,
                           smoke=False, probe_task='motion')
  if a.task == 'pretrain':
    return _pretrain(a)
  if a.task in ('finetune', 'linear_probe', 'attentive_probe'):
    return _classify(a)
  raise ValueError(f"config arg task={a.task!r} is invalid: expected 'pretrain', 'finetune', 'linear_probe' or "
                   "'attentive_probe'")
