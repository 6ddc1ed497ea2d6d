"""Layer stacking (docs/paper.md §4.1): train a shallow model, then double its depth by copying.

Stage s (the number of `method.fractions` ≤ the RST fraction) runs
`min(method.initial_layers · 2^s, model.num_layers)` layers; the last stage must reach
`model.num_layers`. Growth appends copies of layers 0, 1, ... to every stacked leaf (axis 0) and
grows the optimizer state alike (zeros, or copies with `copy_optimizer_state`), per-layer step
counts included. The depth is a function of the RST clock only, so no host state is kept.
Details: docs/implementation-notes.md, "Layer stacking".
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntng_jax.errors import ConfigError
from ntng_jax.methods.base import Method, Plan, settings
from ntng_jax.models.sizes import SIZES
from ntng_jax.optim.layer_count import has_layer_count
from ntng_jax.param_paths import is_layer_path

# -------------------------------------------------------------------------------------------------
# Pure tree surgery.


def layer_depth(params) -> int:
  """The depth of a param tree: the leading size of its stacked (`layers`) leaves."""
  depths = {
    int(np.shape(x)[0])
    for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    if is_layer_path(p)
  }
  if len(depths) != 1:
    raise ValueError(f"expected stacked 'layers' parameters of one depth; found depths {depths}.")
  return depths.pop()


def _source_index(n_old: int, n_new: int) -> np.ndarray:
  """Which old layer each layer of the grown stack comes from: 0..n-1, then i mod n."""
  return np.concatenate([np.arange(n_old), np.arange(n_new) % n_old])


def grow_leaf(x, n_new: int, copy: bool = True):
  """Appends `n_new` layers along axis 0: copies of layers 0, 1, ... (`copy`) or zeros."""
  x = jnp.asarray(x)
  n_old = x.shape[0]
  if n_new < 0 or n_old < 1:
    raise ValueError(f"cannot grow a stack of {n_old} layers by {n_new}.")
  if copy:
    if n_new <= n_old:
      return jnp.concatenate([x, x[:n_new]], axis=0)
    return jnp.take(x, jnp.asarray(_source_index(n_old, n_new)), axis=0)
  return jnp.concatenate([x, jnp.zeros((n_new,) + x.shape[1:], x.dtype)], axis=0)


def grow_params(params, n_new: int):
  """Returns params with `n_new` layers appended to every stacked leaf (layer i + n = layer i).

  Works on plain or boxed (nn.Partitioned) trees; non-layer leaves are returned as they are."""
  return jax.tree_util.tree_map_with_path(
    lambda path, x: grow_leaf(x, n_new, copy=True) if is_layer_path(path) else x, params
  )


def grow_opt_state(opt_state, tx, params_old, n_new: int, copy: bool):
  """Grows every parameter-shaped part of `opt_state` along axis 0 like `grow_params`.

  tx: the optax transformation that made `opt_state` (any chain / inject_hyperparams / masked
  combination); `params_old`: the (unboxed) params before growth, which only tells which leaves
  are stacked. `copy`: new layers' state = copies of their source layers' state; otherwise zeros.
  Per-layer step counts grow the same way (`grow_layer_counts`); scalars and other non-parameter
  state (global counts, hyper-parameters) are returned unchanged."""
  n_old = layer_depth(params_old)
  is_layer = jax.tree_util.tree_map_with_path(lambda path, _: is_layer_path(path), params_old)

  def f(leaf, layer):
    if isinstance(leaf, optax.MaskedNode) or not layer:
      return leaf
    if np.ndim(leaf) < 1 or np.shape(leaf)[0] != n_old:
      raise ValueError(
        f"optimizer state leaf of shape {np.shape(leaf)} does not stack"
        f" {n_old} layers along axis 0."
      )
    return grow_leaf(leaf, n_new, copy=copy)

  grown = optax.tree_utils.tree_map_params(
    tx, f, opt_state, is_layer, is_leaf=lambda x: isinstance(x, optax.MaskedNode)
  )
  return grow_layer_counts(grown, n_old, n_new, copy)


def grow_layer_counts(opt_state, n_old: int, n_new: int, copy: bool):
  """Appends `n_new` entries to every per-layer step-count vector (`layer_count`) in `opt_state`:
  zeros (fresh, bias correction restarts at t = 1) or the source layers' counts (`copy`)."""

  def f(node):
    if not has_layer_count(node):
      return node
    counts = node.layer_count
    if np.shape(counts)[0] == 0:  # an optimizer built without stacked leaves
      return node
    if np.shape(counts)[0] != n_old:
      raise ValueError(
        f"per-layer step counts of length {np.shape(counts)[0]} do not match the"
        f" {n_old} stacked layers."
      )
    return node._replace(layer_count=grow_leaf(counts, n_new, copy=copy))

  return jax.tree.map(f, opt_state, is_leaf=has_layer_count)


def grow_state(state, new_depth: int, tx, copy_optimizer_state: bool = False):
  """A TrainState (params, opt_state) grown from its current depth to `new_depth`."""
  old = layer_depth(state.params)
  n_new = int(new_depth) - old
  if n_new <= 0:
    raise ValueError(f"stacking only grows the model; asked to go from {old} to {new_depth}.")
  return state.replace(
    params=grow_params(state.params, n_new),
    opt_state=grow_opt_state(state.opt_state, tx, state.params, n_new, copy_optimizer_state),
  )


# -------------------------------------------------------------------------------------------------
# Schedule.


def auto_initial_layers(num_layers: int, num_growths: int | None = None) -> int:
  """num_layers / 2^m for the largest m ≤ num_growths (default: the default fractions' count)
  that divides it (16 → 4, 12 → 3, 2 → 1, 6 → 3, 5 → 5 = no growth)."""
  if num_growths is None:
    num_growths = len(Stacking.DEFAULTS["fractions"])
  m = 0
  while m < num_growths and num_layers % (2 ** (m + 1)) == 0:
    m += 1
  return num_layers // 2**m


def stage_depths(initial_layers: int, num_layers: int, num_growths: int) -> list[int]:
  """Depth of stage 0..num_growths: min(initial · 2^s, num_layers)."""
  return [min(initial_layers * 2**s, num_layers) for s in range(num_growths + 1)]


@dataclasses.dataclass(frozen=True)
class StackingPlan(Plan):
  stage: int = 0


class Stacking(Method):
  """Doubles the depth at RST fractions `method.fractions`; see the module docstring."""

  name = "stacking"
  # initial_layers 0: the automatic choice for the config's model.num_layers.
  DEFAULTS = {"initial_layers": 0, "fractions": (0.125, 0.3), "copy_optimizer_state": False}

  @classmethod
  def default_config(cls, family: str, size: str) -> dict[str, Any]:
    num_layers = SIZES[family][size]["num_layers"]
    growths = len(cls.DEFAULTS["fractions"])
    return {
      "method": {**cls.DEFAULTS, "initial_layers": auto_initial_layers(num_layers, growths)},
      "optim": dict(per_layer_step_counts=True),
    }

  def __init__(self, config):
    super().__init__(config)
    m = settings(config, self.DEFAULTS)
    fractions = tuple(float(f) for f in m["fractions"])
    if any(not 0.0 <= f <= 1.0 for f in fractions) or list(fractions) != sorted(fractions):
      raise ConfigError(
        f"method.fractions must be increasing RST budget fractions in [0, 1]; got {fractions}."
      )
    initial = int(m["initial_layers"] or 0)
    if initial == 0:
      initial = auto_initial_layers(self.num_layers, len(fractions))
    if not 1 <= initial <= self.num_layers:
      raise ConfigError(
        f"method.initial_layers must be between 1 and model.num_layers"
        f" ({self.num_layers}); got {initial}."
      )
    self.fractions = fractions
    self.initial_layers = initial
    self.copy_optimizer_state = bool(m["copy_optimizer_state"])
    self.depths = stage_depths(initial, self.num_layers, len(fractions))
    if self.depths[-1] != self.num_layers:
      raise ConfigError(
        f"method.initial_layers={initial} doubled {len(fractions)} times reaches"
        f" {self.depths[-1]} layers, not model.num_layers={self.num_layers}; set"
        f" method.initial_layers={auto_initial_layers(self.num_layers, len(fractions))}"
        " (or 0 for that automatic choice)."
      )

  def stage(self, rst_fraction: float) -> int:
    return sum(1 for f in self.fractions if f <= rst_fraction)

  def initial_depth(self) -> int:
    return self.depths[0]

  def plan(self, rst_fraction: float, step: int) -> Plan:
    del step
    s = self.stage(rst_fraction)
    return StackingPlan(depth=self.depths[s], stage=s)

  def grow(self, state, new_depth: int, tx):
    return grow_state(state, new_depth, tx, self.copy_optimizer_state)

  def metrics(self, plan: Plan) -> dict:
    stage = getattr(plan, "stage", None)
    if stage is None:
      stage = self.depths.index(plan.depth)
    return {"active_layers": plan.active_layers, "stage": int(stage)}
