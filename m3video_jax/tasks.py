"""Tasks on the one training loop. Each gives: the model, a params initialiser, and `loss_fn(params, batch, rng)`.

`pretrain`: masked motion modeling (M3Video) or the pixel/HOG baselines, selected by `config.target`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from m3video_jax import losses
from m3video_jax import masking
from m3video_jax import targets
from m3video_jax.models import m3video
from m3video_jax.models import vit

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def clip_shape(config, batch_size: int) -> tuple[int, ...]:
  d = config.data
  return (batch_size, d.num_frames, d.res, d.res, 3)


def example_batch(config, batch_size: int) -> dict[str, np.ndarray]:
  """Zeros shaped like an input-pipeline batch (for init, eval_shape and compile checks)."""
  d = config.data
  pt, ph, _ = config.model.patch_size
  tt, g, steps = d.num_frames // pt, d.res // 8, config.target.traj_len
  return {
      'video': np.zeros(clip_shape(config, batch_size), np.float32),
      'traj_disp': np.zeros((batch_size, tt, g, g, steps, 2), np.float32),
      'traj_valid': np.zeros((batch_size, tt, g, g), bool),
      'traj_hog': np.zeros((batch_size, tt, g, g, steps, 9), np.float32),
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

  def loss_fn(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    c = self.config
    rng_mask, rng_drop = jax.random.split(rng)
    batch_size = batch['video'].shape[0]
    hidden = masking.sample(rng_mask, batch_size, self.grid, c.mask)
    target, weight = targets.compute(batch, c.target, patch_size=tuple(c.model.patch_size),
                                     input_mean=tuple(c.data.mean), input_std=tuple(c.data.std))
    pred = self.model.apply({'params': params}, batch['video'], hidden, train=True, rngs={'dropout': rng_drop},
                            num_hidden=masking.num_hidden(self.grid, c.mask.ratio, c.mask.kind))
    return losses.masked_l2(pred, target, weight, hidden, self.part_dims)


def get_task(config) -> PretrainTask:
  tasks: dict[str, Callable[[Any], Any]] = {'pretrain': PretrainTask}
  if config.task not in tasks:
    raise ValueError(f'config.task={config.task!r} is invalid: expected one of {sorted(tasks)}')
  return tasks[config.task](config)
