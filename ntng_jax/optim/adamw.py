"""AdamWScale, the T5 baseline optimizer (docs/paper.md §3.2), and per-tensor RMS step scaling.

One step: `p ← p - lr·max(1e-3, RMS(p))·u - lr·wd·p`, with u HuggingFace's bias-corrected Adam
direction (eps added to sqrt(v) before the step-size correction) and decay with the unscaled lr.
For stacked leaves (axis 0 = layer) the RMS is per layer. Conventions and how they differ from
optax and the paper's code: docs/implementation-notes.md, "AdamWScale".
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from ntng_jax.optim import layer_count as _lc
from ntng_jax.optim.masks import BoolTree, broadcast_bool_tree


def param_rms(p: jax.Array, stacked: bool = False) -> jax.Array:
  """RMS of a parameter tensor, in float32.

  p: any shape. Returns a scalar `sqrt(mean(p**2))`, or, if `stacked`, an array of shape
  `[L, 1, ..., 1]` with the RMS of each slice `p[i]` (broadcastable against `p`).
  """
  p2 = jnp.square(p.astype(jnp.float32))
  if stacked:
    return jnp.sqrt(jnp.mean(p2, axis=tuple(range(1, p.ndim)), keepdims=True))
  return jnp.sqrt(jnp.mean(p2))


def scale_by_param_rms(
  floor: float = 1e-3, stacked: Optional[BoolTree] = None
) -> optax.GradientTransformation:
  """Multiplies each update leaf by `max(floor, RMS(param))` of its parameter tensor.

  Stateless; `update(updates, state, params)` requires `params`. `stacked`: leaves whose
  leading axis stacks layers (RMS per slice), see `broadcast_bool_tree` for the accepted forms.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_param_rms needs params.")
    flags = broadcast_bool_tree(stacked, params, False)
    updates = jax.tree.map(
      lambda u, p, s: (u * jnp.maximum(floor, param_rms(p, s))).astype(u.dtype),
      updates,
      params,
      flags,
    )
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_adam_hf(
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-6,
  *,
  stacked: Optional[BoolTree] = None,
  per_layer_counts: bool = False,
) -> optax.GradientTransformation:
  """Bias-corrected Adam direction with HuggingFace's eps placement.

  Returns `u = sqrt(1 - b2^t) / (1 - b1^t) · m / (sqrt(v) + eps)` with
  `m ← b1·m + (1-b1)·g`, `v ← b2·v + (1-b2)·g²`, t = 1, 2, ... (same shapes as the updates).
  State: `optax.ScaleByAdamState(count, mu, nu)` like `optax.scale_by_adam`; moments in float32.
  `per_layer_counts`: the state is `ScaleByLayeredAdamState(count, layer_count, mu, nu)` and
  each layer of the `stacked` leaves is bias-corrected with its own t (`ntng_jax.optim.layer_count`).
  """

  def init_fn(params):
    zeros = lambda p: jnp.zeros_like(p, dtype=jnp.float32)
    mu, nu = jax.tree.map(zeros, params), jax.tree.map(zeros, params)
    if per_layer_counts:
      flags = broadcast_bool_tree(stacked, params, False)
      return _lc.ScaleByLayeredAdamState(
        count=jnp.zeros([], jnp.int32),
        layer_count=_lc.init_layer_count(params, flags),
        mu=mu,
        nu=nu,
      )
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

  def step_size(c):
    t = c.astype(jnp.float32)
    return jnp.sqrt(1 - b2**t) / (1 - b1**t)

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_int32_increment(state.count)
    mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g.astype(jnp.float32), updates, state.mu)
    nu = jax.tree.map(
      lambda g, v: b2 * v + (1 - b2) * jnp.square(g.astype(jnp.float32)), updates, state.nu
    )
    direction = lambda g, m, v, s: (s * m / (jnp.sqrt(v) + eps)).astype(g.dtype)
    if not per_layer_counts:
      step = step_size(count)
      new = jax.tree.map(lambda g, m, v: direction(g, m, v, step), updates, mu, nu)
      return new, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)
    flags = broadcast_bool_tree(stacked, updates, False)
    layer_count = optax.safe_int32_increment(state.layer_count)
    new = _lc.map_with_counts(direction, step_size, count, layer_count, flags, updates, mu, nu)
    return new, _lc.ScaleByLayeredAdamState(count=count, layer_count=layer_count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def adamw_scale(
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-6,
  weight_decay: float = 0.0,
  mask: Optional[BoolTree] = None,
  *,
  stacked: Optional[BoolTree] = None,
  per_layer_counts: bool = False,
) -> optax.GradientTransformation:
  """The paper's T5 optimizer "AdamWScale" (defaults = docs/paper.md §3.2).

  One step: `p ← p - lr·max(1e-3, RMS(p))·u - lr·wd·p`, u from `scale_by_adam_hf`; see the
  module docstring for the eps and weight-decay conventions. `mask`: which leaves are decayed
  (optax convention: True = decay; pytree, prefix or callable). `stacked`: leaves with a leading
  layer axis (per-layer RMS; with `per_layer_counts`, per-layer step counts too).
  """
  return optax.chain(
    scale_by_adam_hf(b1, b2, eps, stacked=stacked, per_layer_counts=per_layer_counts),
    scale_by_param_rms(1e-3, stacked),
    optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(learning_rate),
  )
