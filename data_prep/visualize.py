"""Draws the stored trajectories of one prepared video on its frames, so a data-prep run can be checked by eye.

  python -m data_prep.visualize --shards='/data/prep/train-*.tfrecord' --output=/tmp/traj.png
  python -m data_prep.visualize --shards='/data/prep/train-*.tfrecord' --video_id=<id> --output=/tmp/traj.mp4

Each panel is the frame at one trajectory start with every trajectory from that start drawn on it (prep resolution,
upscaled `--scale` times): segments dark -> light in time, red with a cross = left the frame, a dot = still (path
shorter than `--min_path` px). A `.png` shows `--panels` starts spread over the video in a grid; an `.mp4` has one
frame per stored start. Without `--video_id` the first record of the first shard is drawn; `--list` prints the ids.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from data_prep import synthetic
from m3video_jax import drawing
from m3video_jax.data import schema


def iterate_records(pattern: str) -> Iterator[tuple[str, bytes]]:
  """(shard, serialized record) for every record of the shards matching the comma-separated globs, in order."""
  import tensorflow as tf  # Reads local or gs:// shards; TF is a core dependency of the input pipeline.

  tf.config.set_visible_devices([], 'GPU')
  shards = sorted({s for p in pattern.split(',') if p.strip() for s in tf.io.gfile.glob(p.strip())})
  if not shards:
    raise FileNotFoundError(f'--shards={pattern!r} matches no file; expected TFRecord shards written by '
                            '`python -m data_prep.extract`')
  for shard in shards:
    for raw in tf.data.TFRecordDataset(shard):
      yield shard, raw.numpy()


def find_record(pattern: str, video_id: str | None) -> dict:
  """The decoded record with `video_id` (the first record when None).

  Raises:
    KeyError: naming the id and a few of the ids that exist.
  """
  seen = []
  for shard, raw in iterate_records(pattern):
    rec = schema.decode(raw, decode_frames=False)
    if video_id is None or rec['video_id'] == video_id:
      out = schema.decode(raw)
      out['shard'] = shard
      return out
    if len(seen) < 5:
      seen.append(rec['video_id'])
  raise KeyError(f'--video_id={video_id!r} is in none of the shards matching {pattern!r}; ids there include {seen} '
                 '(--list prints them all)')


def start_panel(rec: dict, start: int, *, scale: int, min_path: float) -> np.ndarray:
  """The frame of stored start `start` with all its trajectories drawn (upscaled `scale` times)."""
  g = rec['grid_step']
  gh, gw = rec['traj_valid'].shape[1:]
  x0, y0 = schema.start_positions(gh, gw, g)
  frame = rec['frames'][rec['traj_start_frames'][start]]
  disp = rec['traj_disp'][start].transpose(1, 2, 0, 3).reshape(gh * gw, -1, 2)  # [P, L, 2]
  return drawing.draw_trajectories(frame, x0.reshape(-1), y0.reshape(-1), disp, rec['traj_valid'][start].reshape(-1),
                                   scale=scale, min_path=min_path)


def render(rec: dict, output: str, *, panels: int = 4, scale: int = 2, min_path: float = 0.5) -> str:
  """Writes the picture (`.png`, a grid of `panels` starts) or video (`.mp4`, every start) of one record."""
  num_starts = len(rec['traj_start_frames'])
  if num_starts == 0:
    raise ValueError(f'record {rec["video_id"]!r} stores no trajectory start (video of {rec["num_frames"]} frames)')
  if output.lower().endswith('.mp4'):
    synthetic.write_mp4(output, np.stack([start_panel(rec, i, scale=scale, min_path=min_path)
                                          for i in range(num_starts)]), fps=4.0)
    return f'{num_starts} starts as video frames'
  chosen = sorted(set(np.linspace(0, num_starts - 1, min(panels, num_starts)).round().astype(int).tolist()))
  images = [drawing.with_title(start_panel(rec, i, scale=scale, min_path=min_path),
                               f'frame {rec["traj_start_frames"][i]}, L={rec["traj_len"]}') for i in chosen]
  cols = min(len(images), 4)
  drawing.write_image(output, drawing.grid([images[i:i + cols] for i in range(0, len(images), cols)]))
  return f'starts {chosen} of {num_starts}'


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m data_prep.visualize', description=__doc__.split('\n')[0])
  p.add_argument('--shards', required=True, help='Comma-separated globs of TFRecord shards written by data_prep.')
  p.add_argument('--video_id', default=None, help='Record to draw (default: the first one).')
  p.add_argument('--output', default=None, help='Output .png (grid of starts) or .mp4 (every start).')
  p.add_argument('--panels', type=int, default=4, help='Starts shown in a .png.')
  p.add_argument('--scale', type=int, default=2, help='Integer upscale of the frames.')
  p.add_argument('--min_path', type=float, default=0.5, help='Trajectories shorter than this (px) are dots.')
  p.add_argument('--list', action='store_true', help='Print the video ids of the shards and exit.')
  args = p.parse_args(argv)
  if args.list:
    for shard, raw in iterate_records(args.shards):
      rec = schema.decode(raw, decode_frames=False)
      print(f'{rec["video_id"]}\t{rec["label_name"]}\t{rec["num_frames"]} frames\t{shard}')
    return 0
  if not args.output:
    p.error('--output is required (a .png or .mp4 path), unless --list')
  if not args.output.lower().endswith(('.png', '.jpg', '.mp4')):
    p.error(f'--output={args.output!r} must end in .png, .jpg or .mp4')
  if args.panels < 1 or args.scale < 1:
    p.error(f'--panels={args.panels} and --scale={args.scale} must be >= 1')
  try:
    rec = find_record(args.shards, args.video_id)
    what = render(rec, args.output, panels=args.panels, scale=args.scale, min_path=args.min_path)
  except (FileNotFoundError, KeyError, ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {args.output}: video {rec["video_id"]} ({rec["label_name"] or "unlabelled"}, '
        f'{rec["width"]}x{rec["height"]}, {rec["num_frames"]} frames, L={rec["traj_len"]}) from {rec["shard"]}, {what}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
