"""M3Video pretraining on Something-Something V2 (paper Table 13 and §4).

ViT-B, 16 frames at 224², stride 2, tube mask 0.7, trajectory target with L = 6 and K = 4, joint decoder of depth 1,
batch 512, 400 epochs with 40 warmup epochs, no flip.

Run:   python -m m3video_jax.main --config=configs/pretrain_ssv2.py --workdir=$WD \
           --config.data.train_files='/data/ssv2/train/*.tfrecord'
Args:  variant=S|B|L, mask_ratio=0.9, target=pixel|hog|trajectory_position_only|trajectory_reference or a '+'
       combination of trajectory, trajectory_position, hog, flow, hof, mbh (hog+mbh, hog+trajectory_position,
       trajectory+hof+mbh; flow/hof/mbh need data prep --motion_maps), interpolate=paper|true|false (Table 2),
       density=dense|sparse_mean|sparse_max (Table 4), traj_len=4, patch_norm=false, decoder=separate,
       decoder_depth=2, tiny (CPU-sized model, used by tests).
       e.g. --config=configs/pretrain_ssv2.py:target=pixel,mask_ratio=0.9
"""
from m3video_jax import config_lib

NUM_TRAIN_VIDEOS = 168_913  # Epoch length; total and warmup steps are derived from it at batch 512.


def get_config(arg=None):
  a = config_lib.parse_arg(arg, **config_lib.PRETRAIN_ARGS)
  c = config_lib.pretrain_base()  # Paper Table 13: ViT-B, 16 frames at 224², tube mask 0.7, batch 512.
  c.data.frame_stride = 2
  c.data.flip = False
  config_lib.epochs_schedule(c, num_train_videos=NUM_TRAIN_VIDEOS, epochs=400, warmup_epochs=40, checkpoint_epochs=10,
                             videos_per_step=c.data.batch_size)
  config_lib.apply_pretrain_args(c, a)
  if a.tiny:
    config_lib.shrink_for_tests(c)
  return c
