"""Fine-tuning on Kinetics-400 (paper Table 14; docs/design.md §5).

ViT-B, 16 frames at stride 4 at 224², flip, AdamW (0.9, 0.999), lr 1e-3 x videos/256, layer decay 0.75, warmup 5
epochs, 100 epochs, batch 512 videos x repeated augmentation 2, drop path 0.1, label smoothing 0.1, mixup 0.8,
cutmix 1.0, RandAug (9, 0.5), random erasing 0.25; test 5 temporal x 3 spatial views.
`recipe=reference`: the released script instead (75 epochs, RandAug m7-n4, 7 x 3 test views).

Run:   python -m m3video_jax.main --config=configs/finetune_k400.py[:data=<dataset dir>] --workdir=$WD \
           --config.init_from=$PRETRAIN_WD
Data:  `data=<dataset dir>` (default /data/k400) holds the train/ and validate/ splits that data prep writes
       for k400 (docs/data_prep.md).
Args:  variant=S|B|L, recipe=paper|reference, repeated_aug=N, data=<dir>, tiny (CPU-sized model, used by tests).
"""
from m3video_jax import config_lib

NUM_TRAIN_VIDEOS = 240_000


def get_config(arg=None):
  a = config_lib.parse_arg(arg, **config_lib.CLASSIFICATION_ARGS)
  c = config_lib.classification_base('finetune')
  config_lib.apply_classification_args(c, a)
  config_lib.use_prepared_splits(c, a.data or '/data/k400', eval_split='validate')
  paper = a.recipe == 'paper'
  c.model.num_classes = 400
  c.data.update(sampling='dense', frame_stride=4, flip=True)
  c.eval.test_temporal_views = 5 if paper else 7
  config_lib.epochs_schedule(c, num_train_videos=NUM_TRAIN_VIDEOS, epochs=100 if paper else 75, warmup_epochs=5,
                             checkpoint_epochs=1, eval_epochs=5)
  if a.tiny:
    config_lib.shrink_for_tests(c)
  return c
