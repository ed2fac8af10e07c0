"""Demo: pretrain a tiny M3Video model on the built-in synthetic motion videos, on a CPU, in minutes.

Run:  python -m m3video_jax.main --config=configs/demo.py --workdir=/tmp/m3video_demo

Needs nothing else: when `<workdir>/data` holds no prepared shards, it writes the synthetic sample videos and runs the
data-prep job into it first. Re-running resumes from the last checkpoint.
"""
from m3video_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, num_videos=48, steps=300)
  c = config_lib.pretrain_base()
  c.data.prepare_if_missing = True
  c.data.synthetic_num_videos = a.num_videos
  c.data.synthetic_size = 96
  c.data.synthetic_frames = 40
  c.data.prep_short_side = 192  # Upscaled 2x: DIS flow tracks the small synthetic videos 3x more accurately.
  c.data.update(num_frames=8, frame_stride=2, res=64, batch_size=8, shuffle_buffer=64, flip=True)
  c.model.encoder = 'mu'
  c.model.decoder_width, c.model.decoder_heads, c.model.decoder_depth = 64, 4, 1
  c.target.traj_len = 4
  c.optim.base_lr = 1e-3 * 256 / c.data.batch_size  # 1e-3 after the batch/256 scaling.
  c.optim.min_lr = 1e-5
  c.optim.warmup_steps = min(20, a.steps // 5)
  c.total_steps = a.steps
  c.log_every_steps = 10
  c.checkpoint_every_steps = 100
  c.keep_checkpoints = 2
  return c
