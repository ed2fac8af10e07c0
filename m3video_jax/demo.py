"""Everything demo-specific in one module: the demo configs' synthetic motion videos and their data prep (one
`data_prep` run per split, by subprocess, written into the workdir once), and the held-out record of the closing
picture. The tasks call in here only for configs with `data.prepare_if_missing` (`configs/demo.py`,
`configs/motion_mini.py` and the configs built on them); nothing else in the package knows about demos.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys

from m3video_jax import cli
from m3video_jax.data import prep_outputs


def data_dir(config, workdir: str) -> str:
  """Where a demo/experiment config prepares its data: `data.prepare_dir`, or `<workdir>/data`."""
  return os.path.abspath(config.data.prepare_dir or os.path.join(workdir, 'data'))


def prepare_pretraining(config, workdir: str, *, is_chief: bool = True) -> str:
  """Writes the synthetic videos and runs data prep on their train split into `<data dir>/tfrecords`, unless done.
  Only the chief process (`is_chief`) writes; the others just get the glob.

  Returns:
    The glob of the prepared train shards.
  """
  root = data_dir(config, workdir)
  videos_dir, shards_dir = os.path.join(root, 'videos'), os.path.join(root, 'tfrecords')
  if not is_chief:
    return os.path.join(shards_dir, 'train-*.tfrecord')
  return prepare_split(config, videos_dir, shards_dir, 'train', seed=config.data.synthetic_seed,
                       extract_args=(f'--traj_len={stored_steps(config)}',))


def stored_steps(config) -> int:
  """Trajectory steps the records must store for the config's target (`target.traj_len`, times the frame stride for
  trajectories at the input stride)."""
  from m3video_jax.data import clip_device

  return clip_device.ClipLayout.from_config(config).traj_len


def prepare_classification(config, workdir: str, *, is_chief: bool = True) -> tuple[str, str]:
  """Writes the synthetic motion videos and runs data prep on their train and val splits, unless already done.

  Only the chief process (`is_chief`) writes; the others just get the globs.

  Returns:
    (train shard glob, eval shard glob) under `data.prepare_dir` (default `workdir/data`).
  """
  root = data_dir(config, workdir)
  videos_dir = os.path.join(root, 'videos')
  globs = []
  for split in ('train', 'val'):
    shards_dir = os.path.join(root, f'tfrecords_{split}')
    if not is_chief:
      globs.append(os.path.join(shards_dir, f'{split}-*.tfrecord'))
      continue
    # Classification reads frames and labels only: the shortest trajectories, the fastest flow and no camera-motion
    # removal are cheapest.
    globs.append(prepare_split(config, videos_dir, shards_dir, split, seed=config.data.synthetic_seed,
                               extract_args=('--traj_len=1', '--camera_motion=none', '--flow=dis_fast')))
  return globs[0], globs[1]


def prepare_split(config, videos_dir: str, shards_dir: str, split: str, *, seed: int,
                  extract_args: tuple[str, ...] = ()) -> str:
  """Writes the synthetic videos (if their CSVs are missing) and extracts `split` into `shards_dir` (if not done).

  Args:
    config: a demo config (`data.synthetic_*`, `data.prep_short_side`).
    videos_dir: where `data_prep.synthetic` writes videos, `<split>.csv` and `label_map.json`.
    shards_dir: output of `data_prep.extract` for this split.
    split: 'train' or 'val' (CSV name and shard prefix).
    seed: synthetic-video seed.
    extract_args: extra `data_prep.extract` flags (they win over the config's `prep_flow`/`prep_camera_motion`/
      `prep_motion_maps`).

  Returns:
    The glob of the split's shards.
  """
  os.makedirs(videos_dir, exist_ok=True)
  d = config.data
  pattern = os.path.join(shards_dir, f'{split}-*.tfrecord')
  if prep_outputs.has_manifest(shards_dir):
    return pattern
  csv = os.path.join(videos_dir, f'{split}.csv')
  if not os.path.exists(csv):
    logging.info('demo: writing %d synthetic videos to %s', d.synthetic_num_videos, videos_dir)
    subprocess.run([sys.executable, '-m', 'data_prep.synthetic', f'--output_dir={videos_dir}',
                    f'--num_videos={d.synthetic_num_videos}', f'--size={d.synthetic_size}',
                    f'--frames={d.synthetic_frames}', f'--seed={seed}', f'--max_pan={d.synthetic_max_pan}',
                    f'--num_objects={d.synthetic_num_objects}', f'--object_scale={d.synthetic_object_scale}',
                    f'--task={d.get("synthetic_task", "motion")}', *_child_flags()],
                   check=True)
  logging.info('demo: extracting the %s split into %s', split, shards_dir)
  _extract(config, csv, videos_dir, shards_dir, split, *extract_args)
  return pattern


# The demo's videos are small (synthetic, ~1,000 frames/s in one process at 96 px): a split of fewer videos than this
# extracts faster in the job's own process than with a pool of Beam workers, which takes ~6 s to start (2 cores,
# 2026-12-07, in-process vs a pool: 64 videos 6.9 s vs 11.8 s, 360 videos 16.6 s vs 16.1 s; the break-even is lower
# on more cores).
IN_PROCESS_MAX_VIDEOS = 200


def _extract(config, csv: str, videos_dir: str, shards_dir: str, prefix: str, *extra: str, **run_kwargs) -> None:
  """Runs `data_prep.extract` on `csv` (paths relative to `videos_dir`) with the config's prep settings, in one
  process below `IN_PROCESS_MAX_VIDEOS` videos; `extra` flags win over them."""
  d = config.data
  with open(csv) as f:
    videos = sum(1 for line in f if line.strip()) - 1  # Less the header.
  in_process = ('--direct_running_mode=in_memory', '--direct_num_workers=1') if videos < IN_PROCESS_MAX_VIDEOS else ()
  subprocess.run([sys.executable, '-m', 'data_prep.extract', f'--input={csv}', f'--data_root={videos_dir}',
                  f'--output_dir={shards_dir}', f'--prefix={prefix}',
                  f'--label_map={os.path.join(videos_dir, prep_outputs.LABEL_MAP)}',
                  f'--short_side={d.prep_short_side}',
                  f'--flow={d.prep_flow}', f'--camera_motion={d.prep_camera_motion}',
                  *([f'--motion_maps={d.prep_motion_maps}'] if d.get('prep_motion_maps') else []), *_child_flags(),
                  *in_process, *extra], check=True,
                 **run_kwargs)


def _child_flags() -> tuple[str, ...]:
  """Flags for the data-prep tools this run starts: `--verbose` when the run has it (their library chatter is hidden
  otherwise), else `--nosummary` (the run's own summary says where the data went)."""
  return ('--verbose',) if cli.verbose_from_env() else ('--nosummary',)


def held_out_record(config, workdir: str) -> bytes | None:
  """One prepared record of a video the run did not train on, for the closing picture of a demo run: the first video
  of the synthetic videos' `val.csv` whose class is a translation (the motion easiest to check by eye), else its first
  video; prepared once, like the training data, into `<data dir>/tfrecords_picture`.

  Returns:
    The serialized record, or None when the videos have no `val.csv` (nothing held out).
  """
  root = data_dir(config, workdir)
  videos_dir, shards_dir = os.path.join(root, 'videos'), os.path.join(root, 'tfrecords_picture')
  val_csv = os.path.join(videos_dir, 'val.csv')
  if not os.path.exists(val_csv):
    return None
  if not prep_outputs.has_manifest(shards_dir):
    with open(val_csv) as f:
      header, *videos = f.read().splitlines() or ['']
    if not videos:
      return None
    rows = [header, next((r for r in videos if '_translate_' in r), videos[0])]
    os.makedirs(shards_dir, exist_ok=True)
    one = os.path.join(shards_dir, 'held_out.csv')
    with open(one, 'w') as f:
      f.write('\n'.join(rows) + '\n')
    _extract(config, one, videos_dir, shards_dir, 'picture', f'--traj_len={stored_steps(config)}',
             '--progress_interval_s=0', stdout=subprocess.DEVNULL)
  import glob

  from m3video_jax.data import stream  # TF: the caller's input pipeline has loaded it already.

  for shard in sorted(glob.glob(os.path.join(shards_dir, 'picture-*.tfrecord'))):
    first = next(stream.iterate_shard_records(shard), None)
    if first is not None:
      return first
  return None
