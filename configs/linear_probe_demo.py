"""Demo: linear probe of the pretraining demo's tiny encoder on the synthetic motion classes, on a CPU, in minutes.

Run:  python -m m3video_jax.main --config=configs/demo.py --workdir=/tmp/m3video_demo  # pretrain first
      python -m m3video_jax.main --config=configs/linear_probe_demo.py --workdir=/tmp/m3video_probe_demo \
          --config.init_from=/tmp/m3video_demo

Same data as `finetune_demo.py` (prepared into the workdir if missing); the encoder is frozen (eval mode) and only the
linear head trains. Writes the 2 x 3-view test top-1/top-5 to `<workdir>/eval_results.json` (chance: 12.5 %; the
tiny demo pretraining's frozen features stay near chance, docs/finetune.md). Args: num_videos=N, steps=N.
"""
from m3video_jax import config_lib


def get_config(arg=None):
  return config_lib.classification_demo('linear_probe', arg)
