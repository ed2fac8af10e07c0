"""What the pretrained model predicts, drawn (paper Fig. 4/6): target vs predicted trajectories of the hidden tokens.

  python -m m3video_jax.visualize --checkpoint=$WD --shards='/data/prep/val-*.tfrecord' [--video_id=ID] \
      --output=/tmp/prediction.png

The same picture is written to TensorBoard during pretraining every `config.viz_every_steps` steps (tag
`viz/trajectories`, one clip of the first training batch, a fixed mask). One row per tubelet time slot, four columns:
  input     the first frame of the tubelet as the encoder saw it, hidden patches darkened (with
            `data.static_input` this is the repeated frame);
  target    the target trajectories of the hidden tokens in model-input px (raw Δp, before normalisation), drawn
            from the tubelet's first frame over the original frame;
  predicted the position prediction of the same tokens, un-normalised with each token's own target statistics
            (`targets.position_statistics`: `p * scale + mean`), so it is comparable with `target` in px;
  original  the real frame.
Colours: dark -> light in time, red with a cross = out of frame, a dot = still. Targets without a `trajectory`
position part (`pixel`, `hog`, `trajectory_reference`) have no prediction to draw: `predicted` is left out and
`target` shows the stored trajectories.
From the CLI the clip is the pipeline's evaluation clip of the record (centre start, centre crop, no flip).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

from m3video_jax import drawing

GRID_STEP = 8


def _to_uint8(video: np.ndarray, mean, std) -> np.ndarray:
  """ImageNet-normalised float `[..., 3]` -> uint8 RGB."""
  x = (np.asarray(video, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)) * 255.0
  return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _token_starts(grid: tuple[int, int, int], patch: int) -> tuple[np.ndarray, np.ndarray]:
  """Start positions `[N, K]` (x, y) in model px of each token's K trajectories (`k = row * kw + col`)."""
  t, h, w = grid
  kw = patch // GRID_STEP
  ys, xs = np.meshgrid(np.arange(h * kw), np.arange(w * kw), indexing='ij')
  x = (xs * GRID_STEP + GRID_STEP / 2).reshape(h, kw, w, kw).transpose(0, 2, 1, 3).reshape(h * w, kw * kw)
  y = (ys * GRID_STEP + GRID_STEP / 2).reshape(h, kw, w, kw).transpose(0, 2, 1, 3).reshape(h * w, kw * kw)
  return np.tile(x, (t, 1)), np.tile(y, (t, 1))


def render(*, video: np.ndarray, model_video: np.ndarray, hidden: np.ndarray, target_disp: np.ndarray,
           valid: np.ndarray, pred_disp: np.ndarray | None, grid: tuple[int, int, int],
           patch_size: tuple[int, int, int], scale: int = 4, gain: float = 1.0, title: str = '') -> np.ndarray:
  """The picture of one clip (module docstring), uint8 RGB.

  Args:
    video, model_video: uint8 `[T, H, W, 3]`, the real clip and what the encoder saw.
    hidden: bool `[N]`, True = hidden.
    target_disp: float `[N, K, L, 2]` raw target Δp in model px; valid: bool `[N, K]`.
    pred_disp: float `[N, K, L, 2]` un-normalised prediction (rows of visible tokens unused), or None.
    grid: token grid `(t, h, w)`; patch_size: tubelet `(pt, ph, pw)`.
    scale: integer upscale; gain: displacements are drawn `gain` times longer (short motions stay visible; the
      title says so); title: text above the first row.
  """
  t, h, w = grid
  pt, patch = patch_size[0], patch_size[1]
  xs, ys = _token_starts(grid, patch)
  rows = []
  for ti in range(t):
    frame = ti * pt
    tokens = np.arange(ti * h * w, (ti + 1) * h * w)
    hid = np.asarray(hidden[tokens], bool)
    sel = tokens[hid]
    shaded = drawing.shade_hidden(model_video[frame], hid.reshape(h, w), patch)
    light = drawing.shade_hidden(video[frame], np.zeros((h, w), bool), patch)

    def draw(disp, base):
      k = disp.shape[1]
      return drawing.draw_trajectories(base, xs[sel].reshape(-1), ys[sel].reshape(-1),
                                       gain * disp[sel].reshape(len(sel) * k, -1, 2), valid[sel].reshape(-1),
                                       scale=scale, thickness=max(1, scale // 2), min_path=0.5 * gain)

    cols = [('input', drawing.upscale(shaded, scale)), ('target', draw(target_disp, light))]
    if pred_disp is not None:
      cols.append(('predicted', draw(pred_disp, light)))
    cols.append(('original', drawing.upscale(video[frame], scale)))
    rows.append([drawing.with_title(img, f'{name} t={frame}') for name, img in cols])
  image = drawing.grid(rows)
  if gain != 1:
    title = f'{title}, motion drawn x{gain:g}' if title else f'motion drawn x{gain:g}'
  return drawing.with_title(image, title, height=22) if title else image


def prediction_picture(task, params: Any, batch: dict[str, np.ndarray], *, clip: int = 0, seed: int = 0,
                       scale: int = 4, gain: float = 1.0, title: str = '') -> np.ndarray:
  """Runs `task` (a `tasks.PretrainTask`) on one clip of a host batch and renders it (`render`)."""
  import jax

  one = {k: np.asarray(v[clip:clip + 1]) for k, v in batch.items() if not k.startswith('_')}
  out = jax.device_get(task.visualization_outputs(params, one, jax.random.key(seed)))
  c = task.config
  video = _to_uint8(out['video'][0], c.data.mean, c.data.std)
  model_video = _to_uint8(out['model_video'][0], c.data.mean, c.data.std)
  return render(video=video, model_video=model_video, hidden=out['hidden'][0], target_disp=out['target_disp'][0],
                valid=out['valid'][0], pred_disp=None if out['pred_disp'] is None else out['pred_disp'][0],
                grid=task.grid, patch_size=tuple(c.model.patch_size), scale=scale, gain=gain, title=title)


def _eval_clip(config, serialized: bytes) -> dict[str, np.ndarray]:
  """The input pipeline's evaluation clip of one record, as a host batch of 1."""
  import tensorflow as tf

  from m3video_jax.data import pipeline

  fn = pipeline.make_clip_fn(config, pipeline.ClipSpec.from_config(config), train=False)
  clip = fn(tf.constant(0, tf.int64), tf.constant(0, tf.int64), tf.constant(serialized))
  return {k: np.asarray(v)[None] for k, v in clip.items()}


def write_record_picture(task, params: Any, serialized: bytes, path: str, *, seed: int = 0, scale: int = 4,
                         gain: float = 1.0, step: int | None = None) -> str:
  """Renders the evaluation clip of one serialized record (`prediction_picture`) and writes it to `path`."""
  from m3video_jax.data import schema

  meta = schema.decode(serialized, decode_frames=False)
  need = task.config.target.traj_len
  if meta['traj_len'] < need:
    raise ValueError(f'record {meta["video_id"]!r} stores trajectories of L={meta["traj_len"]} steps; the '
                     f'checkpoint\'s target.traj_len={need} needs shards prepared with --traj_len >= {need}')
  title = (f'{meta["video_id"]} ({meta["label_name"] or "unlabelled"})' + (f', step {step}' if step is not None else '')
           + f', target {task.config.target.kind}')
  image = prediction_picture(task, params, _eval_clip(task.config, serialized), seed=seed, scale=scale, gain=gain,
                             title=title)
  drawing.write_image(path, image)
  return path


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m m3video_jax.visualize', description=__doc__.split('\n')[0])
  p.add_argument('--checkpoint', required=True, help='Pretraining workdir (or its checkpoints/ or a step dir).')
  p.add_argument('--shards', required=True, help='Comma-separated globs of TFRecord shards written by data_prep.')
  p.add_argument('--video_id', default=None, help='Record to draw (default: the first one).')
  p.add_argument('--output', required=True, help='Output .png.')
  p.add_argument('--step', type=int, default=None, help='Checkpoint step (default: the latest).')
  p.add_argument('--seed', type=int, default=0, help='Seed of the tube mask.')
  p.add_argument('--scale', type=int, default=4, help='Integer upscale of the frames.')
  p.add_argument('--gain', type=float, default=1.0, help='Draw displacements this many times longer.')
  args = p.parse_args(argv)
  if not args.output.lower().endswith(('.png', '.jpg')):
    p.error(f'--output={args.output!r} must end in .png or .jpg')
  from data_prep import visualize as prep_visualize
  from m3video_jax import checkpointing
  from m3video_jax import config_lib
  from m3video_jax import import_weights
  from m3video_jax import tasks

  try:
    ckpt_dir, step = checkpointing.resolve_checkpoint(args.checkpoint, args.step)
    config_path = os.path.join(os.path.dirname(ckpt_dir), 'config.json')
    saved = import_weights.read_run_config(ckpt_dir)
    if saved is None:
      raise FileNotFoundError(f'{config_path} does not exist: --checkpoint must be a pretraining workdir (its '
                              'config.json says how the model and its targets were built)')
    config = config_lib.pretrain_config_from_dict(saved)
    task = tasks.get_task(config)
    if not isinstance(task, tasks.PretrainTask):
      raise ValueError(f'{config_path} is a {config.task!r} run; the visualisation needs a pretraining checkpoint')
    params = checkpointing.load_params(ckpt_dir, step)
    rec = None
    for shard, raw in prep_visualize.iterate_records(args.shards):
      from m3video_jax.data import schema

      meta = schema.decode(raw, decode_frames=False)
      if args.video_id is None or meta['video_id'] == args.video_id:
        rec = (shard, raw, meta)
        break
    if rec is None:
      raise KeyError(f'--video_id={args.video_id!r} is in none of the shards matching {args.shards!r} (list the ids '
                     'with `python -m data_prep.visualize --shards=... --list`)')
    shard, raw, meta = rec
    write_record_picture(task, params, raw, args.output, seed=args.seed, scale=args.scale, gain=args.gain, step=step)
  except (FileNotFoundError, KeyError, ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {args.output}: video {meta["video_id"]} from {shard}, checkpoint {ckpt_dir} step {step}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
