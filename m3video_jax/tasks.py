"""Tasks on the one training loop; `get_task(config)` is the only place that looks at `config.task`.

Each task owns everything that differs between tasks: the members of the `Task` protocol below.

`pretrain`: masked motion modeling (M3Video) or the pixel/HOG baselines, selected by `config.target`.
`finetune`: action classification with the whole network trained (paper Table 14).
`linear_probe`: the same classifier on a frozen encoder; only the head trains (paper Table 12).
`attentive_probe`: a frozen encoder, an attentive pooler (cross-attention from learnable queries) and a linear head
  train (V-JEPA's frozen evaluation).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any, Callable, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from m3video_jax import config_lib
from m3video_jax import evaluation
from m3video_jax import losses
from m3video_jax import masking
from m3video_jax import metrics as metrics_lib
from m3video_jax import mixup
from m3video_jax import optim
from m3video_jax import targets
from m3video_jax.data import clip_device
from m3video_jax.data import schema
from m3video_jax.models import classifier
from m3video_jax.models import m3video
from m3video_jax.models import vit

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
Params = Any  # A pytree of arrays: the model's params (`{'encoder': ..., 'decoder' | 'head': ...}`).
Batch = dict[str, jax.Array]


@runtime_checkable
class Task(Protocol):
  """What the training loop (`train_lib`), the evaluation CLI and the benchmarks ask of a task."""
  config: ml_collections.ConfigDict

  def validate(self, num_devices: int | None = None) -> None:
    """Checks its config fields after the shared ones (`config_lib.validate_shared`); raises `ConfigError`."""

  @property
  def model(self) -> Any:
    """The Flax module."""

  def init_params(self, rng: jax.Array) -> Params:
    """Fresh params of `model`."""

  @property
  def videos_per_step(self) -> int:
    """Videos per optimiser step (the lr is scaled by it)."""

  def optimizer(self) -> optax.GradientTransformation:
    """AdamW over its trainable params."""

  def lr_schedule(self) -> optax.Schedule:
    """The learning rate per step."""

  def model_flops_per_clip(self) -> float:
    """Training FLOPs of one clip, matmuls only, forward + backward (what MFU counts)."""

  def prepare_demo_data(self, workdir: str, *, is_chief: bool) -> None:
    """Demo/experiment configs: its synthetic data, prepared once (`demo.py`)."""

  def make_train_iterator(self, start_step: int) -> Any:
    """Its training input from `start_step` on (`data/pretraining.py`, `data/classification.py`)."""

  def loss_fn(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """The loss and its metrics inside the jitted step (the uint8 clips are normalised here, on the device)."""

  def evaluate(self, params: Params, *, mesh: Any, workdir: str, step: int, final: bool) -> dict[str, float]:
    """Evaluation during and after training (none for pretraining)."""

  def evaluate_checkpoint(self, workdir: str, *, step: int | None = None,
                          views: tuple[int, int] | None = None) -> tuple[dict[str, float], str, int]:
    """The multi-view test of a run's checkpoint (the `m3video_jax.evaluate` CLI)."""

  def pictures(self, params: Params, host_batch: dict[str, np.ndarray], step: int) -> dict[str, np.ndarray]:
    """TensorBoard images every `config.viz_every_steps`."""

  def summary_lines(self, metrics: dict[str, float]) -> list[str]:
    """The closing summary's lines about what was learned."""

  def closing_outputs(self, params: Params, workdir: str) -> dict[str, str]:
    """Files written at the end of a run: `{what: path}`."""

  def result_line(self, workdir: str) -> str | None:
    """The run's one-line result, if it has one (the test accuracy of a classification run)."""


def static_clip(rng: jax.Array, video: jax.Array) -> jax.Array:
  """The toy experiment of paper §3.1: every frame of each clip replaced by one of its frames, drawn at random.

  Args:
    rng: PRNG key (one frame index per clip).
    video: `[B, T, H, W, C]`.

  Returns:
    `[B, T, H, W, C]` whose T frames all equal frame `f_b ~ U{0..T-1}` of clip b. The targets stay those of the real
    clip, and the tube mask hides the same positions in every frame, so hidden content appears in no frame.
  """
  b, t = video.shape[:2]
  frame = jax.random.randint(rng, (b,), 0, t)
  one = jnp.take_along_axis(video, frame[:, None, None, None, None], axis=1)  # [B, 1, H, W, C]
  return jnp.broadcast_to(one, video.shape)


def clip_shape(config, batch_size: int) -> tuple[int, ...]:
  d = config.data
  return (batch_size, d.num_frames, d.res, d.res, 3)


def example_batch(config, batch_size: int) -> dict[str, np.ndarray]:
  """Zeros shaped like a training batch of the config's task as its input pipeline yields it (for init, eval_shape and
  compile checks): pretraining clips with their trajectory targets, or classification clips with labels."""
  d = config.data
  if config.task != 'pretrain':
    return {'video': np.zeros(clip_shape(config, batch_size), np.uint8), 'label': np.zeros((batch_size,), np.int32)}
  layout = clip_device.ClipLayout.from_config(config)
  if layout.on_device:
    return clip_device.example_raw(layout, batch_size)
  pt = config.model.patch_size[0]
  tt, g, steps = d.num_frames // pt, d.res // schema.GRID_STEP, layout.traj_len
  return {
      **clip_device.example_maps(layout, batch_size),
      'video': np.zeros(clip_shape(config, batch_size), np.uint8),
      'traj_disp': np.zeros((batch_size, tt, g, g, steps, 2), np.float32),
      'traj_valid': np.zeros((batch_size, tt, g, g), bool),
      'traj_hog': np.zeros((batch_size, tt, g, g, steps, schema.HOG_BINS), np.float32),
      'traj_quantum': np.full((batch_size,), 0.25, np.float32),
      'label': np.zeros((batch_size,), np.int32),
  }


@dataclasses.dataclass(frozen=True)
class PretrainTask:
  """Masked motion modeling: tube mask, encoder on visible tokens, decoder predicts the targets of hidden tokens."""
  config: ml_collections.ConfigDict

  def validate(self, num_devices: int | None = None) -> None:
    """The shared fields, then the pretraining ones (patch size on the trajectory grid, clip crop, decoder, mask,
    target)."""
    c = self.config
    d, m = c.data, c.model
    check = config_lib.check
    config_lib.validate_shared(c, num_devices)
    check(m.patch_size[1] % schema.GRID_STEP == 0, 'model.patch_size', tuple(m.patch_size),
          f'(t, p, p) with p a multiple of the {schema.GRID_STEP}-px trajectory grid step')
    check(len(d.crop_scales) >= 1 and all(0 < s <= 1 for s in d.crop_scales), 'data.crop_scales',
          tuple(d.crop_scales), 'a non-empty tuple of scales in (0, 1]')
    check(d.crop_max_distort >= 0, 'data.crop_max_distort', d.crop_max_distort, 'an integer >= 0')
    check(isinstance(d.static_input, bool), 'data.static_input', d.static_input, 'True or False')
    check(isinstance(d.clips_per_record, int) and d.clips_per_record >= 1, 'data.clips_per_record',
          d.clips_per_record, 'an integer >= 1 (1 = one clip per record)')
    check(d.batch_size % d.clips_per_record == 0, 'data.batch_size', d.batch_size,
          f'a multiple of data.clips_per_record={d.clips_per_record}')
    check(d.clip_ops in ('auto', 'device', 'host'), 'data.clip_ops', d.clip_ops,
          "'device' (the jitted step finishes the clips), 'host' (tf.data does) or 'auto' (device on GPU/TPU)")
    layout = clip_device.ClipLayout.from_config(c)
    check(not layout.on_device or layout.prep_short_side > 0, 'data.prep_short_side',
          d.prep_short_side, "data prep's --short_side in px (it sizes the windows data.clip_ops='device' sends; for "
          "records prepared at native size give the largest short side, or use data.clip_ops='host')")
    check(isinstance(d.hog_margin_cells, int) and d.hog_margin_cells >= 0, 'data.hog_margin_cells',
          d.hog_margin_cells, 'an integer >= 0')
    check(m.decoder_mode in config_lib.DECODER_MODES, 'model.decoder_mode', m.decoder_mode,
          f'one of {config_lib.DECODER_MODES}')
    check(m.decoder_depth >= 1, 'model.decoder_depth', m.decoder_depth, 'an integer >= 1')
    check(m.decoder_width > 0 and m.decoder_width % m.decoder_heads == 0, 'model.decoder_width', m.decoder_width,
          f'a positive multiple of model.decoder_heads={m.decoder_heads}')
    check(c.mask.kind in config_lib.MASK_KINDS, 'mask.kind', c.mask.kind, f'one of {config_lib.MASK_KINDS}')
    check(0.0 < c.mask.ratio < 1.0, 'mask.ratio', c.mask.ratio, 'a ratio in (0, 1)')
    targets.validate(c.target)

  @property
  def videos_per_step(self) -> int:
    return self.config.data.batch_size

  def lr_schedule(self):
    return optim.lr_schedule(self.config, videos_per_step=self.videos_per_step)

  def optimizer(self):
    """AdamW over every param (paper Table 13)."""
    return optim.make_optimizer(self.config, videos_per_step=self.videos_per_step)

  def prepare_demo_data(self, workdir: str, *, is_chief: bool) -> None:
    """Demo/experiment configs: the synthetic videos and their data prep (`demo.prepare_pretraining`)."""
    from m3video_jax import demo

    self.config.data.train_files = demo.prepare_pretraining(self.config, workdir, is_chief=is_chief)

  @property
  def model(self) -> m3video.M3VideoPretrainer:
    c = self.config
    dims = tuple(self.part_dims.values())
    output_dims = dims if c.model.decoder_mode == 'separate' else (sum(dims),)
    attention, remat = config_lib.model_options(c)
    return m3video.M3VideoPretrainer(
        encoder_variant=c.model.encoder, patch_size=tuple(c.model.patch_size), decoder_width=c.model.decoder_width,
        decoder_depth=c.model.decoder_depth, decoder_heads=c.model.decoder_heads, output_dims=output_dims,
        drop_path_rate=c.model.drop_path, dtype=_DTYPES[c.model.dtype], attention=attention, remat=remat)

  @property
  def part_dims(self) -> dict[str, int]:
    return targets.part_dims(self.config.target, tuple(self.config.model.patch_size),
                             frame_stride=self.config.data.frame_stride)

  @property
  def grid(self) -> tuple[int, int, int]:
    return vit.token_grid(clip_shape(self.config, 1), tuple(self.config.model.patch_size))

  def model_flops_per_clip(self) -> float:
    """Training FLOPs of one clip, matmuls only (`vit.block_flops`), forward + backward (x 3), as MFU counts them: patch
    embedding and encoder on the visible tokens, decoder on all tokens, its head on the hidden ones. What XLA adds
    (norms, softmax, the targets, the loss, the optimiser, remat's recomputation) is not model work."""
    c = self.config
    pt, ph, pw = c.model.patch_size
    t, h, w = self.grid
    tokens = t * h * w
    hidden = masking.num_hidden(self.grid, c.mask.ratio, c.mask.kind)  # The same count in every clip.
    visible = tokens - hidden
    width, dw = vit.get_variant(c.model.encoder).width, c.model.decoder_width
    outputs = self.model.output_dims  # One entry per decoder (one joint decoder, or one per part).
    decoder = sum(2 * visible * width * dw + c.model.decoder_depth * vit.block_flops(tokens, dw, 4 * dw)
                  + 2 * hidden * dw * out for out in outputs)
    return 3.0 * (vit.encoder_flops(c.model.encoder, visible, pt * ph * pw * 3) + decoder)

  def init_params(self, rng: jax.Array) -> Any:
    c = self.config
    video = jnp.zeros(clip_shape(c, 1), jnp.float32)
    hidden = masking.sample(rng, 1, self.grid, c.mask)
    return self.model.init({'params': rng}, video, hidden, train=False,
                           num_hidden=masking.num_hidden(self.grid, c.mask.ratio, c.mask.kind))['params']

  def forward(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
              train: bool) -> dict[str, jax.Array]:
    """Masks, predicts and builds the targets of one batch: what the loss and the visualisation share.

    Returns:
      `hidden` bool `[B, N]`, `pred` `[B, Nm, D]`, `target` and `weight` `[B, N, D]`, `moving` bool `[B, N]` (None
      without trajectories in the batch), `model_video` (what the encoder saw, normalised), `video` (normalised).
    """
    c = self.config
    rng_mask, rng_drop, rng_static = jax.random.split(rng, 3)
    batch = clip_device.assemble(batch, clip_device.ClipLayout.from_config(c))  # Raw clip parts from the host.
    batch = dict(batch, video=schema.normalize_video(batch['video'], c.data.mean, c.data.std))
    batch_size = batch['video'].shape[0]
    hidden = masking.sample(rng_mask, batch_size, self.grid, c.mask)
    patch_size = tuple(c.model.patch_size)
    stride = c.data.frame_stride
    target, weight = targets.compute(batch, c.target, patch_size=patch_size, input_mean=tuple(c.data.mean),
                                     input_std=tuple(c.data.std), frame_stride=stride)
    moving = targets.moving_tokens(batch, c.target, patch_size, frame_stride=stride) if 'traj_disp' in batch else None
    model_video = static_clip(rng_static, batch['video']) if c.data.static_input else batch['video']
    pred = self.model.apply({'params': params}, model_video, hidden, train=train, rngs={'dropout': rng_drop},
                            num_hidden=masking.num_hidden(self.grid, c.mask.ratio, c.mask.kind))
    return {'hidden': hidden, 'pred': pred, 'target': target, 'weight': weight, 'moving': moving,
            'model_video': model_video, 'video': batch['video']}

  @functools.cached_property
  def _visualization_fn(self):
    c = self.config
    patch_size = tuple(c.model.patch_size)
    stride = c.data.frame_stride
    # The picture draws predicted trajectories over the K of each token: the dense position part.
    has_prediction = ('trajectory' in targets.components(c.target) and c.target.position
                      and c.target.density == 'dense')

    def fn(params, batch, rng):
      batch = clip_device.assemble(batch, clip_device.ClipLayout.from_config(c))
      out = self.forward(params, batch, rng, train=False)
      raw, valid = targets.trajectories_by_token(batch, c.target, patch_size, frame_stride=stride)
      pred_disp = None
      if has_prediction:
        pred_disp = targets.predicted_positions(out['pred'], out['hidden'], batch, c.target, patch_size,
                                                frame_stride=stride)
      return {'video': out['video'], 'model_video': out['model_video'], 'hidden': out['hidden'],
              'target_disp': raw, 'valid': valid, 'pred_disp': pred_disp}

    return jax.jit(fn)

  def visualization_outputs(self, params: Any, batch: dict[str, Any], rng: jax.Array) -> dict[str, jax.Array]:
    """What `m3video_jax.visualize` draws for a batch (eval mode): the videos, the mask, the raw target trajectories
    `target_disp [B, N, K, L, 2]` (model px), their validity `[B, N, K]`, and `pred_disp` (same shape: the position
    prediction un-normalised with the target's per-token statistics, zero on visible tokens; None when the target has
    no `trajectory` position part)."""
    return self._visualization_fn(params, batch, rng)

  def pictures(self, params: Any, host_batch: dict[str, np.ndarray], step: int) -> dict[str, np.ndarray]:
    """TensorBoard images every `config.viz_every_steps`: target vs predicted trajectories of the batch's first clip
    under a fixed mask (`m3video_jax.visualize`)."""
    from m3video_jax import drawing  # OpenCV, only when pictures are asked for.

    title = f'step {step}, target {self.config.target.kind}' + (', static input' if self.config.data.static_input
                                                                 else '')
    return {'viz/trajectories': drawing.prediction_picture(self, params, host_batch, seed=self.config.seed,
                                                           title=title)}

  def summary_lines(self, metrics: dict[str, float]) -> list[str]:
    """The closing summary's lines about what was learned (from the last logging interval's metrics)."""
    lines = [f'target: {targets.describe(self.config.target)}']
    for part in self.part_dims:
      ratio = metrics.get(f'train/{part}_vs_zero')
      if ratio is None:
        continue
      split = [f'{label} tokens {metrics_lib.format_ratio(metrics.get(f"train/{part}_{key}_vs_zero"), 2)}'
               for label, key in (('moving', 'moving'), ('still', 'static'))]
      t = self.config.target
      raw_hog = (part == 'hog' and not t.hog_norm) or (part == 'shape' and (
          t.kind == 'trajectory_reference' or t.shape_norm == 'none'))
      meaning = ('a non-negative target: a constant beats zero, compare with data.static_input=True' if raw_hog
                 else '1.00 = nothing learned from the input')
      lines.append(f'{part}: loss {metrics[f"train/loss_{part}"]:.4f} = {metrics_lib.format_ratio(ratio, 2)} of the '
                   f'loss of predicting zero ({", ".join(split)}; {meaning})')
    return lines

  def closing_outputs(self, params: Any, workdir: str) -> dict[str, str]:
    """Files written at the end of a run. Demo/experiment configs (`data.prepare_if_missing`): a picture of one
    held-out clip (`prediction.png`: target vs predicted trajectories, `m3video_jax.visualize`)."""
    if not self.config.data.get('prepare_if_missing'):
      return {}
    from m3video_jax import drawing
    from m3video_jax import demo

    serialized = demo.held_out_record(self.config, workdir)
    if serialized is None:
      return {}
    path = os.path.join(workdir, 'prediction.png')
    drawing.write_record_picture(self, params, serialized, path, seed=self.config.seed, gain=2.0)
    return {'picture of a held-out clip (target vs predicted trajectories)': path}

  def result_line(self, workdir: str) -> str | None:
    del workdir  # What pretraining learned is in `summary_lines`.
    return None

  def loss_fn(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    out = self.forward(params, batch, rng, train=True)
    return losses.masked_l2(out['pred'], out['target'], out['weight'], out['hidden'], self.part_dims,
                            moving=out['moving'], balance_parts=self.config.target.balance_parts)

  def make_train_iterator(self, start_step: int):
    from m3video_jax.data import pretraining  # TF is imported only when the real pipeline is used.
    return pretraining.train_iterator(self.config, process_index=jax.process_index(), process_count=jax.process_count(),
                                      start_step=start_step)

  def evaluate(self, params: Any, *, mesh, workdir: str, step: int, final: bool) -> dict[str, float]:
    del params, mesh, workdir, step, final  # Pretraining has no evaluation; its encoder is judged downstream.
    return {}

  def evaluate_checkpoint(self, workdir: str, *, step: int | None = None,
                          views: tuple[int, int] | None = None) -> tuple[dict[str, float], str, int]:
    del step, views
    raise ValueError(f'{workdir} is a pretraining run; evaluate a finetune or linear_probe run (its encoder is judged '
                     'by fine-tuning or probing it: configs/finetune_*.py, configs/linear_probe_*.py)')


@dataclasses.dataclass(frozen=True)
class FinetuneTask:
  """Video classification: `VideoClassifier` on all tokens, soft-target cross entropy after mixup/cutmix.

  Mixup/cutmix and label smoothing run inside the jitted step (`mixup.mix_batch`), the per-clip augmentations in
  the input pipeline (`data/classification.py`). Every param trains, with layer-wise lr decay (`optim.layer_decay`).
  """
  config: ml_collections.ConfigDict
  # The params the optimiser updates (top-level names); None = all. Linear probing sets ('head',): the one place that
  # decides it; the model runs a frozen encoder (eval mode, no gradient) exactly when `encoder` is not trainable.
  trainable: tuple[str, ...] | None = None
  pooling: str = 'mean'  # `classifier.VideoClassifier.pooling`.

  @property
  def freeze_encoder(self) -> bool:
    return self.trainable is not None and 'encoder' not in self.trainable

  def validate(self, num_devices: int | None = None) -> None:
    """The shared fields, then the classification ones (sampling, classes, augmentation, evaluation views)."""
    c = self.config
    config_lib.validate_shared(c, num_devices)
    d, m, a, e = c.data, c.model, c.aug, c.eval
    check = config_lib.check
    if not d.get('prepare_if_missing'):
      check(bool(d.eval_files), 'data.eval_files', d.eval_files,
            'a glob of held-out TFRecord shards written by data_prep (e.g. /data/ssv2/val-*.tfrecord)')
    check(d.sampling in config_lib.SAMPLINGS, 'data.sampling', d.sampling, f'one of {config_lib.SAMPLINGS}')
    check(d.repeated_aug >= 1, 'data.repeated_aug', d.repeated_aug, 'an integer >= 1 (1 = off)')
    check(d.batch_size % (d.repeated_aug * c.optim.grad_accum_steps) == 0, 'data.batch_size', d.batch_size,
          f'a multiple of data.repeated_aug={d.repeated_aug} x optim.grad_accum_steps={c.optim.grad_accum_steps} '
          '(all clips of a video go into the same micro-batch)')
    check(m.num_classes >= 2, 'model.num_classes', m.num_classes, 'an integer >= 2')
    check(m.head_init_scale > 0, 'model.head_init_scale', m.head_init_scale, 'a positive scale')
    check(0 < a.crop_area[0] <= a.crop_area[1] <= 1, 'aug.crop_area', tuple(a.crop_area),
          '(lo, hi), 0 < lo <= hi <= 1')
    check(0 < a.crop_aspect[0] <= a.crop_aspect[1], 'aug.crop_aspect', tuple(a.crop_aspect), '(lo, hi), 0 < lo <= hi')
    check(a.randaug_num_ops >= 0, 'aug.randaug_num_ops', a.randaug_num_ops, 'an integer >= 0 (0 = no RandAugment)')
    check(0 <= a.randaug_magnitude <= 10, 'aug.randaug_magnitude', a.randaug_magnitude, 'in [0, 10]')
    check(a.randaug_magnitude_std >= 0, 'aug.randaug_magnitude_std', a.randaug_magnitude_std, 'a value >= 0')
    for name in ('randaug_prob', 'erase_prob', 'mix_prob', 'mix_switch_prob'):
      check(0 <= a[name] <= 1, f'aug.{name}', a[name], 'a probability in [0, 1]')
    for name in ('mixup_alpha', 'cutmix_alpha'):
      check(a[name] >= 0, f'aug.{name}', a[name], 'a value >= 0 (0 = off)')
    check(0 <= a.label_smoothing < 1, 'aug.label_smoothing', a.label_smoothing, 'in [0, 1)')
    check(e.test_temporal_views >= 1, 'eval.test_temporal_views', e.test_temporal_views, 'an integer >= 1')
    check(e.test_spatial_views >= 1, 'eval.test_spatial_views', e.test_spatial_views, 'an integer >= 1')
    check(e.batch_size > 0, 'eval.batch_size', e.batch_size, 'a positive integer')
    if num_devices is not None:
      check(e.batch_size % num_devices == 0, 'eval.batch_size', e.batch_size, f'a multiple of {num_devices} devices')
    check(0 < c.optim.layer_decay <= 1, 'optim.layer_decay', c.optim.layer_decay, 'in (0, 1] (1 = off)')

  @property
  def videos_per_step(self) -> int:
    """The lr scales with videos, not clips, per step (the reference's repeated augmentation)."""
    return self.config.data.batch_size // self.config.data.repeated_aug

  def lr_schedule(self):
    return optim.lr_schedule(self.config, videos_per_step=self.videos_per_step)

  def optimizer(self):
    """AdamW (paper Table 14); fine-tuning adds layer-wise lr decay; only `trainable` params are updated."""
    c = self.config
    decay = None
    if self.trainable is None and c.optim.layer_decay < 1:
      decay = (c.optim.layer_decay, vit.get_variant(c.model.encoder).depth)
    return optim.make_optimizer(c, videos_per_step=self.videos_per_step, layer_decay=decay, trainable=self.trainable)

  def prepare_demo_data(self, workdir: str, *, is_chief: bool) -> None:
    """Demo/experiment configs: the probe videos' train and held-out splits (`demo.prepare_classification`)."""
    from m3video_jax import demo

    d = self.config.data
    d.train_files, d.eval_files = demo.prepare_classification(self.config, workdir, is_chief=is_chief)

  @property
  def model(self) -> classifier.VideoClassifier:
    c = self.config
    attention, remat = config_lib.model_options(c)
    return classifier.VideoClassifier(
        variant=c.model.encoder, num_classes=c.model.num_classes, patch_size=tuple(c.model.patch_size),
        drop_path_rate=c.model.drop_path, freeze_encoder=self.freeze_encoder,
        head_init_scale=c.model.head_init_scale, dtype=_DTYPES[c.model.dtype], attention=attention, remat=remat,
        pooling=self.pooling, pool_heads=c.model.get('pool_heads', 0), pool_queries=c.model.get('pool_queries', 1),
        pool_mlp=c.model.get('pool_mlp', True))

  def init_params(self, rng: jax.Array) -> Any:
    video = jnp.zeros(clip_shape(self.config, 1), jnp.float32)
    return self.model.init({'params': rng}, video, train=False)['params']

  def model_flops_per_clip(self) -> float:
    """Training FLOPs of one clip, matmuls only (`vit.block_flops`), as MFU counts them: the encoder on all tokens and
    the head, forward + backward (x 3); a frozen encoder runs forward only (x 1)."""
    c = self.config
    pt, ph, pw = c.model.patch_size
    t, h, w = vit.token_grid(clip_shape(c, 1), tuple(c.model.patch_size))
    encoder = vit.encoder_flops(c.model.encoder, t * h * w, pt * ph * pw * 3)
    width = vit.get_variant(c.model.encoder).width
    head = 2.0 * width * c.model.num_classes
    if self.pooling == 'attentive':  # Keys and values of every token, the queries' attention, projection and MLP.
      q = c.model.get('pool_queries', 1)
      head += 2.0 * t * h * w * 2 * width * width + 2.0 * q * width * width * 2 + 4.0 * q * t * h * w * width
      head += 2.0 * q * width * 4 * width * 2 if c.model.get('pool_mlp', True) else 0.0
    return (1.0 if self.freeze_encoder else 3.0) * encoder + 3.0 * head

  def loss_fn(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    a = self.config.aug
    rng_mix, rng_drop = jax.random.split(rng)
    video = schema.normalize_video(batch['video'], self.config.data.mean, self.config.data.std)
    video, soft_targets, _ = mixup.mix_batch(
        rng_mix, video, batch['label'], num_classes=self.config.model.num_classes,
        mixup_alpha=a.mixup_alpha, cutmix_alpha=a.cutmix_alpha, prob=a.mix_prob, switch_prob=a.mix_switch_prob,
        smoothing=a.label_smoothing)
    logits = self.model.apply({'params': params}, video, train=True, rngs={'dropout': rng_drop})
    loss = jnp.mean(losses.soft_cross_entropy(logits, soft_targets))
    # Agreement with the dominant class of the (mixed) target: a rough training accuracy.
    top1 = jnp.mean((jnp.argmax(logits, -1) == jnp.argmax(soft_targets, -1)).astype(jnp.float32))
    return loss, {'top1': top1}

  def pictures(self, params: Any, host_batch: dict[str, np.ndarray], step: int) -> dict[str, np.ndarray]:
    del params, host_batch, step  # Classification draws nothing.
    return {}

  def summary_lines(self, metrics: dict[str, float]) -> list[str]:
    del metrics  # The result is the closing summary's last line (`result_line`).
    return []

  def result_line(self, workdir: str) -> str | None:
    """The multi-view test top-1 against chance and what the encoder was, from `eval_results.json`."""
    path = os.path.join(workdir, evaluation.RESULTS_FILE)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      r = json.load(f)
    chance = 100.0 / self.config.model.num_classes
    return (f'{self.config.task} result: test top-1 {r["top1"]:.1f} % on {int(r["num_videos"])} held-out videos '
            f'({r["temporal_views"]}x{r["spatial_views"]} views; chance {chance:.1f} %, so '
            f'{r["top1"] - chance:+.1f} points), top-5 {r["top5"]:.1f} %; encoder: {_encoder_origin(self.config)}')

  def closing_outputs(self, params: Any, workdir: str) -> dict[str, str]:
    del params
    path = os.path.join(workdir, evaluation.RESULTS_FILE)
    return {'test results': path} if os.path.exists(path) else {}

  def make_train_iterator(self, start_step: int):
    from m3video_jax.data import classification  # TF is imported only when the real pipeline is used.
    classification.eval_shards(self.config)  # A held-out glob that matches nothing stops the run before training.
    return classification.train_iterator(self.config, process_index=jax.process_index(),
                                         process_count=jax.process_count(), start_step=start_step)

  def evaluate(self, params: Any, *, mesh, workdir: str, step: int, final: bool) -> dict[str, float]:
    """Single-view validation (`val/*`); at the end also the multi-view test (`eval/*` + `eval_results.json`)."""
    c = self.config
    predict = self._predict_fn
    val = evaluation.evaluate_params(c, predict, params, mesh, num_temporal=1, num_spatial=1)
    out = {f'val/{k}': v for k, v in val.items() if k != 'num_videos'}
    logging.info('step %d single-view validation on %d videos: top1 %.2f top5 %.2f', step, val['num_videos'],
                 val['top1'], val['top5'])
    if final:
      views = (c.eval.test_temporal_views, c.eval.test_spatial_views)
      test = evaluation.evaluate_params(c, predict, params, mesh, num_temporal=views[0], num_spatial=views[1])
      out.update({f'eval/{k}': v for k, v in test.items() if k != 'num_videos'})
      path = evaluation.write_results(workdir, step, test, c, num_temporal=views[0], num_spatial=views[1])
      logging.info('step %d %dx%d-view test on %d videos: top1 %.2f top5 %.2f (%s)', step, *views,
                   test['num_videos'], test['top1'], test['top5'], path)
    return out

  @property
  def _predict_fn(self):
    return evaluation.classifier_predict_fn(self.model, self.config.data.mean, self.config.data.std)

  def evaluate_checkpoint(self, workdir: str, *, step: int | None = None,
                          views: tuple[int, int] | None = None) -> tuple[dict[str, float], str, int]:
    """The multi-view test (default views: `eval.test_*_views`) of the checkpoint at `step` (default: the latest) in
    `workdir`; writes `<workdir>/eval_results.json`.

    Returns:
      (results, path of the results file, the step tested).
    """
    from m3video_jax import checkpointing
    from m3video_jax import sharding

    c = self.config
    mesh = sharding.make_mesh(c.mesh)
    _, step = checkpointing.resolve_checkpoint(workdir, step)
    params = jax.device_put(checkpointing.load_params(workdir, step), sharding.replicated(mesh))
    num_temporal, num_spatial = views or (c.eval.test_temporal_views, c.eval.test_spatial_views)
    results = evaluation.evaluate_params(c, self._predict_fn, params, mesh, num_temporal=num_temporal,
                                         num_spatial=num_spatial)
    path = evaluation.write_results(workdir, step, results, c, num_temporal=num_temporal, num_spatial=num_spatial)
    return results, path, step


@dataclasses.dataclass(frozen=True)
class LinearProbeTask(FinetuneTask):
  """Linear probing: only `head` trains; the encoder is frozen (eval mode, no drop path, no gradient) and `fc_norm`
  stays at its init (a plain standardisation of the pooled features), as in the reference."""
  trainable: tuple[str, ...] | None = ('head',)


@dataclasses.dataclass(frozen=True)
class AttentiveProbeTask(FinetuneTask):
  """Attentive probing: the encoder frozen as in linear probing; an `AttentivePooler` (`model.pool_heads`,
  `pool_queries`, `pool_mlp`) and the linear `head` train."""
  trainable: tuple[str, ...] | None = ('pooler', 'head')
  pooling: str = 'attentive'

  def validate(self, num_devices: int | None = None) -> None:
    super().validate(num_devices)
    m, check = self.config.model, config_lib.check
    width = vit.get_variant(m.encoder).width
    heads = m.get('pool_heads', 0) or vit.get_variant(m.encoder).num_heads
    check(m.get('pool_heads', 0) >= 0 and width % heads == 0, 'model.pool_heads', m.get('pool_heads', 0),
          f'0 (the encoder\'s heads) or a divisor of the encoder width {width}')
    check(m.get('pool_queries', 1) >= 1, 'model.pool_queries', m.get('pool_queries', 1), 'an integer >= 1')


def _encoder_origin(config) -> str:
  """'random init' or the `init_from` run and, when its config.json is found, its pretraining target."""
  if not config.init_from:
    return 'random init'
  from m3video_jax import checkpointing

  try:
    saved = checkpointing.read_run_config(checkpointing.resolve_checkpoint(config.init_from)[0])
  except FileNotFoundError:  # Not an orbax checkpoint of ours (e.g. an imported PyTorch file).
    saved = None
  if saved and saved.get('task') == 'pretrain' and 'target' in saved:
    target = config_lib.pretrain_config_from_dict(saved).target
    return f'{config.init_from} (pretrained on target {targets.describe(target)})'
  return config.init_from


TASKS: dict[str, Callable[[Any], Any]] = {'pretrain': PretrainTask, 'finetune': FinetuneTask,
                                          'linear_probe': LinearProbeTask, 'attentive_probe': AttentiveProbeTask}


def get_task(config: ml_collections.ConfigDict) -> Task:
  """The task object of `config.task`; raises `config_lib.ConfigError` for an unknown task."""
  config_lib.check(config.get('task') in TASKS, 'task', config.get('task'), f'one of {tuple(TASKS)}')
  return TASKS[config.task](config)


def validate(config, num_devices: int | None = None) -> None:
  """Checks a whole config before anything compiles: `config.task`, the shared fields, then the task's own.

  Raises:
    config_lib.ConfigError: naming the first invalid field, its value and what is allowed.
  """
  get_task(config).validate(num_devices)
