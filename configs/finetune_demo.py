"""Demo: fine-tune the pretraining demo's tiny encoder on the synthetic motion classes, on a CPU, in minutes.

Run:  python -m m3video_jax.main --config=configs/demo.py --workdir=/tmp/m3video_demo  # pretrain first
      python -m m3video_jax.main --config=configs/finetune_demo.py --workdir=/tmp/m3video_finetune_demo \
          --config.init_from=/tmp/m3video_demo

When `<workdir>/data` holds no prepared shards, it first writes 1,200 synthetic videos (seed 1, none seen in
pretraining; static camera; 8 motion classes, stratified 75/25 train/val split: 896 / 304) and runs data prep on both
splits (~1.5 min). It trains 2,400 steps (~2 min on 2 cores), then logs the 2 x 3-view test top-1/top-5 on the
held-out split and writes them to `<workdir>/eval_results.json` (chance: 12.5 %; measured ~61 %, docs/finetune.md).
Without `init_from` the encoder trains from scratch (it does as well: the tiny demo pretraining adds nothing
measurable here). The recipe is scaled down for the tiny model (see `config_lib.classification_demo`).
Args: num_videos=N, steps=N.
"""
from m3video_jax import config_lib


def get_config(arg=None):
  return config_lib.classification_demo('finetune', arg)
