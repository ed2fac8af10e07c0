"""The drawing library (its CLI is `visualize.py`): trajectories on frames (paper Fig. 4/6): the primitives, the picture of a prepared record's stored
trajectories (`render_stored`) and the picture of what a pretraining model predicts (`prediction_picture`); used by
the `m3video_jax.visualize` CLI and by pretraining's TensorBoard pictures (`tasks.PretrainTask.pictures`).

Conventions: images are uint8 RGB `[H, W, 3]`; positions are `(x, y)` in the image's own pixels, x right, y down; a
trajectory is its start `p_0` and displacements `dp_j = p_{j+1} - p_j`, `j = 0 .. L-1`, so it passes through
`p_0 ... p_L`. Segment `j` is coloured from dark (early) to light (late) along `TIME_RAMP`; a trajectory that left the
frame (`valid` False) is drawn in `OUT_OF_FRAME` with a cross at its last position. Still trajectories (total path
shorter than `min_path` px) are drawn as a dot, so a static background does not hide the moving ones.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from m3video_jax.data import schema

# Dark blue -> magenta -> orange -> light yellow (a perceptually ordered ramp: dark = early, light = late).
TIME_RAMP = ((40, 20, 110), (160, 40, 150), (240, 120, 50), (255, 245, 150))
OUT_OF_FRAME = (255, 40, 40)
STILL_DOT = (110, 220, 255)
HIDDEN_SHADE = 0.3  # Hidden patches of a masked frame keep this much of their brightness.


def ramp_colour(u: float) -> tuple[int, int, int]:
  """The colour at `u` in [0, 1] along `TIME_RAMP` (0 = dark/early, 1 = light/late)."""
  u = float(np.clip(u, 0.0, 1.0)) * (len(TIME_RAMP) - 1)
  i = min(int(u), len(TIME_RAMP) - 2)
  a, b = np.array(TIME_RAMP[i], float), np.array(TIME_RAMP[i + 1], float)
  return tuple(int(round(v)) for v in a + (b - a) * (u - i))


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour upscale by an integer factor (keeps pixel edges visible for small model inputs)."""
  if scale == 1:
    return np.ascontiguousarray(image)
  return cv2.resize(image, (image.shape[1] * scale, image.shape[0] * scale), interpolation=cv2.INTER_NEAREST)


def _point(x: float, y: float, scale: int) -> tuple[int, int]:
  # Pixel centre (x, y) of the original image -> the centre of its block in the image upscaled `scale` times.
  return int(round((x + 0.5) * scale - 0.5)), int(round((y + 0.5) * scale - 0.5))


def draw_trajectories(image: np.ndarray, x0: np.ndarray, y0: np.ndarray, disp: np.ndarray, valid: np.ndarray, *,
                      scale: int = 1, min_path: float = 0.5, thickness: int = 1) -> np.ndarray:
  """Draws trajectories on a copy of `image` (upscaled `scale` times first).

  Args:
    image: uint8 RGB `[H, W, 3]`.
    x0, y0: float `[P]` start positions in `image` pixels.
    disp: float `[P, L, 2]` displacements `(dx, dy)` in `image` pixels.
    valid: bool `[P]`; False = the trajectory left the frame (drawn in `OUT_OF_FRAME`, cross at its end).
    scale: integer upscale of the output.
    min_path: trajectories whose path is shorter than this (px) are drawn as a dot at their start.
    thickness: line thickness in output pixels.

  Returns:
    uint8 RGB `[H * scale, W * scale, 3]`.
  """
  out = upscale(image, scale).copy()
  x0, y0 = np.asarray(x0, float).reshape(-1), np.asarray(y0, float).reshape(-1)
  disp = np.asarray(disp, float).reshape(len(x0), -1, 2)
  valid = np.asarray(valid, bool).reshape(-1)
  steps = disp.shape[1]
  path_len = np.linalg.norm(disp, axis=-1).sum(-1)
  pos = np.concatenate([np.stack([x0, y0], -1)[:, None], np.stack([x0, y0], -1)[:, None] + np.cumsum(disp, 1)], 1)
  colours = [ramp_colour((j + 0.5) / steps) for j in range(steps)]
  for p in range(len(x0)):
    if path_len[p] < min_path:
      if valid[p]:
        cv2.circle(out, _point(x0[p], y0[p], scale), max(1, thickness // 2), STILL_DOT, -1)
      continue
    for j in range(steps):
      colour = colours[j] if valid[p] else OUT_OF_FRAME
      cv2.line(out, _point(*pos[p, j], scale), _point(*pos[p, j + 1], scale), colour, thickness, cv2.LINE_AA)
    if not valid[p]:
      cx, cy = _point(*pos[p, -1], scale)
      r = max(2, scale)
      cv2.line(out, (cx - r, cy - r), (cx + r, cy + r), OUT_OF_FRAME, thickness)
      cv2.line(out, (cx - r, cy + r), (cx + r, cy - r), OUT_OF_FRAME, thickness)
  return out


def shade_hidden(image: np.ndarray, hidden: np.ndarray, patch: int) -> np.ndarray:
  """Darkens the hidden patches of a frame: `hidden` bool `[h, w]` over `patch x patch`-pixel patches."""
  out = image.astype(np.float32)
  cover = np.kron(np.asarray(hidden, np.float32), np.ones((patch, patch), np.float32))[..., None]
  out = out * (1 - cover * (1 - HIDDEN_SHADE)) + cover * 40.0 * (1 - HIDDEN_SHADE)
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def with_title(image: np.ndarray, title: str, height: int = 18) -> np.ndarray:
  """`image` below a black strip holding `title` in white."""
  strip = np.zeros((height, image.shape[1], 3), np.uint8)
  font_scale = 0.4 if height < 24 else 0.6
  cv2.putText(strip, title, (4, height - 5), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
  return np.concatenate([strip, image], 0)


def tile(rows: Sequence[Sequence[np.ndarray]], gap: int = 4) -> np.ndarray:
  """Tiles equally sized images (rows of columns) with `gap` px of black between them."""
  h, w = rows[0][0].shape[:2]
  ncols = max(len(r) for r in rows)
  out = np.zeros((len(rows) * (h + gap) - gap, ncols * (w + gap) - gap, 3), np.uint8)
  for i, row in enumerate(rows):
    for j, img in enumerate(row):
      if img.shape[:2] != (h, w):
        raise ValueError(f'grid: image ({i}, {j}) is {img.shape[:2]}, expected {(h, w)}')
      out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = img
  return out


def write_image(path: str, image: np.ndarray) -> None:
  """Writes uint8 RGB as PNG (or any format OpenCV knows by the extension)."""
  if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
    raise OSError(f'OpenCV could not write an image to {path!r} (is the extension .png/.jpg and the folder there?)')


def write_mp4(path: str, frames: np.ndarray, fps: float) -> None:
  """Writes pictures (uint8 RGB `[T, H, W, 3]`, one per video frame) as an MPEG-4 (mp4v) video."""
  height, width = frames.shape[1:3]
  out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), fps, (width, height))
  if not out.isOpened():
    raise OSError(f'OpenCV could not open an mp4v video for writing at {path!r}')
  try:
    for image in frames:
      out.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
  finally:
    out.release()


# Stored trajectories of one prepared record (`schema.decode` output).


def start_panel(rec: dict, start: int, *, scale: int, min_path: float) -> np.ndarray:
  """The frame of stored start `start` with all its trajectories drawn (upscaled `scale` times)."""
  g = rec['grid_step']
  gh, gw = rec['traj_valid'].shape[1:]
  x0, y0 = schema.start_positions(gh, gw, g)
  frame = rec['frames'][rec['traj_start_frames'][start]]
  disp = rec['traj_disp'][start].transpose(1, 2, 0, 3).reshape(gh * gw, -1, 2)  # [P, L, 2]
  return draw_trajectories(frame, x0.reshape(-1), y0.reshape(-1), disp, rec['traj_valid'][start].reshape(-1),
                           scale=scale, min_path=min_path)


def render_stored(rec: dict, output: str, *, panels: int = 4, scale: int = 2, min_path: float = 0.5) -> str:
  """Writes the picture (`.png`, a grid of `panels` starts) or video (`.mp4`, every start) of one record."""
  num_starts = len(rec['traj_start_frames'])
  if num_starts == 0:
    raise ValueError(f'record {rec["video_id"]!r} stores no trajectory start (video of {rec["num_frames"]} frames)')
  if output.lower().endswith('.mp4'):
    write_mp4(output, np.stack([start_panel(rec, i, scale=scale, min_path=min_path)
                                for i in range(num_starts)]), fps=4.0)
    return f'{num_starts} starts as video frames'
  chosen = sorted(set(np.linspace(0, num_starts - 1, min(panels, num_starts)).round().astype(int).tolist()))
  images = [with_title(start_panel(rec, i, scale=scale, min_path=min_path),
                       f'frame {rec["traj_start_frames"][i]}, L={rec["traj_len"]}') for i in chosen]
  cols = min(len(images), 4)
  write_image(output, tile([images[i:i + cols] for i in range(0, len(images), cols)]))
  return f'starts {chosen} of {num_starts}'


# What a pretraining model predicts (the `m3video_jax.visualize` module docstring describes the picture).


def _token_starts(grid: tuple[int, int, int], patch: int) -> tuple[np.ndarray, np.ndarray]:
  """Start positions `[N, K]` (x, y) in model px of each token's K trajectories (`k = row * kw + col`)."""
  t, h, w = grid
  g = schema.GRID_STEP
  kw = patch // g
  ys, xs = np.meshgrid(np.arange(h * kw), np.arange(w * kw), indexing='ij')
  x = (xs * g + g / 2).reshape(h, kw, w, kw).transpose(0, 2, 1, 3).reshape(h * w, kw * kw)
  y = (ys * g + g / 2).reshape(h, kw, w, kw).transpose(0, 2, 1, 3).reshape(h * w, kw * kw)
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
    shaded = shade_hidden(model_video[frame], hid.reshape(h, w), patch)
    light = shade_hidden(video[frame], np.zeros((h, w), bool), patch)

    def draw(disp, base):
      k = disp.shape[1]
      return draw_trajectories(base, xs[sel].reshape(-1), ys[sel].reshape(-1),
                               gain * disp[sel].reshape(len(sel) * k, -1, 2), valid[sel].reshape(-1),
                               scale=scale, thickness=max(1, scale // 2), min_path=0.5 * gain)

    cols = [('input', upscale(shaded, scale)), ('target', draw(target_disp, light))]
    if pred_disp is not None:
      cols.append(('predicted', draw(pred_disp, light)))
    cols.append(('original', upscale(video[frame], scale)))
    rows.append([with_title(img, f'{name} t={frame}') for name, img in cols])
  image = tile(rows)
  if gain != 1:
    title = f'{title}, motion drawn x{gain:g}' if title else f'motion drawn x{gain:g}'
  return with_title(image, title, height=22) if title else image


def prediction_picture(task, params: Any, batch: dict[str, np.ndarray], *, clip: int = 0, seed: int = 0,
                       scale: int = 4, gain: float = 1.0, title: str = '') -> np.ndarray:
  """Runs `task` (a `tasks.PretrainTask`) on one clip of a host batch and renders it (`render`)."""
  import jax

  one = {k: np.asarray(v[clip:clip + 1]) for k, v in batch.items() if not k.startswith('_')}
  out = jax.device_get(task.visualization_outputs(params, one, jax.random.key(seed)))
  c = task.config
  video = schema.denormalize_video(out['video'][0], c.data.mean, c.data.std)
  model_video = schema.denormalize_video(out['model_video'][0], c.data.mean, c.data.std)
  return render(video=video, model_video=model_video, hidden=out['hidden'][0], target_disp=out['target_disp'][0],
                valid=out['valid'][0], pred_disp=None if out['pred_disp'] is None else out['pred_disp'][0],
                grid=task.grid, patch_size=tuple(c.model.patch_size), scale=scale, gain=gain, title=title)


def _eval_clip(config, serialized: bytes) -> dict[str, np.ndarray]:
  """The input pipeline's evaluation clip of one record, as a host batch of 1."""
  import tensorflow as tf

  from m3video_jax.data import pretraining

  fn = pretraining.make_clip_fn(config, pretraining.ClipSpec.from_config(config), train=False)
  clip = fn(tf.constant(0, tf.int64), tf.constant(0, tf.int64), tf.constant(serialized))
  return {k: np.asarray(v)[None] for k, v in clip.items()}


def write_record_picture(task, params: Any, serialized: bytes, path: str, *, seed: int = 0, scale: int = 4,
                         gain: float = 1.0, step: int | None = None) -> str:
  """Renders the evaluation clip of one serialized record (`prediction_picture`) and writes it to `path`."""
  from m3video_jax.data import clip_device

  meta = schema.decode(serialized, decode_frames=False)
  need = clip_device.ClipLayout.from_config(task.config).traj_len  # traj_len, x frame stride at the input stride.
  if meta['traj_len'] < need:
    raise ValueError(f'record {meta["video_id"]!r} stores trajectories of L={meta["traj_len"]} steps; the '
                     f'checkpoint\'s target reads {need} (target.traj_len={task.config.target.traj_len}) and needs '
                     f'shards prepared with --traj_len >= {need}')
  title = (f'{meta["video_id"]} ({meta["label_name"] or "unlabelled"})' + (f', step {step}' if step is not None else '')
           + f', target {task.config.target.kind}')
  image = prediction_picture(task, params, _eval_clip(task.config, serialized), seed=seed, scale=scale, gain=gain,
                             title=title)
  write_image(path, image)
  return path
