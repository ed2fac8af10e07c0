"""Linear probing on Something-Something V2 (paper Table 12 / §4; docs/design.md §5).

The pretrained ViT-B encoder is frozen and runs in eval mode (no drop path); its mean-pooled tokens go through
`fc_norm` (kept at its init, a plain standardisation, as in the reference) and the linear `head`, the only trained
parameters. Same data recipe as the SSV2 fine-tune (16 segments, no flip, RandAug, mixup/cutmix, erasing), lr 1e-3 x
videos/256, warmup 5 epochs, 20 epochs (paper, following SVT; `recipe=reference`: 30), test 2 x 3 views.
Unlike the reference, drop path is off and features are eval-mode (its train-mode probing is a bug).

Run:   python -m m3video_jax.main --config=configs/linear_probe_ssv2.py[:data=<dataset dir>] --workdir=$WD \
           --config.init_from=$PRETRAIN_WD
Data:  `data=<dataset dir>` (default /data/ssv2) holds the train/ and validation/ splits that data prep writes
       for ssv2 (docs/data_prep.md).
Args:  variant=S|B|L, recipe=paper|reference, repeated_aug=N, data=<dir>, tiny (CPU-sized model, used by tests).
"""
from m3video_jax import config_lib

NUM_TRAIN_VIDEOS = 168_913


def get_config(arg=None):
  a = config_lib.parse_arg(arg, **config_lib.CLASSIFICATION_ARGS)
  c = config_lib.classification_base('linear_probe')
  config_lib.apply_classification_args(c, a)
  config_lib.use_prepared_splits(c, a.data or '/data/ssv2', eval_split='validation')
  paper = a.recipe == 'paper'
  c.model.num_classes = 174
  c.data.update(sampling='segment', frame_stride=1, flip=False)
  c.eval.test_temporal_views = 2
  config_lib.epochs_schedule(c, num_train_videos=NUM_TRAIN_VIDEOS, epochs=20 if paper else 30, warmup_epochs=5,
                             checkpoint_epochs=1, eval_epochs=5)
  if a.tiny:
    config_lib.shrink_for_tests(c)
  return c
