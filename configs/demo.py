"""Demo: masked motion modeling that learns motion, on a CPU, in about 5 minutes with its data prep.

Run:  python -m m3video_jax.main --config=configs/demo.py --workdir=/tmp/m3video_demo

When `<workdir>/data` holds no prepared shards, it first writes 480 synthetic videos (one large textured object whose
motion is one of 8 classes, static camera) and runs the Beam data-prep job on the 360 of their train split
(~1 min). It then pretrains the `mu` model for 4,000 steps (~2 min on 2 cores) on the target docs/results.md
measured best at this scale: trajectory position in px (no patch norm) + trajectory-aligned HOG, the two parts
weighted equally (not the paper's normalisation, which learns no position at this scale: docs/results.md). The
closing lines give the position and shape losses as ratios to the loss of predicting zero (1.00 = nothing learned),
where the checkpoints, TensorBoard events and a picture of a held-out clip (target vs predicted trajectories) are,
and the next commands. Re-running resumes.

Args: target = trajectory (default) | trajectory_position_only | trajectory_paper | pixel | hog (the targets of
configs/motion_mini.py; `target=pixel` is the VideoMAE baseline the probe demo compares with), steps=N,
num_videos=N (generated; 3/4 are pretrained on).
"""
from m3video_jax import config_lib
from m3video_jax.data import clip_device
from m3video_jax.data import schema

motion_mini = config_lib.sibling_config(__file__, 'motion_mini')

NEXT = (
    'python -m m3video_jax.main --config=configs/linear_probe_demo.py --workdir={workdir}_probe '
    '--config.init_from={workdir}',
    'python -m m3video_jax.main --config=configs/attentive_probe_demo.py --workdir={workdir}_attentive '
    '--config.init_from={workdir}',
    'python -m m3video_jax.main --config=configs/finetune_demo.py --workdir={workdir}_finetune '
    '--config.init_from={workdir}',
    'python -m m3video_jax.interop.export --checkpoint={workdir} --format=hf --output={workdir}_hf',
)


def get_config(arg=None):
  a = config_lib.parse_arg(arg, target='trajectory', steps=4000, num_videos=480)
  c = motion_mini.get_config(f'target={a.target},steps={a.steps}')
  c.data.synthetic_num_videos = a.num_videos
  if not set(clip_device.ClipLayout.from_config(c).maps) & set(schema.MOTION_MAPS):
    c.data.prep_motion_maps = ''  # The demo prepares its own videos: no motion maps unless its target reads them.
  c.keep_checkpoints = 2
  c.next_commands = NEXT
  return c
