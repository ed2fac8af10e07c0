"""Device mesh and shardings: `jax.jit` + `NamedSharding` over a ('data', 'fsdp') mesh; no pmap.

The batch is split over both axes. Parameters and optimiser state are replicated when `fsdp == 1`; otherwise each
large leaf is split along its largest dimension divisible by the fsdp size (ZeRO-3 style), and XLA inserts the
all-gathers.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

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
