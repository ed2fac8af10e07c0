"""Demo: attentive probe of the pretraining demo's frozen encoder on the synthetic motion classes, on a CPU, in minutes.

Run:  python -m m3video_jax.main --config=configs/demo.py --workdir=/tmp/m3video_demo  # pretrain first
      python -m m3video_jax.main --config=configs/attentive_probe_demo.py --workdir=/tmp/m3video_demo_attentive \
          --config.init_from=/tmp/m3video_demo

The data and schedule of `linear_probe_demo.py` (600 train / 200 held-out videos of a seed pretraining never saw,
1,500 steps); the encoder is frozen (eval mode) and an attentive pooler (one learnable query, cross-attention over the
encoder's tokens, an MLP; `model.pool_*`) and a linear head train with V-JEPA's probe optimiser (AdamW, lr 1e-3 at
this batch, weight decay 0.01, cosine). The closing lines give the 2 x 3-view test top-1 against chance (12.5 %);
`<workdir>/eval_results.json` holds it. Args: steps=N.
"""
from m3video_jax import config_lib

motion_mini = config_lib.sibling_config(__file__, 'motion_mini')


def get_config(arg=None):
  a = config_lib.parse_arg(arg, steps=1500)
  return motion_mini.get_config(f'task=attentive_probe,steps={a.steps}')
