"""Demo: fine-tune the pretraining demo's encoder on the synthetic motion classes, on a CPU, in minutes.

Run:  python -m m3video_jax.main --config=configs/demo.py --workdir=/tmp/m3video_demo  # pretrain first
      python -m m3video_jax.main --config=configs/finetune_demo.py --workdir=/tmp/m3video_demo_finetune \
          --config.init_from=/tmp/m3video_demo

When `<workdir>/data` holds no prepared shards, it first writes 800 synthetic videos of another seed (none seen in
pretraining; the pretraining demo's kind of video) and prepares their stratified train / held-out split (600 / 200
videos, frames only). It trains 1,000 steps, then logs the 2 x 3-view test top-1/top-5 on the held-out videos and
writes them to `<workdir>/eval_results.json` (chance 12.5 %). Without `init_from` the encoder trains from scratch.
The recipe is scaled down for the tiny encoder (configs/motion_mini.py, docs/finetune.md). Args: steps=N.
"""
from m3video_jax import config_lib

motion_mini = config_lib.sibling_config(__file__, 'motion_mini')


def get_config(arg=None):
  a = config_lib.parse_arg(arg, steps=1000)
  return motion_mini.get_config(f'task=finetune,steps={a.steps}')
