"""Progressive layer dropping (docs/paper.md §4.2): skip random layers, more of the deep ones.

Drop level at RST budget fraction f = t/T: D(f) = 1 − [θ̄ + (1 − θ̄) · exp(−γ_factor · f)], rising
from 0 towards 1 − θ̄. Layer i (1-based) of L is dropped with probability D · i / L, independently.

Keep: bool [num_micro, L] in `controls['keep']`, row m for micro-batch m (`method.resample`:
'micro_batch', the BERT default, a row per micro-batch; 'step', the T5 default, one row repeated),
drawn by a numpy generator seeded by (config.seed, step[, m]), so it is the same on every host
and on resume with no saved state. D is taken at the step's RST fraction; the same row drives the
T5 encoder and decoder. A dropped layer is the identity on the residual stream; how the model
runs a keep (full-depth `lax.cond` scan, or a loop over the kept layers only) is
`model.layer_drop_impl` (models/stack.py); either way the program compiles once. Each
micro-batch is charged at its own active layers (at least 1: embeddings and head still run).

Dropped layers and the optimizer (`method.mask_dropped_updates`; docs/paper.md §7 item 6): the
step's gradient is the mean over micro-batches, so a layer dropped in every micro-batch gets a
zero gradient. BERT's paper code still applies AdamW's momentum and decay to it (False); T5's
skips it (True: `masked_update` keeps those layers' params and optimizer state unchanged, global
counts advance), applied by the `wrap_train_step` hook. Remat is on by default (`model.remat`):
a dropped layer's cond then saves nothing for the backward pass (BENCHMARKS.md). T5 base uses the
paper's peak LR 1e-2 for layer dropping (T5 README).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ntng_jax.errors import ConfigError
from ntng_jax.methods.base import Method, Plan, settings
from ntng_jax.rst import Charge

GAMMA_FACTOR = {"bert": 100.0, "t5": 20.0, "gpt": 100.0}  # gpt: BERT's (no paper value)
_RNG_TAG = 0x1A7D  # separates this stream from other (seed, step)-seeded host generators


# -------------------------------------------------------------------------------------------------
# Schedule and sampling (host, numpy).


def drop_level(rst_fraction: float, theta_bar: float, gamma_factor: float) -> float:
  """D(f) = 1 − [θ̄ + (1 − θ̄)·exp(−γ_factor·f)]."""
  return 1.0 - (theta_bar + (1.0 - theta_bar) * math.exp(-gamma_factor * rst_fraction))


def drop_probabilities(level: float, num_layers: int) -> np.ndarray:
  """Per-layer drop probabilities D · i / L for i = 1..L."""
  return level * np.arange(1, num_layers + 1, dtype=np.float64) / num_layers


def sample_keep(
  level: float, num_layers: int, seed: int, step: int, micro_batch: int | None = None
) -> np.ndarray:
  """bool [L]: keep[i] = not Bernoulli(D·(i+1)/L), from a generator seeded by (seed, step) or,
  for one micro-batch of the step, by (seed, step, micro_batch)."""
  key = [_RNG_TAG, int(seed) % 2**32, int(step)]
  if micro_batch is not None:
    key.append(int(micro_batch))
  rng = np.random.default_rng(np.random.SeedSequence(key))
  return rng.random(num_layers) >= drop_probabilities(level, num_layers)


def sample_keep_rows(
  level: float, num_layers: int, seed: int, step: int, num_micro: int, per_micro_batch: bool
) -> np.ndarray:
  """bool [num_micro, L]: one `sample_keep` row per micro-batch, or one row repeated."""
  if per_micro_batch:
    return np.stack([sample_keep(level, num_layers, seed, step, m) for m in range(num_micro)])
  return np.tile(sample_keep(level, num_layers, seed, step), (num_micro, 1))


# -------------------------------------------------------------------------------------------------
# Masked update (device, pure).


def _is_layer_path(path) -> bool:
  return any(isinstance(k, jax.tree_util.DictKey) and k.key == "layers" for k in path)


def _is_layer_count_path(path) -> bool:
  return any(isinstance(k, jax.tree_util.GetAttrKey) and k.name == "layer_count" for k in path)


def masked_tree(new, old, keep):
  """Per layer, `new` where keep[i] else `old`, for every leaf under a `layers` subtree (and every
  per-layer step-count vector) whose axis 0 has len(keep) entries; every other leaf is taken
  from `new`."""
  keep = jnp.asarray(keep).astype(bool)
  n = keep.shape[0]

  def select(path, a, b):
    if not (_is_layer_path(path) or _is_layer_count_path(path)):
      return a
    if jnp.ndim(a) < 1 or jnp.shape(a)[0] != n:
      return a
    k = keep.reshape((n,) + (1,) * (jnp.ndim(a) - 1))
    return jnp.where(k, a, b)

  return jax.tree_util.tree_map_with_path(select, new, old)


def masked_update(new_state, old_state, keep):
  """The state after a step in which the dropped layers (keep[i] = False) were skipped entirely:
  their slices of every stacked parameter, of every parameter-shaped optimizer-state leaf
  (moments, Hessian estimates) and of per-layer step counts are those of `old_state`; everything
  else (kept layers, non-layer parameters, global counts, hyper-parameters, method state) comes
  from `new_state`."""
  return new_state.replace(
    params=masked_tree(new_state.params, old_state.params, keep),
    opt_state=masked_tree(new_state.opt_state, old_state.opt_state, keep),
  )


def step_keep(keep):
  """bool [L]: the layers that ran in at least one micro-batch (keep: [L] or [num_micro, L])."""
  keep = jnp.asarray(keep).astype(bool)
  return keep if keep.ndim == 1 else jnp.any(keep, axis=0)


def mask_dropped_train_step(train_step: Callable) -> Callable:
  """Wraps `train_step(state, batch, rng, controls)` so layers dropped in every micro-batch of
  the step are left unchanged."""

  def wrapped(state, batch, rng, controls):
    new_state, metrics = train_step(state, batch, rng, controls)
    keep = controls.get("keep")
    if keep is not None:
      new_state = masked_update(new_state, state, step_keep(keep))
    return new_state, metrics

  return wrapped


# -------------------------------------------------------------------------------------------------
# The method.

RESAMPLE = ("micro_batch", "step")


@dataclasses.dataclass(frozen=True)
class DropPlan(Plan):
  drop_level: float = 0.0


class LayerDrop(Method):
  """Full-depth program, random keep vector per micro-batch or per step; see the module
  docstring."""

  name = "layer_drop"

  @staticmethod
  def defaults(family: str) -> dict[str, Any]:
    """The method's fields for a model family (the one statement of these defaults)."""
    return dict(
      theta_bar=0.5,
      gamma_factor=GAMMA_FACTOR[family],
      mask_dropped_updates=(family == "t5"),
      resample="step" if family == "t5" else "micro_batch",
    )

  @classmethod
  def default_config(cls, family: str, size: str) -> dict[str, Any]:
    out = {"method": cls.defaults(family), "model": {"remat": True}}
    if family == "t5" and size == "base":
      out["optim"] = {"learning_rate": 1e-2}
    return out

  def __init__(self, config):
    super().__init__(config)
    m = settings(config, self.defaults(config.model.family))
    self.theta_bar = float(m["theta_bar"])
    self.gamma_factor = float(m["gamma_factor"])
    self.mask_dropped_updates = bool(m["mask_dropped_updates"])
    self.seed = int(config.seed)
    self.resample = str(m["resample"])
    if self.resample not in RESAMPLE:
      raise ConfigError(
        f"method.resample must be one of {', '.join(RESAMPLE)}; got {self.resample!r}."
      )
    t = config.train
    self.num_micro = max(1, int(t.batch_size) // int(t.micro_batch_size))
    self.micro_batch_size = int(t.micro_batch_size)
    if not 0.0 <= self.theta_bar <= 1.0:
      raise ConfigError(f"method.theta_bar must be in [0, 1]; got {self.theta_bar}.")
    if self.gamma_factor < 0:
      raise ConfigError(f"method.gamma_factor must be non-negative; got {self.gamma_factor}.")

  def drop_level(self, rst_fraction: float) -> float:
    return drop_level(rst_fraction, self.theta_bar, self.gamma_factor)

  def plan(self, rst_fraction: float, step: int) -> Plan:
    level = self.drop_level(rst_fraction)
    keep = sample_keep_rows(
      level, self.num_layers, self.seed, step, self.num_micro, self.resample == "micro_batch"
    )
    return DropPlan(depth=self.num_layers, keep=keep, drop_level=level)

  def charges(self, plan: Plan, batch_size: int) -> list[Charge]:
    """One charge per micro-batch at its own active layers (one per step with 'step')."""
    keep = np.asarray(plan.keep, bool)
    if keep.ndim == 1 or self.resample == "step":
      return [Charge("train", max(1, int(keep.reshape(-1, keep.shape[-1])[0].sum())), batch_size)]
    per_micro = batch_size // keep.shape[0]
    return [Charge("train", max(1, int(row.sum())), per_micro) for row in keep]

  def metrics(self, plan: Plan) -> dict:
    return {
      "active_layers": plan.active_layers,
      "drop_level": float(getattr(plan, "drop_level", float("nan"))),
    }

  def wrap_train_step(self, train_step: Callable) -> Callable:
    """The train step with dropped layers' updates masked if `mask_dropped_updates`, else as is."""
    return mask_dropped_train_step(train_step) if self.mask_dropped_updates else train_step
