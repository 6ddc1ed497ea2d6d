"""The training state: one pytree, so checkpointing, sharding and donation treat every method alike."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class TrainState:
  step: jax.Array  # int32 [], optimizer steps taken
  params: Any  # model parameters (float32)
  opt_state: Any  # optax state (learning rate injected as a hyper-parameter)
  method_state: Any  # method-specific arrays (e.g. a loss-history buffer); {} if none


def create(params, tx, method_state=None) -> TrainState:
  """Initial state for `params` (boxed or plain); used inside a jitted init with out_shardings."""
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    method_state={} if method_state is None else method_state,
  )
