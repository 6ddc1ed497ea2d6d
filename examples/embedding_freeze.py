"""An example method kept outside the package: train the embeddings during a warm-up, then
freeze them.

Until the RST budget fraction `method.freeze_fraction` the run is the baseline; from then on the
parameters whose path matches `method.freeze_params` (default: the token embedding table, tied to
the output layer in BERT and GPT) and their optimizer state (moments, counts per leaf) stay
exactly as they were, by a masked update in `wrap_train_step`. The freeze flag is decided on the
host from the RST clock and reaches the jitted step through `controls`, so the step compiles once.
The step still runs the full forward and backward pass (the masked gradient is computed and
dropped), so it is charged as a baseline step.

Run it by import path, with this directory on PYTHONPATH (or as the working directory):

  PYTHONPATH=examples python -m launch.pretrain \\
      --config=configs/bert.py:size=tiny,method=embedding_freeze:EmbeddingFreeze \\
      --config.method.freeze_fraction=0.3 --workdir=runs/freeze
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from ntng_jax.config import ConfigError
from ntng_jax.methods.base import Method, Plan
from ntng_jax.param_paths import path_str

DEFAULT_FREEZE_PARAMS = r"(^|/)[a-z_]*embed/embedding$"  # word_embed (BERT), token_embed (T5, GPT)


@dataclasses.dataclass(frozen=True)
class FreezePlan(Plan):
  frozen: bool = False
  step: int = 0


def freeze_tree(new, old, frozen, pattern: re.Pattern):
  """`old` for every leaf whose '/'-joined path matches `pattern` when `frozen` (a traced bool
  scalar), else `new`; other leaves come from `new`."""

  def pick(path, a, b):
    if not pattern.search(path_str(path)):
      return a
    return jnp.where(frozen, b, a)

  return jax.tree_util.tree_map_with_path(pick, new, old)


class EmbeddingFreeze(Method):
  """The baseline, with the embeddings frozen from `method.freeze_fraction` of the RST budget."""

  name = "embedding_freeze"

  @staticmethod
  def default_config(family: str, size: str) -> dict:
    """New `method.*` fields (so `--config.method.freeze_fraction=...` is a known field)."""
    del family, size
    return {"method": {"freeze_fraction": 0.5, "freeze_params": DEFAULT_FREEZE_PARAMS}}

  def __init__(self, config):
    super().__init__(config)
    m = config.method
    self.freeze_fraction = float(m.get("freeze_fraction", 0.5))
    if not 0.0 <= self.freeze_fraction <= 1.0:
      raise ConfigError(f"method.freeze_fraction must be in [0, 1]; got {self.freeze_fraction}.")
    self.pattern = re.compile(str(m.get("freeze_params", DEFAULT_FREEZE_PARAMS)))
    self.frozen_since_step = None  # host state: the first step run with frozen embeddings

  def plan(self, rst_fraction: float, step: int) -> Plan:
    return FreezePlan(depth=self.num_layers, frozen=rst_fraction >= self.freeze_fraction, step=step)

  def controls(self, plan: Plan) -> dict:
    # Called only for a step that runs: record where the freeze began.
    if plan.frozen and self.frozen_since_step is None:
      self.frozen_since_step = plan.step
    return {"freeze_embeddings": np.asarray(plan.frozen, bool)}

  def wrap_train_step(self, train_step):
    pattern = self.pattern

    def step(state, batch, rng, controls):
      new_state, metrics = train_step(state, batch, rng, controls)
      frozen = controls["freeze_embeddings"]
      return new_state.replace(
        params=freeze_tree(new_state.params, state.params, frozen, pattern),
        opt_state=freeze_tree(new_state.opt_state, state.opt_state, frozen, pattern),
      ), metrics

    return step

  def host_state(self) -> dict:
    return {"frozen_since_step": self.frozen_since_step}

  def restore_host_state(self, state: dict) -> None:
    self.frozen_since_step = state.get("frozen_since_step")

  def metrics(self, plan: Plan) -> dict:
    return {**super().metrics(plan), "embeddings_frozen": int(plan.frozen)}
