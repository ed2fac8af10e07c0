"""Tasks on the one training loop. Each gives: the model, a params initialiser, `loss_fn(params, batch, rng)`, its
training input (`make_train_iterator`), `evaluate` (called by the loop every `eval_every_steps` and at the end) and
`pictures` (TensorBoard images every `viz_every_steps`).

`pretrain`: masked motion modeling (M3Video) or the pixel/HOG baselines, selected by `config.target`.
`finetune`: action classification with the whole network trained (paper Table 14).
`linear_probe`: the same classifier on a frozen encoder; only the head trains (paper Table 12).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from m3video_jax import augment
from m3video_jax import config_lib
from m3video_jax import evaluate as evaluate_lib
from m3video_jax import losses
from m3video_jax import masking
from m3video_jax import metrics as metrics_lib
from m3video_jax import targets
from m3video_jax.models import classifier
from m3video_jax.models import m3video
from m3video_jax.models import vit

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def normalize_video(video: jax.Array, mean, std) -> jax.Array:
  """uint8 RGB `[..., 3]` from the input pipeline -> ImageNet-normalised float32, on the device."""
  x = video.astype(jnp.float32) * (1.0 / 255.0)
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


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
  """Zeros shaped like an input-pipeline batch (for init, eval_shape and compile checks)."""
  d = config.data
  pt = config.model.patch_size[0]
  tt, g, steps = d.num_frames // pt, d.res // 8, config.target.traj_len
  return {
      'video': np.zeros(clip_shape(config, batch_size), np.uint8),
      'traj_disp': np.zeros((batch_size, tt, g, g, steps, 2), np.float32),
      'traj_valid': np.zeros((batch_size, tt, g, g), bool),
      'traj_hog': np.zeros((batch_size, tt, g, g, steps, 9), np.float32),
      'traj_quantum': np.full((batch_size,), 0.25, np.float32),
      'label': np.zeros((batch_size,), np.int32),
  }


@dataclasses.dataclass(frozen=True)
class PretrainTask:
  """Masked motion modeling: tube mask, encoder on visible tokens, decoder predicts the targets of hidden tokens."""
  config: Any

  @property
  def model(self) -> m3video.M3VideoPretrainer:
    c = self.config
    dims = tuple(self.part_dims.values())
    output_dims = dims if c.model.decoder_mode == 'separate' else (sum(dims),)
    return m3video.M3VideoPretrainer(
        encoder_variant=c.model.encoder, patch_size=tuple(c.model.patch_size), decoder_width=c.model.decoder_width,
        decoder_depth=c.model.decoder_depth, decoder_heads=c.model.decoder_heads, output_dims=output_dims,
        drop_path_rate=c.model.drop_path, dtype=_DTYPES[c.model.dtype])

  @property
  def part_dims(self) -> dict[str, int]:
    return targets.part_dims(self.config.target, tuple(self.config.model.patch_size))

  @property
  def grid(self) -> tuple[int, int, int]:
    return vit.token_grid(clip_shape(self.config, 1), tuple(self.config.model.patch_size))

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
    batch = dict(batch, video=normalize_video(batch['video'], c.data.mean, c.data.std))
    batch_size = batch['video'].shape[0]
    hidden = masking.sample(rng_mask, batch_size, self.grid, c.mask)
    patch_size = tuple(c.model.patch_size)
    target, weight = targets.compute(batch, c.target, patch_size=patch_size, input_mean=tuple(c.data.mean),
                                     input_std=tuple(c.data.std))
    moving = targets.moving_tokens(batch, c.target, patch_size) if 'traj_disp' in batch else None
    model_video = static_clip(rng_static, batch['video']) if c.data.static_input else batch['video']
    pred = self.model.apply({'params': params}, model_video, hidden, train=train, rngs={'dropout': rng_drop},
                            num_hidden=masking.num_hidden(self.grid, c.mask.ratio, c.mask.kind))
    return {'hidden': hidden, 'pred': pred, 'target': target, 'weight': weight, 'moving': moving,
            'model_video': model_video, 'video': batch['video']}

  @functools.cached_property
  def _visualization_fn(self):
    c = self.config
    patch_size = tuple(c.model.patch_size)
    has_prediction = c.target.kind == 'trajectory' and c.target.position

    def fn(params, batch, rng):
      out = self.forward(params, batch, rng, train=False)
      raw, valid = targets.trajectories_by_token(batch, c.target, patch_size)
      pred_disp = None
      if has_prediction:
        _, mean, scale = targets.position_statistics(batch, c.target, patch_size)
        idx = masking.hidden_indices(out['hidden'], out['pred'].shape[1])
        pos = out['pred'][..., :self.part_dims['position']].reshape(out['pred'].shape[:2] + raw.shape[2:])
        pred_disp = masking.gather_tokens(scale, idx) * pos + masking.gather_tokens(mean, idx)
        pred_disp = masking.scatter_tokens(pred_disp, idx, raw.shape[1])
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
    from m3video_jax import visualize  # OpenCV drawing, only when pictures are asked for.

    title = f'step {step}, target {self.config.target.kind}' + (', static input' if self.config.data.static_input
                                                                 else '')
    return {'viz/trajectories': visualize.prediction_picture(self, params, host_batch, seed=self.config.seed,
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
    if not self.config.data.prepare_if_missing:
      return {}
    from m3video_jax import visualize
    from m3video_jax.data import demo_data

    serialized = demo_data.held_out_record(self.config, workdir)
    if serialized is None:
      return {}
    path = os.path.join(workdir, 'prediction.png')
    visualize.write_record_picture(self, params, serialized, path, seed=self.config.seed, gain=2.0)
    return {'picture of a held-out clip (target vs predicted trajectories)': path}

  def result_line(self, workdir: str) -> str | None:
    del workdir  # What pretraining learned is in `summary_lines`.
    return None

  def loss_fn(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    out = self.forward(params, batch, rng, train=True)
    return losses.masked_l2(out['pred'], out['target'], out['weight'], out['hidden'], self.part_dims,
                            moving=out['moving'], balance_parts=self.config.target.balance_parts)

  def make_train_iterator(self, start_step: int):
    from m3video_jax.data import pipeline  # TF is imported only when the real pipeline is used.
    return pipeline.TrainIterator(self.config, process_index=jax.process_index(), process_count=jax.process_count(),
                                  start_step=start_step)

  def evaluate(self, params: Any, *, mesh, workdir: str, step: int, final: bool) -> dict[str, float]:
    del params, mesh, workdir, step, final  # Pretraining has no evaluation; its encoder is judged downstream.
    return {}


@dataclasses.dataclass(frozen=True)
class FinetuneTask:
  """Video classification: `VideoClassifier` on all tokens, soft-target cross entropy after mixup/cutmix.

  Mixup/cutmix and label smoothing run inside the jitted step (`augment.mix_batch`), the per-clip augmentations in
  the input pipeline (`data/classification.py`).
  """
  config: Any
  freeze_encoder = False

  @property
  def model(self) -> classifier.VideoClassifier:
    c = self.config
    return classifier.VideoClassifier(
        variant=c.model.encoder, num_classes=c.model.num_classes, patch_size=tuple(c.model.patch_size),
        drop_path_rate=c.model.drop_path, freeze_encoder=self.freeze_encoder,
        head_init_scale=c.model.head_init_scale, dtype=_DTYPES[c.model.dtype])

  def init_params(self, rng: jax.Array) -> Any:
    video = jnp.zeros(clip_shape(self.config, 1), jnp.float32)
    return self.model.init({'params': rng}, video, train=False)['params']

  def loss_fn(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    a = self.config.aug
    rng_mix, rng_drop = jax.random.split(rng)
    video, soft_targets, _ = augment.mix_batch(
        rng_mix, batch['video'], batch['label'], num_classes=self.config.model.num_classes,
        mixup_alpha=a.mixup_alpha, cutmix_alpha=a.cutmix_alpha, prob=a.mix_prob, switch_prob=a.mix_switch_prob,
        smoothing=a.label_smoothing)
    logits = self.model.apply({'params': params}, video, train=True, rngs={'dropout': rng_drop})
    loss = jnp.mean(augment.soft_cross_entropy(logits, soft_targets))
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
    path = os.path.join(workdir, evaluate_lib.RESULTS_FILE)
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
    path = os.path.join(workdir, evaluate_lib.RESULTS_FILE)
    return {'test results': path} if os.path.exists(path) else {}

  def make_train_iterator(self, start_step: int):
    from m3video_jax.data import classification  # TF is imported only when the real pipeline is used.
    return classification.train_iterator(self.config, process_index=jax.process_index(),
                                         process_count=jax.process_count(), start_step=start_step)

  def evaluate(self, params: Any, *, mesh, workdir: str, step: int, final: bool) -> dict[str, float]:
    """Single-view validation (`val/*`); at the end also the multi-view test (`eval/*` + `eval_results.json`)."""
    c = self.config
    predict = evaluate_lib.classifier_predict_fn(self.model)
    val = evaluate_lib.evaluate_params(c, predict, params, mesh, num_temporal=1, num_spatial=1)
    out = {f'val/{k}': v for k, v in val.items() if k != 'num_videos'}
    logging.info('step %d single-view validation on %d videos: top1 %.2f top5 %.2f', step, val['num_videos'],
                 val['top1'], val['top5'])
    if final:
      views = (c.eval.test_temporal_views, c.eval.test_spatial_views)
      test = evaluate_lib.evaluate_params(c, predict, params, mesh, num_temporal=views[0], num_spatial=views[1])
      out.update({f'eval/{k}': v for k, v in test.items() if k != 'num_videos'})
      path = evaluate_lib.write_results(workdir, step, test, c, num_temporal=views[0], num_spatial=views[1])
      logging.info('step %d %dx%d-view test on %d videos: top1 %.2f top5 %.2f (%s)', step, *views,
                   test['num_videos'], test['top1'], test['top5'], path)
    return out


@dataclasses.dataclass(frozen=True)
class LinearProbeTask(FinetuneTask):
  """Linear probing: frozen encoder (eval mode, no drop path, no gradient); only `head` is updated (see optim.py)."""
  freeze_encoder = True


def _encoder_origin(config) -> str:
  """'random init' or the `init_from` run and, when its config.json is found, its pretraining target."""
  if not config.init_from:
    return 'random init'
  from m3video_jax import checkpointing
  from m3video_jax import import_weights

  try:
    saved = import_weights.read_run_config(checkpointing.resolve_checkpoint(config.init_from)[0])
  except FileNotFoundError:  # Not an orbax checkpoint of ours (e.g. an imported PyTorch file).
    saved = None
  if saved and saved.get('task') == 'pretrain' and 'target' in saved:
    target = config_lib.pretrain_config_from_dict(saved).target
    return f'{config.init_from} (pretrained on target {targets.describe(target)})'
  return config.init_from


def get_task(config) -> PretrainTask | FinetuneTask:
  tasks: dict[str, Callable[[Any], Any]] = {'pretrain': PretrainTask, 'finetune': FinetuneTask,
                                            'linear_probe': LinearProbeTask}
  if config.task not in tasks:
    raise ValueError(f'config.task={config.task!r} is invalid: expected one of {sorted(tasks)}')
  return tasks[config.task](config)
