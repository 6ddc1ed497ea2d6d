"""The scanned layer stack shared by BERT and both T5 stacks.

Parameters of all layers are stacked along a leading axis named 'layers': layer i of a stacked
parameter is `leaf[i]`, so growing the model (stacking) concatenates along axis 0 and builds a
module with a larger `num_layers`. A keep vector (bool [L], layer dropping) runs in one of two
ways, `model.layer_drop_impl` (`resolve_layer_drop_impl`): 'cond', the full-depth scan with each
layer under `nn.cond`; or 'compact' (`compact_layers`), a loop over only the k kept layers whose
cost scales with k. Both give the same outputs and gradients; a dropped layer gets a zero gradient.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def resolve_layer_loop(layer_loop: str, hidden_size: int) -> str:
  """'scan' (a loop over the stacked layers) or 'unroll' (the same scan fully unrolled: one
  copy of the layer per depth in the program, the parameters still stacked) for
  `model.layer_loop`; 'auto' picks what measured faster (BENCHMARKS.md, "CPU speed"): unrolled
  on CPU up to `UNROLL_MAX_HIDDEN_CPU`, the scan otherwise."""
  if layer_loop != "auto":
    return layer_loop
  if jax.devices()[0].platform == "cpu" and hidden_size <= UNROLL_MAX_HIDDEN_CPU:
    return "unroll"
  return "scan"


# Unrolled/scanned train step on the 2-core CPU (benchmarks/variants.py, near quiet): BERT small
# (D=256) 0.86, T5 small (D=256) 0.70, BERT base (D=768) 1.52.
UNROLL_MAX_HIDDEN_CPU = 256


def resolve_layer_drop_impl(impl: str) -> str:
  """'cond' or 'compact' for `model.layer_drop_impl`; 'auto' is 'cond' on CPU (CPU runs keep
  their earlier results bit for bit) and 'compact' on GPUs and TPUs, where the cond path's cost
  does not shrink with the dropped layers (BENCHMARKS.md)."""
  if impl != "auto":
    return impl
  return "cond" if jax.devices()[0].platform == "cpu" else "compact"


def compact_layers(layer_fn, stacked, x, broadcast, keep):
  """Runs only the kept layers: `layer_fn(params_i, x, *broadcast) -> x` for the i with keep[i],
  in increasing i, reading layer i's parameters from `stacked` (leaves [L, ...]) inside a loop
  whose trip count is k = keep.sum() (one program for every keep; cost ∝ k).

  The custom VJP saves each kept layer's input (as remat does), runs the loop backwards
  recomputing one layer at a time, and scatters each layer's parameter gradient back to its slot
  i of the [L, ...] gradient (zero for dropped layers); gradients of floating `broadcast` inputs
  (T5's encoder output) are summed over the kept layers."""
  keep = jnp.asarray(keep).astype(bool)
  n = keep.shape[0]
  order = jnp.argsort(jnp.logical_not(keep), stable=True).astype(jnp.int32)  # kept first
  k = jnp.sum(keep, dtype=jnp.int32)
  leaves, treedef = jax.tree.flatten(broadcast)
  floating = [jnp.issubdtype(jnp.result_type(v), jnp.inexact) for v in leaves]
  diff = [v for v, f in zip(leaves, floating) if f]
  fixed = [v for v, f in zip(leaves, floating) if not f]

  def call(p, h, diff, fixed):
    d, c = iter(diff), iter(fixed)
    args = treedef.unflatten([next(d) if f else next(c) for f in floating])
    return layer_fn(p, h, *args)

  def take(stacked, i):
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, 0, keepdims=False), stacked)

  @jax.custom_vjp
  def run(stacked, x, diff, fixed, order, k):
    return jax.lax.fori_loop(0, k, lambda j, h: call(take(stacked, order[j]), h, diff, fixed), x)

  def fwd(stacked, x, diff, fixed, order, k):
    def body(j, carry):
      h, saved = carry
      saved = jax.lax.dynamic_update_index_in_dim(saved, h, j, 0)
      return call(take(stacked, order[j]), h, diff, fixed), saved

    y, saved = jax.lax.fori_loop(0, k, body, (x, jnp.zeros((n,) + x.shape, x.dtype)))
    return y, (stacked, saved, diff, fixed, order, k)

  def bwd(res, g):
    stacked, saved, diff, fixed, order, k = res

    def body(j, carry):
      g, g_stacked, g_diff = carry
      i = k - 1 - j
      h = jax.lax.dynamic_index_in_dim(saved, i, 0, keepdims=False)
      _, vjp = jax.vjp(lambda p, h, d: call(p, h, d, fixed), take(stacked, order[i]), h, diff)
      g_p, g, g_d = vjp(g)
      g_stacked = jax.tree.map(
        lambda acc, gi: jax.lax.dynamic_update_index_in_dim(acc, gi.astype(acc.dtype), order[i], 0),
        g_stacked,
        g_p,
      )
      return g, g_stacked, jax.tree.map(jnp.add, g_diff, g_d)

    zeros = (g, jax.tree.map(jnp.zeros_like, stacked), jax.tree.map(jnp.zeros_like, diff))
    g, g_stacked, g_diff = jax.lax.fori_loop(0, k, body, zeros)
    no_grad = lambda v: np.zeros(jnp.shape(v), jax.dtypes.float0)  # noqa: E731
    return g_stacked, g, g_diff, [no_grad(v) for v in fixed], no_grad(order), no_grad(k)

  run.defvjp(fwd, bwd)
  return run(stacked, x, diff, fixed, order, k)


class Block(nn.Module):
  """Base of a scannable layer. Subclasses define `setup` and `layer(x, *args) -> x`.

  `__call__(x, keep, *args) -> (x, None)` is the scan body: `keep` is None (always run) or a
  bool scalar (run `layer` under `nn.cond`, identity otherwise)."""

  cfg: Any
  dtype: Any = jnp.float32
  deterministic: bool = True
  decode_len: int = 0  # > 0: incremental decoding with a KV cache of this length (T5 decoder)

  def layer(self, x, *args):
    raise NotImplementedError

  def __call__(self, x, keep, *args):
    # Initialisation must create the parameters regardless of keep (nn.cond requires both
    # branches to create the same variables), so it always runs the layer.
    if keep is None or self.is_initializing():
      return self.layer(x, *args).astype(x.dtype), None
    y = nn.cond(
      keep, lambda m, x, *a: m.layer(x, *a).astype(x.dtype), lambda m, x, *a: x, self, x, *args
    )
    return y, None


class LayerStack(nn.Module):
  """`num_layers` copies of `block_cls` applied in sequence with `nn.scan`.

  `__call__(x [B, S, D], *broadcast, keep=None) -> [B, S, D]`; `broadcast` are the extra
  per-call arguments every layer sees (masks, position buckets, encoder output), `keep` is None
  or bool `[num_layers]`. Parameters live under '<name>/layers/...' with a leading layer axis.
  The compact path needs `deterministic` and no KV cache; otherwise a keep runs the cond path."""

  block_cls: type[Block]
  cfg: Any
  num_layers: int
  dtype: Any = jnp.float32
  deterministic: bool = True
  decode_len: int = 0

  @nn.compact
  def __call__(self, x, *broadcast, keep=None):
    block = self.block_cls
    if self.cfg.remat:
      block = nn.remat(block, prevent_cse=False)
    if keep is not None:
      keep = jnp.asarray(keep).astype(bool)
      if keep.shape != (self.num_layers,):
        raise ValueError(f"keep must have shape ({self.num_layers},); got {keep.shape}.")
      compact = (
        resolve_layer_drop_impl(self.cfg.layer_drop_impl) == "compact"
        and self.deterministic
        and not self.decode_len
        and not self.is_initializing()
      )
      if compact:
        layer = self.block_cls(self.cfg, self.dtype, self.deterministic, self.decode_len)

        def layer_fn(p, h, *args):
          return layer.apply({"params": p}, h, None, *args)[0]

        return compact_layers(layer_fn, self.variables["params"]["layers"], x, broadcast, keep)
    scanned = nn.scan(
      block,
      variable_axes={"params": 0, "cache": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast if keep is None else 0,) + (nn.broadcast,) * len(broadcast),
      length=self.num_layers,
      unroll=(
        self.num_layers
        if resolve_layer_loop(self.cfg.layer_loop, self.cfg.hidden_size) == "unroll"
        else 1
      ),
      metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, _ = scanned(self.cfg, self.dtype, self.deterministic, self.decode_len, name="layers")(
      x, keep, *broadcast
    )
    return x
