"""The `m3video_jax.visualize` CLI (the drawing library is `drawing.py`): pictures of prepared data and of what a
pretrained model predicts.

Stored trajectories of one prepared video, drawn on its frames (check a data-prep run by eye):
  python -m m3video_jax.visualize --shards='/data/prep/train-*.tfrecord' --output=/tmp/traj.png
  python -m m3video_jax.visualize --shards='/data/prep/train-*.tfrecord' --video_id=<id> --output=/tmp/traj.mp4
  python -m m3video_jax.visualize --shards='/data/prep/train-*.tfrecord' --list
Each panel is the frame at one trajectory start with every trajectory from that start drawn on it (prep resolution,
upscaled `--scale` times, default 2): segments dark -> light in time, red with a cross = left the frame, a dot = still
(path shorter than `--min_path` px). A `.png` shows `--panels` starts spread over the video in a grid; an `.mp4` has one
frame per stored start. Without `--video_id` the first record of the first shard is drawn; `--list` prints the ids.

What the pretrained model predicts (paper Fig. 4/6), with `--checkpoint`: target vs predicted trajectories of the
hidden tokens.
  python -m m3video_jax.visualize --checkpoint=$WD --shards='/data/prep/val-*.tfrecord' [--video_id=ID] \
      --output=/tmp/prediction.png
The same picture is written to TensorBoard during pretraining every `config.viz_every_steps` steps (tag
`viz/trajectories`, one clip of the first training batch, a fixed mask). One row per tubelet time slot, four columns
(upscaled `--scale` times, default 4):
  input     the first frame of the tubelet as the encoder saw it, hidden patches darkened (with
            `data.static_input` this is the repeated frame);
  target    the target trajectories of the hidden tokens in model-input px (raw Δp, before normalisation), drawn
            from the tubelet's first frame over the original frame;
  predicted the position prediction of the same tokens, un-normalised with each token's own target statistics
            (`targets.position_statistics`: `p * scale + mean`), so it is comparable with `target` in px;
  original  the real frame.
Colours as above. Targets without a `trajectory` position part (`pixel`, `hog`, `trajectory_reference`) have no
prediction to draw: `predicted` is left out and `target` shows the stored trajectories.
From the CLI the clip is the pipeline's evaluation clip of the record (centre start, centre crop, no flip).
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator

from m3video_jax import cli
from m3video_jax import drawing
from m3video_jax.data import schema


def iterate_records(pattern: str) -> Iterator[tuple[str, bytes]]:
  """(shard, serialized record) for every record of the shards matching the comma-separated globs, in order.

  Raises:
    cli.UserError: naming a matched file that is not a readable TFRecord file.
  """
  import tensorflow as tf

  from m3video_jax.data import stream  # TF reads local or gs:// shards.

  try:
    shards = stream.list_shards(pattern)
  except FileNotFoundError:
    raise FileNotFoundError(f'--shards={pattern!r} matches no file; expected TFRecord shards written by '
                            '`python -m data_prep.extract`') from None
  for shard in shards:
    try:
      for raw in stream.iterate_shard_records(shard):
        yield shard, raw
    except tf.errors.OpError as e:  # DataLossError: not a TFRecord file, or a damaged one.
      reason = re.sub(r'\{\{.*?\}\}|\[Op:.*', '', e.message).strip()  # TF's op name and node, not the user's concern.
      raise cli.UserError(f'{shard} (matched by --shards={pattern!r}) is not a readable TFRecord file ({reason}); '
                          'expected TFRecord shards written by `python -m data_prep.extract`') from None


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


def define_flags(fv) -> None:
  from absl import flags

  flags.DEFINE_string('shards', None, 'Comma-separated globs of TFRecord shards written by data_prep.', flag_values=fv,
                      required=True)
  flags.DEFINE_string('video_id', None, 'Record to draw (default: the first one).', flag_values=fv)
  flags.DEFINE_string('output', None, 'Output .png (or .jpg); without --checkpoint also .mp4 (every start).',
                      flag_values=fv)
  flags.DEFINE_bool('list', False, 'Print the video ids of the shards and exit.', flag_values=fv)
  flags.DEFINE_integer('scale', None, 'Integer upscale of the frames (default: 2 stored, 4 predictions).',
                       flag_values=fv)
  flags.DEFINE_integer('panels', 4, 'Stored trajectories: starts shown in a .png.', flag_values=fv)
  flags.DEFINE_float('min_path', 0.5, 'Stored trajectories: paths shorter than this (px) are dots.', flag_values=fv)
  flags.DEFINE_string('checkpoint', None, 'Draw predictions: pretraining workdir (or its checkpoints/ or a step dir).',
                      flag_values=fv)
  flags.DEFINE_integer('step', None, 'Predictions: checkpoint step (default: the latest).', flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'Predictions: seed of the tube mask.', flag_values=fv)
  flags.DEFINE_float('gain', 1.0, 'Predictions: draw displacements this many times longer.', flag_values=fv)


def _main(f, rest) -> int:
  del rest
  if f.list:
    for shard, raw in iterate_records(f.shards):
      rec = schema.decode(raw, decode_frames=False)
      print(f'{rec["video_id"]}\t{rec["label_name"]}\t{rec["num_frames"]} frames\t{shard}')
    return 0
  kinds = ('.png', '.jpg') if f.checkpoint else ('.png', '.jpg', '.mp4')
  if not f.output or not f.output.lower().endswith(kinds):
    raise ValueError(f'--output={f.output!r} must end in {", ".join(kinds)}'
                     + ('' if f.output else ' (or pass --list)'))
  if f.panels < 1 or (f.scale is not None and f.scale < 1):
    raise ValueError(f'--panels={f.panels} and --scale={f.scale} must be >= 1')
  output = os.path.abspath(f.output)
  if f.checkpoint:
    return _draw_prediction(f, output)
  rec = find_record(f.shards, f.video_id)
  what = drawing.render_stored(rec, f.output, panels=f.panels, scale=f.scale or 2, min_path=f.min_path)
  cli.summary(f'wrote {output}: video {rec["video_id"]} ({rec["label_name"] or "unlabelled"}, '
              f'{rec["width"]}x{rec["height"]}, {rec["num_frames"]} frames, L={rec["traj_len"]}) from {rec["shard"]}, '
              f'{what}', [('picture', output)],
              [f"python -m m3video_jax.visualize --shards='{f.shards}' --list  # the other videos"])
  return 0


def _draw_prediction(f, output: str) -> int:
  from m3video_jax import checkpointing
  from m3video_jax import config_lib
  from m3video_jax import tasks

  ckpt_dir, step = checkpointing.resolve_checkpoint(f.checkpoint, f.step)
  config_path = os.path.join(os.path.dirname(ckpt_dir), 'config.json')
  saved = checkpointing.read_run_config(ckpt_dir)
  if saved is None:
    raise FileNotFoundError(f'{config_path} does not exist: --checkpoint must be a pretraining workdir (its '
                            'config.json says how the model and its targets were built)')
  config = config_lib.pretrain_config_from_dict(saved)
  task = tasks.get_task(config)
  if not isinstance(task, tasks.PretrainTask):
    raise ValueError(f'{config_path} is a {saved.get("task")!r} run; the visualisation needs a pretraining '
                     'checkpoint')
  params = checkpointing.load_params(ckpt_dir, step)
  for shard, raw in iterate_records(f.shards):
    meta = schema.decode(raw, decode_frames=False)
    if f.video_id is None or meta['video_id'] == f.video_id:
      break
  else:
    raise KeyError(f'--video_id={f.video_id!r} is in none of the shards matching {f.shards!r} (list the ids with '
                   f"`python -m m3video_jax.visualize --shards='{f.shards}' --list`)")
  drawing.write_record_picture(task, params, raw, f.output, seed=f.seed, scale=f.scale or 4, gain=f.gain, step=step)
  cli.summary(f'wrote {output}: video {meta["video_id"]} from {shard}, checkpoint {ckpt_dir} step {step}',
              [('picture', output)], [f'tensorboard --logdir {os.path.dirname(ckpt_dir)}  # the same picture over '
                                      'training (viz_every_steps)'])
  return 0


def main(argv=None) -> int:
  """The CLI (`m3video_jax.cli` convention); returns the exit status (1 = bad input)."""
  return cli.run(define_flags, _main, argv, doc=__doc__, prog='python -m m3video_jax.visualize',
                 errors=(cli.UserError, FileNotFoundError, KeyError, ValueError, OSError))


if __name__ == '__main__':
  sys.exit(main())
