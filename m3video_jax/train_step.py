"""Pure, jit-agnostic training step: gradient of a task loss (optionally over micro-batches), one optimiser update.

No I/O and no jit here; `train_lib` wraps it with `jax.jit` and the shardings.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from m3video_jax.train_state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
# loss_fn(params, batch, rng) -> (scalar loss, metrics)
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, Metrics]]


def _split_micro(batch: Batch, accum_steps: int) -> Batch:
  """`[B, ...]` -> `[A, B / A, ...]` with micro-batch `i` = rows `i, i + A, i + 2A, ...`.

  The strided split keeps every micro-batch spread over all devices of the batch axis (a contiguous split would put
  micro-batch `i` on 1/A of the devices and make XLA gather it everywhere).
  """
  return jax.tree.map(
      lambda x: x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:]).swapaxes(0, 1), batch)


def train_step(state: TrainState, batch: Batch, *, loss_fn: LossFn, tx: optax.GradientTransformation,
               lr_schedule: optax.Schedule, accum_steps: int = 1) -> tuple[TrainState, Metrics]:
  """One optimiser step.

  Args:
    state: current state (donated by the caller's jit on accelerators).
    batch: global batch; leading dim divisible by `accum_steps`.
    loss_fn: the task loss.
    tx: the optimiser.
    lr_schedule: for logging the lr of this step.
    accum_steps: micro-batches whose gradients and losses are averaged before the update (the mean of per-micro-batch
      losses, so close to, but not exactly, one big batch: masks and valid-element counts differ per micro-batch).

  Returns:
    (new state, metrics with `train/loss`, the task's parts, `train/grad_norm`, `train/lr`).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (loss, metrics), grads = grad_fn(state.params, batch, rng)
  else:
    micro = _split_micro(batch, accum_steps)

    def body(carry, xs):
      grads_sum, loss_sum, metrics_sum = carry
      mb, i = xs
      (loss, metrics), grads = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
      return (jax.tree.map(jnp.add, grads_sum, grads), loss_sum + loss,
              jax.tree.map(jnp.add, metrics_sum, metrics)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    first_mb = jax.tree.map(lambda x: x[0], micro)
    metrics_shape = jax.eval_shape(lambda: loss_fn(state.params, first_mb, rng)[1])
    metrics0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)
    (grads, loss, metrics), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32), metrics0),
                                             (micro, jnp.arange(accum_steps)))
    grads = jax.tree.map(lambda g: g / accum_steps, grads)
    loss = loss / accum_steps
    metrics = jax.tree.map(lambda m: m / accum_steps, metrics)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  metrics = {f'train/{k}': v for k, v in metrics.items()}
  metrics.update({'train/loss': loss, 'train/grad_norm': optax.tree.norm(grads),
                  'train/lr': lr_schedule(state.step)})
  return new_state, metrics
