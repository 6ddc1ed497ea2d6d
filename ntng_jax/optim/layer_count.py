"""Per-layer step counts for bias-corrected optimizers, so stacking's new layers start fresh.

Adam-family states may carry `layer_count` (int32 [L]) next to optax's scalar `count`: the
updates each stacked layer has had, used for its bias correction (shape [0] without stacked
leaves). Opt-in (`optim.per_layer_step_counts`, set by stacking); grown by
`methods.stacking.grow_layer_counts`, held for skipped layers by layer dropping. Why:
docs/implementation-notes.md, "Per-layer step counts".
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ntng_jax.optim.masks import broadcast_bool_tree


def stacked_depth(params, flags) -> int:
  """The common leading size of the leaves flagged as stacked; 0 if none is."""
  depths = {
    int(jnp.shape(p)[0]) for p, f in zip(jax.tree.leaves(params), jax.tree.leaves(flags)) if f
  }
  if len(depths) > 1:
    raise ValueError(
      f"stacked parameters must share one depth for per-layer step counts;"
      f" found depths {sorted(depths)}."
    )
  return depths.pop() if depths else 0


def init_layer_count(params, flags) -> jax.Array:
  """int32 zeros [L] (L = `stacked_depth`), the per-layer counts of a fresh optimizer."""
  return jnp.zeros([stacked_depth(params, flags)], jnp.int32)


def map_with_counts(op, fn, count, layer_count, flags, *trees) -> Any:
  """`jax.tree.map(lambda *xs: op(*xs, c), *trees)` with `c = fn(t)`: t = `count` for plain
  leaves; for stacked leaves t is each layer's count and `c` is shaped [L, 1, ...]."""
  scalar = fn(count)

  def leaf(f, *xs):
    if not f:
      return op(*xs, scalar)
    return op(*xs, fn(layer_count).reshape((-1,) + (1,) * (jnp.ndim(xs[0]) - 1)))

  return jax.tree.map(leaf, flags, *trees)


def bias_correction(moment, decay: float, count, layer_count, flags) -> Any:
  """`moment / (1 - decay**t)` per leaf, t per layer for stacked leaves (optax's correction)."""
  return map_with_counts(
    lambda m, c: m / c.astype(m.dtype), lambda t: 1 - decay**t, count, layer_count, flags, moment
  )


class ScaleByLayeredAdamState(NamedTuple):
  """optax's `ScaleByAdamState` plus `layer_count` (int32 [L], updates done by each stacked
  layer; [0] if no leaf is stacked)."""

  count: jax.Array
  layer_count: jax.Array
  mu: Any
  nu: Any


def has_layer_count(x) -> bool:
  """True for an optimizer-state node carrying per-layer counts."""
  return isinstance(x, ScaleByLayeredAdamState)


def scale_by_adam_layered(
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  mu_dtype: Any = None,
  *,
  stacked=None,
) -> optax.GradientTransformation:
  """`optax.scale_by_adam` (same operations, so bitwise the same updates while the counts agree)
  with each stacked layer bias-corrected by its own `layer_count`. `stacked`: bool tree, prefix
  or callable of params marking leaves whose axis 0 stacks layers (None: no per-layer counts)."""

  def init_fn(params):
    flags = broadcast_bool_tree(stacked, params, False)
    return ScaleByLayeredAdamState(
      count=jnp.zeros([], jnp.int32),
      layer_count=init_layer_count(params, flags),
      mu=optax.tree.zeros_like(params, dtype=mu_dtype),
      nu=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None):
    del params
    flags = broadcast_bool_tree(stacked, updates, False)
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count_inc = optax.safe_int32_increment(state.count)
    layer_inc = optax.safe_int32_increment(state.layer_count)
    mu_hat = bias_correction(mu, b1, count_inc, layer_inc, flags)
    nu_hat = bias_correction(nu, b2, count_inc, layer_inc, flags)
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu_hat, nu_hat)
    mu = optax.tree.cast(mu, mu_dtype)
    nu = optax.tree.cast_like(nu, state.nu)
    return updates, ScaleByLayeredAdamState(count=count_inc, layer_count=layer_inc, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def adamw_layered(
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 1e-4,
  mask=None,
  *,
  stacked=None,
) -> optax.GradientTransformation:
  """`optax.adamw` (torch AdamW) with per-layer step counts for the `stacked` leaves."""
  return optax.chain(
    scale_by_adam_layered(b1, b2, eps, stacked=stacked),
    optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(learning_rate),
  )
