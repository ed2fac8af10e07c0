"""Demo: linear probe of the pretraining demo's frozen encoder on the synthetic motion classes, on a CPU, in minutes.

Run:  python -m m3video_jax.main --config=configs/demo.py --workdir=/tmp/m3video_demo  # pretrain first
      python -m m3video_jax.main --config=configs/linear_probe_demo.py --workdir=/tmp/m3video_demo_probe \
          --config.init_from=/tmp/m3video_demo

Same data as `finetune_demo.py` (prepared into the workdir if missing: 600 train / 200 held-out videos of a seed
pretraining never saw); the encoder is frozen (eval mode) and only the linear head trains, 1,500 steps. The closing
lines give the 2 x 3-view test top-1 against chance (12.5 %); `<workdir>/eval_results.json` holds it. Compare with
the same probe of `configs/demo.py:target=pixel` (docs/results.md, "The demo commands"). Args: steps=N.
"""
from m3video_jax import config_lib

motion_mini = config_lib.sibling_config(__file__, 'motion_mini')


# The baseline to compare with: the same probe of a pixel-target (VideoMAE) demo pretraining.
NEXT = (
    'python -m m3video_jax.main --config=configs/demo.py:target=pixel --workdir=/tmp/m3video_demo_pixel  '
    '# the baseline: a pixel-target pretraining',
    'python -m m3video_jax.main --config=configs/linear_probe_demo.py --workdir=/tmp/m3video_demo_pixel_probe '
    '--config.init_from=/tmp/m3video_demo_pixel',
)


def get_config(arg=None):
  a = config_lib.parse_arg(arg, steps=1500)
  c = motion_mini.get_config(f'task=linear_probe,steps={a.steps}')
  c.next_commands = NEXT
  return c
