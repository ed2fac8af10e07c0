"""Feature extraction with a trained (or imported) encoder: a Python API and a CLI writing one `.npy` per video.

API:
  encoder = m3video_jax.load_encoder('/runs/m3v_ssv2')        # workdir, checkpoint dir, import output, .pth, HF dir
  tokens = encoder(video_uint8)                              # [B, T, H, W, 3] uint8 RGB -> [B, N, D] float32
  pooled = encoder.pooled(video_uint8)                       # [B, D]

The clip is scaled to [0, 1] and normalised with the ImageNet mean/std inside, as the reference does. Tokens are in
the `(t, h, w)` order of `models/vit.py`, `N = T/2 * H/16 * W/16` for the default tubelet; any `T, H, W` that are
multiples of the tubelet work (the position table is computed from `N`).

What the features are, by checkpoint:
* pretraining encoder (or any encoder with its final LayerNorm): tokens after the final LayerNorm; `pooled` = their
  mean.
* classifier (finetuned, reference mean-pooling model, no final LayerNorm): tokens of the last block; `pooled` =
  `fc_norm(mean(tokens))`, the input of the classification head; `encoder.logits(video)` gives the class logits.
* an encoder without final LayerNorm and without `fc_norm` (e.g. a transformers `use_mean_pooling` encoder): tokens of
  the last block, `pooled` = their mean.
* attentive probe (`task='attentive_probe'`): tokens of the last block; `pooled` = the attentive pooler's output (the
  mean of its queries), the input of the head; `encoder.logits(video)` gives the class logits.

CLI (temporal action detection, retrieval):
  python -m m3video_jax.interop.features --checkpoint=/runs/m3v_k400 --input=/data/videos.csv --output_dir=/data/feats \
      [--num_frames=16 --stride=4 --res=224 --batch_size=8 --pool=mean|tokens --overwrite]

Each video is decoded with `data_prep.video_io` (short side resized to `--res`, centre crop `res x res`), sampled
every `--stride` frames and cut into consecutive, non-overlapping clips of `--num_frames` sampled frames (clip `k`
covers source frames `[k * num_frames * stride, (k + 1) * num_frames * stride)`; the last, partial clip is padded with
its last frame, as the reference pads short videos). `<output_dir>/<path relative to the inputs' common folder>.npy`
(never outside `--output_dir`; the video's extension is kept, `x.mp4.npy`, where two videos differ only in it) holds
`[num_clips, D]` (`--pool=mean`) or `[num_clips, N, D]` (`--pool=tokens`) float32; `index.csv` lists video, feature
file, clips, decoded frames and fps; unreadable videos are skipped and listed in `failures.csv`. `features.json`
records the checkpoint (path and step) and the settings (`--num_frames/--stride/--res/--pool`) the features were
computed with: a re-run with the same ones keeps the existing `.npy` files (a killed job resumes), one with another
checkpoint or settings is refused unless `--overwrite`, which recomputes every listed video and starts `index.csv` and
`failures.csv` anew. Defaults of `--num_frames/--stride/--res` come from the checkpoint's config (`data.num_frames`,
`data.frame_stride`, `data.res`), else 16 / 4 / 224. The labels of a list file are not read.
"""
from __future__ import annotations

import collections
import csv
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from m3video_jax import cli
from m3video_jax.data import schema
from m3video_jax.interop import weights
from m3video_jax.interop import torch_mapping
from m3video_jax.models import classifier
from m3video_jax.models import layers
from m3video_jax.models import vit

DEFAULT_NUM_FRAMES, DEFAULT_STRIDE, DEFAULT_RES = 16, 4, 224


class Encoder:
  """A frozen encoder on uint8 clips. Build with `load_encoder`, or from a params tree of ours.

  Attributes:
    variant: encoder variant ('mu', 'S', 'B', 'L').
    patch_size: tubelet `(pt, ph, pw)`.
    width: token width `D`.
    kind: 'pretrain', 'classifier', 'attentive' or 'encoder' (the layout the parameters came in).
    final_norm: whether the tokens are after the encoder's final LayerNorm.
    config: the checkpoint's config dict, or None.
    source: what the parameters were loaded from (`load_encoder`: `checkpoint` path and orbax `step`), or None; the
      CLI records it beside the features.
    attention: the attention implementation (`layers.resolve_attention`; default 'auto', the best for the backend
      this runs on). The checkpoint's own `model.attention` is not used: it chose the speed on the training machine,
      and every implementation computes the same function of the same parameters.
  """

  def __init__(self, params: Mapping[str, Any], config: Mapping[str, Any] | None = None, *, attention: str = 'auto',
               source: Mapping[str, Any] | None = None):
    layout = torch_mapping.layout_of(params)
    self.kind = layout.kind
    self.final_norm = layout.final_norm
    self.variant, self.patch_size = weights.encoder_arch(params['encoder'])
    self.width = vit.VARIANTS[self.variant].width
    self.config = dict(config) if config else None
    self.source = dict(source) if source else None
    self.attention = attention
    self._model = vit.VideoViT(self.variant, self.patch_size, final_norm=self.final_norm, attention=attention)
    self._params = jax.device_put({k: params[k] for k in ('encoder', 'fc_norm', 'pooler', 'head') if k in params})
    self._pooler = None
    if 'pooler' in params:  # The pooler's heads are not in its weights: the run's config, else the encoder's.
      heads = ((self.config or {}).get('model') or {}).get('pool_heads') or vit.VARIANTS[self.variant].num_heads
      self._pooler = classifier.AttentivePooler(heads, num_queries=np.shape(params['pooler']['query'])[0],
                                                mlp='mlp' in params['pooler'])
    self._tokens_fn = jax.jit(self._tokens)
    self._pooled_fn = jax.jit(self._pooled)
    self._logits_fn = jax.jit(self._logits)

  def _tokens(self, params, video: jax.Array) -> jax.Array:
    x = schema.normalize_video(video)  # The reference's normalisation; exported models expect the same.
    return self._model.apply({'params': params['encoder']}, x)

  def _pooled(self, params, video: jax.Array) -> jax.Array:
    if self._pooler is not None:
      return self._pooler.apply({'params': params['pooler']}, self._tokens(params, video)).mean(axis=1)
    x = self._tokens(params, video).mean(axis=1)
    if 'fc_norm' in params:
      x = layers.layer_norm('fc_norm', jnp.float32).apply({'params': params['fc_norm']}, x)
    return x

  def _logits(self, params, video: jax.Array) -> jax.Array:
    return self._pooled(params, video) @ params['head']['kernel'] + params['head']['bias']

  def _check(self, video: Any) -> np.ndarray | jax.Array:
    if not hasattr(video, 'dtype'):
      video = np.asarray(video)
    if video.dtype != np.uint8:
      raise ValueError(f'video dtype is {video.dtype}; expected uint8 RGB [B, T, H, W, 3] (0..255, not normalised: '
                       'scaling and ImageNet normalisation happen inside)')
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f'video shape is {tuple(video.shape)}; expected [B, T, H, W, 3]')
    vit.token_grid(video.shape, self.patch_size)  # Raises on shapes that are not multiples of the tubelet.
    return video

  def __call__(self, video: Any) -> jax.Array:
    """uint8 RGB `[B, T, H, W, 3]` -> float32 tokens `[B, N, D]` (see the module docstring for which tokens)."""
    return self._tokens_fn(self._params, self._check(video))

  def pooled(self, video: Any) -> jax.Array:
    """uint8 RGB `[B, T, H, W, 3]` -> float32 `[B, D]`: mean token (then `fc_norm` for a classifier; the pooler's
    output for an attentive probe)."""
    return self._pooled_fn(self._params, self._check(video))

  def logits(self, video: Any) -> jax.Array:
    """Classifier checkpoints only: uint8 RGB `[B, T, H, W, 3]` -> class logits `[B, num_classes]`."""
    if 'head' not in self._params:
      raise ValueError(f'logits() needs a classifier checkpoint; this one is a {self.kind} checkpoint')
    return self._logits_fn(self._params, self._check(video))

  def __repr__(self) -> str:
    return (f'Encoder(variant={self.variant!r}, patch_size={self.patch_size}, kind={self.kind!r}, '
            f'final_norm={self.final_norm})')


def load_encoder(path: str, step: int | None = None, *, encoder_only: bool = False, allow_pickle: bool = False,
                 attention: str = 'auto') -> Encoder:
  """Loads a frozen `Encoder` from a checkpoint.

  Args:
    path: a training workdir, its `checkpoints/` dir or a step dir, an `import_weights` output, a `.pth` /
      `.safetensors` file or a transformers directory (see `weights.load_weights`).
    step: orbax checkpoint step (default: the latest).
    encoder_only: PyTorch sources: ignore decoder/classifier keys (needed for the reference's MME pretraining
      checkpoints, whose two-MLP-head decoder has no counterpart here).
    allow_pickle: PyTorch sources: unpickle a `.pth` fully (trusted files only).
    attention: attention implementation (`Encoder`; default 'auto').

  Returns:
    The encoder; `enc(video)` -> `[B, N, D]`, `enc.pooled(video)` -> `[B, D]`.
  """
  from m3video_jax import checkpointing

  source = os.path.abspath(path)
  if not weights.is_torch_source(path):
    # Resolved once, before reading: the step read is the one recorded (a workdir's latest moves on), and a workdir,
    # its checkpoints/ dir and a step dir of one checkpoint are recorded alike.
    source, step = checkpointing.resolve_checkpoint(path, step)
    path = source
  params, config = weights.load_weights(path, step, encoder_only=encoder_only, allow_pickle=allow_pickle)
  return Encoder(params, config, attention=attention, source={'checkpoint': source, 'step': step})


def centre_crop(frame: np.ndarray, size: int) -> np.ndarray:
  h, w = frame.shape[:2]
  if h < size or w < size:
    raise ValueError(f'frame {h}x{w} is smaller than the crop {size}')
  y, x = (h - size) // 2, (w - size) // 2
  return frame[y:y + size, x:x + size]


def clips_from_frames(frames: Iterator[np.ndarray], num_frames: int, stride: int, res: int) -> Iterator[np.ndarray]:
  """Consecutive, non-overlapping clips `[num_frames, res, res, 3]` of every `stride`-th frame (centre-cropped).

  The last partial clip is padded with its last frame. Yields nothing for an empty stream.
  """
  clip: list[np.ndarray] = []
  for i, frame in enumerate(frames):
    if i % stride:
      continue
    clip.append(centre_crop(frame, res))
    if len(clip) == num_frames:
      yield np.stack(clip)
      clip = []
  if clip:
    clip += [clip[-1]] * (num_frames - len(clip))
    yield np.stack(clip)


def _batches(clips: Iterator[np.ndarray], batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
  """Fixed-size batches (zero-padded at the end, so one compilation serves a whole job) and their real sizes."""
  batch: list[np.ndarray] = []
  for clip in clips:
    batch.append(clip)
    if len(batch) == batch_size:
      yield np.stack(batch), batch_size
      batch = []
  if batch:
    n = len(batch)
    batch += [np.zeros_like(batch[0])] * (batch_size - n)
    yield np.stack(batch), n


def video_features(encoder: Encoder, path: str, *, num_frames: int, stride: int, res: int, batch_size: int = 8,
                   pool: str = 'mean') -> tuple[np.ndarray, dict[str, Any]]:
  """Features of one video file (local or a `tf.io.gfile` URL).

  Returns:
    (features `[num_clips, D]` or `[num_clips, N, D]` float32, info with `frames_decoded` and `fps`).

  Raises:
    data_prep.video_io.BadVideoError: for an unreadable video.
  """
  from data_prep import video_io

  if pool not in ('mean', 'tokens'):
    raise ValueError(f'pool={pool!r} is unknown: expected "mean" or "tokens"')
  fn = encoder.pooled if pool == 'mean' else encoder
  outs = []
  with video_io.local_path(path) as local, video_io.VideoReader(local, short_side=res) as reader:
    for batch, n in _batches(clips_from_frames(iter(reader), num_frames, stride, res), batch_size):
      outs.append(np.asarray(fn(batch))[:n])
    info = {'frames_decoded': reader.frames_decoded, 'fps': reader.info.fps}
  if not outs:
    raise video_io.BadVideoError(video_io.TOO_SHORT, f'{path} decoded no frames')
  return np.concatenate(outs).astype(np.float32), info


def output_names(paths: Sequence[str], root: str | None = None) -> list[str]:
  """Feature file names, one per video, each a relative path without `..` (so it stays inside the output directory).

  A name is the video's path relative to `root` (an input directory) or else to the videos' common folder, with
  `.npy` for its extension (`root/a/b.mp4` -> `a/b.npy`; class sub-folders are kept). Local paths are made canonical
  first (`x/../y.mp4` is `y.mp4`). Videos whose names would collide because they differ only in their extension keep
  it (`dup.mp4` and `dup.avi` -> `dup.mp4.npy` and `dup.avi.npy`).

  Raises:
    ValueError: for a video listed twice, or one that is not below `root`.
  """
  from data_prep import inputs as inputs_lib

  paths = [inputs_lib.canonical(p) for p in paths]
  repeated = sorted(p for p, n in collections.Counter(paths).items() if n > 1)
  if repeated:
    raise ValueError(f'videos listed more than once: {repeated[:5]}')
  if root is not None:
    common = inputs_lib.canonical(root).rstrip('/') + '/'
    outside = [p for p in paths if not p.startswith(common)]
    if outside:
      raise ValueError(f'not every video is below root={root}: {outside[:5]}')
  else:
    dirs = [p.rsplit('/', 1)[0] + '/' if '/' in p else '' for p in paths]
    common = os.path.commonprefix(dirs)
    common = common[:common.rfind('/') + 1]
  rel = [p[len(common):] for p in paths]
  stems = [os.path.splitext(r)[0] for r in rel]
  per_stem = collections.Counter(stems)
  names = [(r if per_stem[s] > 1 else s) + '.npy' for r, s in zip(rel, stems)]
  for name in names:
    parts = name.split('/')
    if name.startswith('/') or '..' in parts or '' in parts:
      raise ValueError(f'feature file name {name!r} would leave the output directory')  # Only URLs are not normalised.
  return names


SETTINGS_FILE = 'features.json'


class OtherSettingsError(cli.UserError, ValueError):
  """The output directory holds features of another checkpoint or other settings (`check_settings`)."""


def check_settings(output_dir: str, settings: Mapping[str, Any], overwrite: bool) -> None:
  """Records `settings` (checkpoint, clip shape, pooling) in `<output_dir>/features.json`, or checks them against it.

  Existing `.npy` files are kept by a re-run, so they must be of the same checkpoint and settings: without
  `overwrite`, a directory whose features.json differs, or one holding features (`index.csv`) but no features.json, is
  refused. With `overwrite` the new settings are recorded and every video is recomputed.

  Raises:
    OtherSettingsError: naming each setting that differs, its old and its new value.
  """
  path = os.path.join(output_dir, SETTINGS_FILE)
  settings = json.loads(json.dumps(dict(settings)))  # As read back (tuples are lists).
  if os.path.exists(path) and not overwrite:
    with open(path) as f:
      old = json.load(f)
    changed = [f'{k} {old.get(k)!r} there, {v!r} now' for k, v in settings.items() if old.get(k) != v]
    if changed:
      raise OtherSettingsError(f'--output_dir={output_dir} holds features of another checkpoint or other settings '
                               f'({"; ".join(changed)}; {path}); pass --overwrite to recompute every video, or use '
                               'another --output_dir')
    return
  if os.path.exists(os.path.join(output_dir, 'index.csv')) and not os.path.exists(path) and not overwrite:
    raise OtherSettingsError(f'--output_dir={output_dir} holds features with no record of their checkpoint and '
                             f'settings (no {SETTINGS_FILE}); pass --overwrite to recompute every video, or use '
                             'another --output_dir')
  with open(path, 'w') as f:
    json.dump(settings, f, indent=2, sort_keys=True)


def extract(encoder: Encoder, inputs: Sequence[str], output_dir: str, *, num_frames: int, stride: int, res: int,
            batch_size: int = 8, pool: str = 'mean', overwrite: bool = False, root: str | None = None,
            show_progress: bool = True) -> dict[str, int]:
  """Writes one `.npy` per video plus `index.csv` (and `failures.csv` if any video failed) into `output_dir`.

  Args:
    encoder: the model.
    inputs: video paths (local or `tf.io.gfile` URLs).
    output_dir: local directory.
    num_frames, stride, res, batch_size, pool: see `video_features`.
    overwrite: recompute videos whose `.npy` exists (otherwise they are skipped, so a killed job can be rerun), and
      start `index.csv` and `failures.csv` anew.
    root: name the outputs relative to this folder (default: the videos' common folder).
    show_progress: tqdm progress bar.

  Returns:
    Counts: `done`, `skipped` (already present), `failed`.

  Raises:
    OtherSettingsError: when `output_dir` holds features of another checkpoint (`encoder.source`) or other settings
      and not `overwrite` (`check_settings`).
  """
  from tqdm import tqdm

  from data_prep import video_io

  names = output_names(inputs, root)
  os.makedirs(output_dir, exist_ok=True)
  if overwrite:  # Before the new settings are recorded: a killed --overwrite run must not leave old features behind.
    for name in [*names, 'index.csv', 'failures.csv']:
      if os.path.exists(os.path.join(output_dir, name)):
        os.remove(os.path.join(output_dir, name))
  check_settings(output_dir, {**(encoder.source or {'checkpoint': None, 'step': None}), 'num_frames': num_frames,
                              'stride': stride, 'res': res, 'pool': pool}, overwrite)
  index = os.path.join(output_dir, 'index.csv')
  failures, counts = [], {'done': 0, 'skipped': 0, 'failed': 0}
  bar = tqdm(list(zip(inputs, names)), unit='video', disable=not show_progress, desc='features')
  for path, name in bar:
    out = os.path.join(output_dir, name)
    if os.path.exists(out) and not overwrite:
      counts['skipped'] += 1
      continue
    try:
      feats, info = video_features(encoder, path, num_frames=num_frames, stride=stride, res=res,
                                   batch_size=batch_size, pool=pool)
    except video_io.BadVideoError as e:
      logging.warning('skipping %s: %s', path, e)
      failures.append((path, e.reason, e.message))
      counts['failed'] += 1
      continue
    os.makedirs(os.path.dirname(out), exist_ok=True)
    np.save(out, feats)
    # Indexed as soon as it is written, so a killed job's index lists every video it finished (the rerun skips them).
    _append_csv(index, INDEX_HEADER, [(path, name, feats.shape[0], info['frames_decoded'], info['fps'])])
    counts['done'] += 1
    bar.set_postfix(clips=feats.shape[0], failed=counts['failed'])
  if not os.path.exists(index):
    _append_csv(index, INDEX_HEADER, [])
  if failures:
    _append_csv(os.path.join(output_dir, 'failures.csv'), ('video', 'reason', 'message'), failures)
  return counts


INDEX_HEADER = ('video', 'features', 'num_clips', 'frames_decoded', 'fps')


def _append_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
  new = not os.path.exists(path)
  with open(path, 'a', newline='') as f:
    writer = csv.writer(f)
    if new:
      writer.writerow(header)
    writer.writerows(rows)


def list_videos(spec: str, data_root: str | None = None) -> list[str]:
  """The videos of `--input` as data prep lists them (`data_prep.inputs.list_inputs`), except that the labels of a list
  file are not read: features need none, so a list that gives a video two labels, or mixes class indices and names
  (which data prep refuses), is read too. Sorted, one entry per real file."""
  from data_prep import inputs as inputs_lib

  return [v.path for v in inputs_lib.list_inputs(spec, data_root=data_root, labels=False).videos]


def define_flags(fv) -> None:
  from absl import flags

  flags.DEFINE_string('checkpoint', None, 'Workdir / checkpoint dir / import output / .pth / transformers dir.',
                      flag_values=fv, required=True)
  flags.DEFINE_integer('step', None, 'Checkpoint step; default: the latest.', flag_values=fv)
  flags.DEFINE_string('input', None, 'Videos: a CSV/list file, a directory (recursive) or a glob.', flag_values=fv,
                      required=True)
  flags.DEFINE_string('data_root', None, 'Root for relative paths in a list file (default: its folder).',
                      flag_values=fv)
  flags.DEFINE_string('output_dir', None, 'Where the .npy files, index.csv and failures.csv go.', flag_values=fv,
                      required=True)
  flags.DEFINE_integer('num_frames', None, 'Frames per clip (default: data.num_frames of the checkpoint, else 16).',
                       flag_values=fv)
  flags.DEFINE_integer('stride', None, 'Temporal stride in frames (default: data.frame_stride, else 4).',
                       flag_values=fv)
  flags.DEFINE_integer('res', None, 'Short side and centre crop in px (default: data.res, else 224).', flag_values=fv)
  flags.DEFINE_integer('batch_size', 8, 'Clips per forward pass.', flag_values=fv)
  flags.DEFINE_enum('pool', 'mean', ['mean', 'tokens'], 'mean: [clips, D] per video; tokens: [clips, N, D].',
                    flag_values=fv)
  flags.DEFINE_bool('overwrite', False, 'Recompute every video (also those whose .npy exists, of another checkpoint or '
                    'settings) and start index.csv anew.', flag_values=fv)
  flags.DEFINE_bool('encoder_only', False, 'PyTorch checkpoints: ignore decoder/classifier keys.', flag_values=fv)


def _main(f, rest) -> int:
  del rest
  cli.writable_dir(f.output_dir, '--output_dir')
  encoder = load_encoder(f.checkpoint, f.step, encoder_only=f.encoder_only)
  data = (encoder.config or {}).get('data', {})
  num_frames = f.num_frames or data.get('num_frames') or DEFAULT_NUM_FRAMES
  stride = f.stride or data.get('frame_stride') or DEFAULT_STRIDE
  res = f.res or data.get('res') or DEFAULT_RES
  videos = list_videos(f.input, f.data_root)
  if not videos:
    raise ValueError(f'--input={f.input} lists no videos')
  output_dir = os.path.abspath(f.output_dir)
  print(f'{encoder}: {len(videos)} videos, clips of {num_frames} frames every {stride} at {res}x{res}, '
        f'pool={f.pool} -> {output_dir}')
  counts = extract(encoder, videos, f.output_dir, num_frames=num_frames, stride=stride, res=res,
                   batch_size=f.batch_size, pool=f.pool, overwrite=f.overwrite,
                   root=f.input if os.path.isdir(f.input) else None)
  failures = os.path.join(output_dir, 'failures.csv')
  cli.summary(f'done {counts["done"]}, already present {counts["skipped"]}, failed {counts["failed"]}'
              + (f' (see {failures})' if counts['failed'] else ''),
              [('features, one .npy per video', output_dir), ('index', os.path.join(output_dir, 'index.csv'))]
              + ([('failures', failures)] if counts['failed'] else []),
              [f"python -c \"import numpy as np; print(np.load('{output_dir}/<video>.npy').shape)\""])
  return 0


def main(argv=None) -> int:
  """The CLI (`m3video_jax.cli` convention); returns the exit status."""
  return cli.run(define_flags, _main, argv, doc=__doc__, prog='python -m m3video_jax.interop.features',
                 errors=weights.USER_ERRORS)


if __name__ == '__main__':
  sys.exit(main())
