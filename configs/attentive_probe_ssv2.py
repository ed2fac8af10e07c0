"""Attentive probing on Something-Something V2: the frozen-encoder evaluation of V-JEPA (Bardes et al., 2024).

The pretrained ViT-B encoder is frozen and runs in eval mode (no drop path, no gradient, no optimiser state); an
attentive pooler (one learnable query cross-attending over all the encoder's tokens, then an MLP, width of the encoder,
its 12 heads) and a linear head train. Probe recipe as V-JEPA's published SSV2 probe (facebookresearch/jepa,
`configs/evals/vitl16_ssv2_16x2x3.yaml`): AdamW, lr 1e-3 at 256 videos per step (V-JEPA: batch 4 x 64 GPUs), weight
decay 0.01, no warmup, cosine to 0, 20 epochs, 16 frames at 224²; test 2 temporal x 3 spatial views. Not reproduced
here: V-JEPA's `attend_across_segments` (the pooler attends over the tokens of all the views of a video at once, in
training too); this probe classifies each view and averages the views' logits as the other tasks do. The input is
this project's SSV2 recipe (16 segments, no flip) with V-JEPA's lighter augmentation: random resized crop, no
RandAugment, mixup, cutmix or erasing.

Run:   python -m m3video_jax.main --config=configs/attentive_probe_ssv2.py[:data=<dataset dir>] --workdir=$WD \
           --config.init_from=$PRETRAIN_WD
Data:  `data=<dataset dir>` (default /data/ssv2) holds the train/ and validation/ splits that data prep writes
       for ssv2 (docs/data_prep.md).
Args:  variant=S|B|L, repeated_aug=N, data=<dir>, tiny (CPU-sized model, used by tests).
"""
from m3video_jax import config_lib

NUM_TRAIN_VIDEOS = 168_913


def get_config(arg=None):
  a = config_lib.parse_arg(arg, **config_lib.CLASSIFICATION_ARGS)
  c = config_lib.classification_base('attentive_probe')
  config_lib.apply_classification_args(c, a)
  config_lib.use_prepared_splits(c, a.data or '/data/ssv2', eval_split='validation')
  c.model.num_classes = 174
  c.data.update(sampling='segment', frame_stride=1, flip=False)
  config_lib.attentive_probe_recipe(c)
  config_lib.epochs_schedule(c, num_train_videos=NUM_TRAIN_VIDEOS, epochs=20, warmup_epochs=0, checkpoint_epochs=1,
                             eval_epochs=5)
  if a.tiny:
    config_lib.shrink_for_tests(c)
  return c
