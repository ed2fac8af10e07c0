"""Device mesh and shardings: `jax.jit` + `NamedSharding` over a ('data', 'fsdp') mesh; no pmap. And the processes of a
multi-host run: the barrier at which they wait for process 0, and the verdicts it tells them.

The batch is split over both axes. Parameters and optimiser state are replicated when `fsdp == 1`; otherwise each
large leaf is split along its largest dimension divisible by the fsdp size (ZeRO-3 style), and XLA inserts the
all-gathers.
"""
from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from m3video_jax import cli

MESH_AXES = ('data', 'fsdp')
BATCH_AXES = ('data', 'fsdp')
_FSDP_MIN_SIZE = 2 ** 14  # Smaller leaves stay replicated: splitting them costs more than it saves.


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int]:
  fsdp = int(mesh_cfg.fsdp)
  data = num_devices // fsdp if mesh_cfg.data == -1 else int(mesh_cfg.data)
  if data * fsdp != num_devices:
    raise ValueError(f'config.mesh={dict(data=mesh_cfg.data, fsdp=fsdp)} needs data x fsdp == {num_devices} devices')
  return data, fsdp


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def _leaf_spec(leaf, fsdp: int) -> P:
  shape = getattr(leaf, 'shape', ())
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < _FSDP_MIN_SIZE:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = 'fsdp'
      return P(*spec)
  return P()


def state_sharding(abstract_state: Any, mesh: Mesh) -> Any:
  """A NamedSharding per leaf of `abstract_state` (a pytree of ShapeDtypeStructs)."""
  fsdp = mesh.shape['fsdp']
  return jax.tree.map(lambda x: NamedSharding(mesh, _leaf_spec(x, fsdp)), abstract_state)


def to_global(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global jax.Arrays laid out along the batch axes (multi-process safe)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


# Processes: what process 0 tells the others, through the coordination service of `jax.distributed` (its barrier is
# the one with a timeout, its key-value store carries one-line verdicts). The one place that reaches into
# `jax._src.distributed`, which has no public API for either.


def _coordination_client():
  from jax._src import distributed

  client = distributed.global_state.client
  if client is None:
    raise RuntimeError('jax.distributed is not initialised')
  return client


class WaitTimeoutError(cli.UserError, RuntimeError):
  """A process waited longer than its limit for process 0 (`wait_for_process_0`): one `error:` line pointing at
  process 0's log."""


def wait_for_process_0(name: str, timeout_s: float, what: str) -> None:
  """A barrier of all JAX processes at `name`, reached by process 0 once it has done `what`; no-op in one process.

  Raises:
    WaitTimeoutError: naming this process, `what` and the timeout when process 0 does not arrive within `timeout_s`.
  """
  if jax.process_count() == 1:
    return
  if jax.process_index() > 0:
    logging.warning('process %d: waiting up to %.0f s for process 0 to %s', jax.process_index(), timeout_s, what)
  try:
    _coordination_client().wait_at_barrier(name, int(timeout_s * 1000))
  except Exception as e:  # XlaRuntimeError (DEADLINE_EXCEEDED, or a process that died) or no client.
    raise WaitTimeoutError(f'process {jax.process_index()} of {jax.process_count()} waited for process 0 to {what}, '
                       f'which did not finish within {timeout_s:.0f} s (config.data.prepare_timeout_s) or failed; '
                       f'see process 0\'s log ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})') from e


def tell_other_processes(key: str, value: str) -> None:
  """Process 0 publishes `value` under `key` for the other processes (`hear_from_process_0`); no-op in one process."""
  if jax.process_count() > 1:
    _coordination_client().key_value_set(key, value)


def hear_from_process_0(key: str, timeout_s: float) -> str:
  """What process 0 published under `key` (`tell_other_processes`), waiting up to `timeout_s` for it."""
  return _coordination_client().blocking_key_value_get(key, int(timeout_s * 1000))
