"""The training state: everything a checkpoint holds and the jitted step reads and writes."""
from __future__ import annotations

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar (optimiser steps done); params; opt_state; rng: the run's base key (raw uint32 [2]).

  Each step folds `step` into `rng`, so a resumed run draws the same masks and drop-path as an uninterrupted one.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
