"""Attentive probing on Kinetics-400: the frozen-encoder evaluation of V-JEPA (Bardes et al., 2024).

The frozen encoder, the pooler and the probe recipe of `attentive_probe_ssv2.py` (and what of V-JEPA's is not
reproduced, said there), with V-JEPA's published K400 probe settings (facebookresearch/jepa,
`configs/evals/vitl16_k400_16x8x3.yaml`): 20 epochs, 16 frames at stride 4 at 224², flip; test 8 temporal x 3
spatial views (V-JEPA's 8 segments x 3 views, pooled across segments there, averaged here).

Run:   python -m m3video_jax.main --config=configs/attentive_probe_k400.py[:data=<dataset dir>] --workdir=$WD \
           --config.init_from=$PRETRAIN_WD
Data:  `data=<dataset dir>` (default /data/k400) holds the train/ and validate/ splits that data prep writes
       for k400 (docs/data_prep.md).
Args:  variant=S|B|L, repeated_aug=N, data=<dir>, tiny (CPU-sized model, used by tests).
"""
from m3video_jax import config_lib

NUM_TRAIN_VIDEOS = 240_000


def get_config(arg=None):
  a = config_lib.parse_arg(arg, **config_lib.CLASSIFICATION_ARGS)
  c = config_lib.classification_base('attentive_probe')
  config_lib.apply_classification_args(c, a)
  config_lib.use_prepared_splits(c, a.data or '/data/k400', eval_split='validate')
  c.model.num_classes = 400
  c.data.update(sampling='dense', frame_stride=4, flip=True)
  c.eval.test_temporal_views = 8
  config_lib.attentive_probe_recipe(c)
  config_lib.epochs_schedule(c, num_train_videos=NUM_TRAIN_VIDEOS, epochs=20, warmup_epochs=0, checkpoint_epochs=1,
                             eval_epochs=5)
  if a.tiny:
    config_lib.shrink_for_tests(c)
  return c
