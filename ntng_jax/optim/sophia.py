"""Sophia-G (docs/paper.md §4.6), its Gauss-Newton-Bartlett (GNB) estimator, and the optimizer hooks.

Per tensor, on refresh steps (`is_hessian_refresh_step`) first `h ← b2·h + (1-b2)·ĥ`, then
`p ← p·(1 - lr·wd)`, `m ← b1·m + (1-b1)·g`, `p ← p - lr·s·sign(m)·min(|m| / (rho·h + eps), 1)`
(s = 1, or max(1e-3, RMS) with `scale_by_param_rms`); no bias correction. ĥ = `gnb_estimate`.
Extra args of `tx.update`: `logits_fn(params, batch) -> (logits [..., V], labels, weights)`,
`gnb_batch` (read only on refresh steps; None = no refresh), `gnb_rng`; other optimizers ignore
them. `OptimizerHook` is the trainer's contract with any optimizer; `SophiaHook` draws the fresh
Hessian batch and charges it on the RST meter. The `bs` convention, why not optax.contrib.sophia
and the paper-code bugs fixed: docs/implementation-notes.md, "Sophia-G".
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntng_jax.errors import ConfigError
from ntng_jax.optim import adamw as _adamw
from ntng_jax.optim.masks import BoolTree, broadcast_bool_tree
from ntng_jax.rst import Charge

LogitsFn = Callable[[Any, Any], tuple]  # (params, batch) -> (logits [..., V], labels, weights)


def is_hessian_refresh_step(count, update_interval: int, refresh_at_zero: bool = True):
  """True if the update with index `count` (0-based, = updates done so far) refreshes h.

  Refresh steps are count % update_interval == 0, excluding count == 0 unless
  `refresh_at_zero`. Python ints give a Python bool (for the host-side RST meter); arrays give
  a bool array (inside jit).
  """
  if isinstance(count, (int, np.integer)):
    return count % update_interval == 0 and (refresh_at_zero or count > 0)
  count = jnp.asarray(count)
  return (count % update_interval == 0) & ((count > 0) | refresh_at_zero)


def _sampled_ce_sum(params, logits_fn: LogitsFn, batch, rng):
  """Σ w·CE(logits, ŷ) over one (micro-)batch with ŷ ~ softmax(logits); aux = Σ w."""
  logits, _, weights = logits_fn(params, batch)
  logits = logits.astype(jnp.float32)
  y_hat = jax.random.categorical(rng, jax.lax.stop_gradient(logits), axis=-1)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y_hat)
  weights = weights.astype(jnp.float32)
  return jnp.sum(ce * weights), jnp.sum(weights)


def gnb_gradient(params, logits_fn: LogitsFn, batch, rng, *, microbatched: bool = False):
  """ĝ = ∇ of the weighted mean sampled-label CE over the whole batch, and N = Σ weights.

  batch: as `logits_fn` takes it, or with a leading micro-batch axis `[n, ...]` on every leaf if
  `microbatched` (then ŷ for micro-batch i is drawn with `fold_in(rng, i)`).
  Returns `(ĝ, N)`: a float32 tree like params, a float32 scalar.
  """
  grad_fn = jax.grad(_sampled_ce_sum, has_aux=True)
  if not microbatched:
    g_sum, n = grad_fn(params, logits_fn, batch, rng)
  else:
    num = jax.tree.leaves(batch)[0].shape[0]

    def body(carry, xs):
      g_acc, n_acc = carry
      i, micro = xs
      g, n = grad_fn(params, logits_fn, micro, jax.random.fold_in(rng, i))
      return (jax.tree.map(jnp.add, g_acc, g), n_acc + n), None

    zeros = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=jnp.float32), params)
    (g_sum, n), _ = jax.lax.scan(
      body, (zeros, jnp.zeros([], jnp.float32)), (jnp.arange(num), batch)
    )
  n_safe = jnp.maximum(n, 1.0)
  return jax.tree.map(lambda g: g.astype(jnp.float32) / n_safe, g_sum), n


def gnb_estimate(
  params,
  logits_fn: LogitsFn,
  batch,
  rng,
  *,
  microbatched: bool = False,
  num_tokens: Optional[float] = None,
  clip_norm: Optional[float] = None,
):
  """GNB estimate of the Gauss-Newton diagonal: `num_tokens·ĝ⊙ĝ`, a float32 tree like params.

  ĝ from `gnb_gradient` (optionally rescaled to global L2 norm ≤ `clip_norm`, as the paper's T5
  code did); num_tokens defaults to N, the batch's label-token count (sum of weights), which makes
  the estimate unbiased for diag GN of the mean token loss. Pass the paper's `bs` to reproduce
  its scale (see the module docstring).
  """
  g, n = gnb_gradient(params, logits_fn, batch, rng, microbatched=microbatched)
  if clip_norm is not None:
    norm = optax.tree.norm(g)
    g = jax.tree.map(lambda x: x * jnp.minimum(1.0, clip_norm / jnp.maximum(norm, 1e-30)), g)
  scale = n if num_tokens is None else jnp.asarray(num_tokens, jnp.float32)
  return jax.tree.map(lambda x: scale * jnp.square(x), g)


def gnb_hessian_diagonal(
  logits_fn: LogitsFn,
  *,
  microbatched: bool = False,
  num_tokens: Optional[float] = None,
  clip_norm: Optional[float] = None,
) -> optax.GradientTransformationExtraArgs:
  """`gnb_estimate` as a stateless transformation for `optax.contrib.sophia(hessian_diagonal_fn=)`.

  `update(updates, state, params, *, gnb_batch, gnb_rng, **ignored) -> (ĥ, state)`; ĥ is a tree
  like params. With it, optax.contrib.sophia is Sophia-G with gamma = rho, but with that
  implementation's conventions (see the module docstring), not the paper's.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, gnb_batch=None, gnb_rng=None, **extra):
    del updates, extra
    if params is None or gnb_batch is None or gnb_rng is None:
      raise ValueError("gnb_hessian_diagonal needs params, gnb_batch= and gnb_rng=.")
    est = gnb_estimate(
      params,
      logits_fn,
      gnb_batch,
      gnb_rng,
      microbatched=microbatched,
      num_tokens=num_tokens,
      clip_norm=clip_norm,
    )
    return est, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class SophiaGState(NamedTuple):
  """State of `sophia_g`: `count` int32 [] (updates done), `mu` (m) and `hessian` (h), float32
  trees like params."""

  count: jax.Array
  mu: Any
  hessian: Any


def sophia_g(
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.965,
  b2: float = 0.99,
  rho: float = 0.04,
  weight_decay: float = 0.0,
  update_interval: int = 10,
  eps: float = 1e-15,
  batch_tokens: Optional[float] = None,
  mask: Optional[BoolTree] = None,
  scale_by_param_rms: bool = False,
  *,
  refresh_at_zero: bool = True,
  gnb_microbatched: bool = False,
  gnb_clip_norm: Optional[float] = None,
  hessian_estimator: Optional[Callable[..., Any]] = None,
  stacked: Optional[BoolTree] = None,
) -> optax.GradientTransformationExtraArgs:
  """Sophia-G exactly as in the module docstring (defaults: BERT's β, ρ, k).

  learning_rate: float, schedule of the update count, or a traced scalar (inject_hyperparams).
  batch_tokens: the paper's `bs` (BERT 196608, T5 5120); None = each Hessian batch's own N.
  mask: which leaves are decayed (True = decay; pytree, prefix, or callable of params).
  scale_by_param_rms: the paper's T5 variant (lr·max(1e-3, RMS(decayed p)), decay with plain lr).
  refresh_at_zero: refresh h before update 0 (BERT, default) or first before update k (T5).
  gnb_microbatched / gnb_clip_norm: see `gnb_gradient` / `gnb_estimate`.
  hessian_estimator: replaces the GNB estimator: `(params, **extra_args) -> ĥ` (tree like
    params, the quantity that enters the EMA); called only on refresh steps, inside lax.cond.
  stacked: leaves whose axis 0 stacks layers (per-layer RMS).
  Extra args of `update`: `logits_fn`, `gnb_batch`, `gnb_rng` (see the module docstring).
  """

  def init_fn(params):
    zeros = lambda p: jnp.zeros_like(p, dtype=jnp.float32)
    return SophiaGState(
      count=jnp.zeros([], jnp.int32),
      mu=jax.tree.map(zeros, params),
      hessian=jax.tree.map(zeros, params),
    )

  def estimate(params, extra):
    if hessian_estimator is not None:
      return hessian_estimator(params, **extra)
    logits_fn, rng = extra.get("logits_fn"), extra.get("gnb_rng")
    if logits_fn is None or rng is None:
      raise ValueError("sophia_g: with gnb_batch= the update also needs logits_fn= and gnb_rng=.")
    return gnb_estimate(
      params,
      logits_fn,
      extra["gnb_batch"],
      rng,
      microbatched=gnb_microbatched,
      num_tokens=batch_tokens,
      clip_norm=gnb_clip_norm,
    )

  def update_fn(updates, state, params=None, **extra):
    if params is None:
      raise ValueError("sophia_g needs params.")
    h = state.hessian
    if hessian_estimator is not None or extra.get("gnb_batch") is not None:

      def refresh(h):
        est = estimate(params, extra)
        return jax.tree.map(lambda h, e: b2 * h + (1 - b2) * e.astype(jnp.float32), h, est)

      pred = is_hessian_refresh_step(state.count, update_interval, refresh_at_zero)
      h = jax.lax.cond(pred, refresh, lambda h: h, h)

    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g.astype(jnp.float32), state.mu, updates)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    lr = jnp.asarray(lr, jnp.float32)
    decay = jax.tree.map(
      lambda f: lr * weight_decay if f else jnp.zeros([], jnp.float32),
      broadcast_bool_tree(mask, params, True),
    )
    flags = broadcast_bool_tree(stacked, params, False)

    def leaf(p, m, h, d, s):
      direction = jnp.sign(m) * jnp.minimum(jnp.abs(m) / (rho * h + eps), 1.0)
      p32 = p.astype(jnp.float32)
      step = lr
      if scale_by_param_rms:
        step = lr * jnp.maximum(1e-3, _adamw.param_rms(p32 * (1 - d), s))
      return (-d * p32 - step * direction).astype(p.dtype)

    new_updates = jax.tree.map(leaf, params, mu, h, decay, flags)
    count = optax.safe_int32_increment(state.count)
    return new_updates, SophiaGState(count=count, mu=mu, hessian=h)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# -------------------------------------------------------------------------------------------------
# Optimizer hooks: what an optimizer needs from the trainer beyond the step's gradients.

AUX_PREFIX = "optimizer_aux/"  # batch keys of the extra batch an optimizer asked for


class OptimizerHook:
  """The trainer's contract with an optimizer (the default: nothing beyond gradients).

  * `aux_micro_batches`: micro-batches of fresh data the update reads (0 = none); the train step
    then always receives an extra batch of the training batch's shape (`with_aux`), so it
    compiles once;
  * `draws_fresh(step)`: whether the trainer draws that batch from the data stream before the
    step's training batch (on other steps the training batch stands in; it is not read);
  * `charges(table, step, batch_size, depth)`: the optimizer's RST charges for the step;
  * `update_args(logits_fn, aux, rng)`: extra keyword arguments of `tx.update`, inside jit.
  The trainer and the train step only call these; they name no optimizer.
  """

  aux_micro_batches = 0

  def __init__(self, name: str = ""):
    self.name = name

  def draws_fresh(self, step: int) -> bool:
    del step
    return False

  def charges(self, table, step: int, batch_size: int, depth: int) -> list:
    """A table with the optimizer's own per-step entry (the paper's T5 Lion/Sophia times) charges
    it every step, as the paper did."""
    del step, depth
    return [Charge("extra", self.name, batch_size)] if self.name in table.extra else []

  def with_aux(self, batch: dict, aux: Optional[dict]) -> dict:
    """The batch the train step takes: `batch`, plus the extra batch under AUX_PREFIX keys."""
    if not self.aux_micro_batches:
      return batch
    aux = batch if aux is None else aux
    return {**batch, **{AUX_PREFIX + k: v for k, v in aux.items()}}

  def split_aux(self, batch: dict) -> tuple[dict, Optional[dict]]:
    """(training batch, extra batch or None if it has none): the inverse of `with_aux`."""
    if not self.aux_micro_batches:
      return batch, None
    n = len(AUX_PREFIX)
    aux = {k[n:]: v for k, v in batch.items() if k.startswith(AUX_PREFIX)}
    return {k: v for k, v in batch.items() if not k.startswith(AUX_PREFIX)}, aux or None

  def update_args(self, logits_fn: LogitsFn, aux_micro: Optional[dict], rng) -> dict:
    del logits_fn, aux_micro, rng
    return {}


class SophiaHook(OptimizerHook):
  """Sophia-G's Hessian batch: on refresh steps (`is_hessian_refresh_step`) the first
  `aux_micro_batches` micro-batches of a batch drawn fresh from the data stream and never trained
  on (BERT: 6 x 128 = 768 sequences, `hessian_batch_fraction` 0.5 of a 12-micro-batch step; T5:
  one full batch, fraction 1.0), at the model's full current depth. Charged as that many train
  micro-batches at full depth on refresh steps, unless `free_updates` (the paper's ablation) or
  the table has Sophia's own per-step entry (the paper's T5 table)."""

  def __init__(
    self,
    num_micro: int,
    micro_batch_size: int,
    hessian_batch_fraction: float = 1.0,
    update_interval: int = 10,
    refresh_at_zero: bool = True,
    free_updates: bool = False,
  ):
    super().__init__("sophia")
    if not 0.0 < hessian_batch_fraction <= 1.0:
      raise ConfigError(
        f"optim.hessian_batch_fraction must be in (0, 1] (the fraction of a"
        f" training batch's micro-batches the Hessian pass reads); got"
        f" {hessian_batch_fraction}."
      )
    self.aux_micro_batches = max(1, round(hessian_batch_fraction * num_micro))
    self.micro_batch_size = int(micro_batch_size)
    self.update_interval, self.refresh_at_zero = int(update_interval), bool(refresh_at_zero)
    self.free_updates = bool(free_updates)

  @property
  def hessian_sequences(self) -> int:
    return self.aux_micro_batches * self.micro_batch_size

  def draws_fresh(self, step: int) -> bool:
    return bool(is_hessian_refresh_step(int(step), self.update_interval, self.refresh_at_zero))

  def charges(self, table, step: int, batch_size: int, depth: int) -> list:
    if self.name in table.extra:
      return [Charge("extra", self.name, batch_size)]
    if self.free_updates or not self.draws_fresh(step):
      return []
    return [Charge("train", int(depth), self.hessian_sequences)]

  def hessian_batch(self, aux_micro: dict) -> dict:
    """The Hessian batch [n, micro, ...]: the first n micro-batches of the split extra batch."""
    return jax.tree.map(lambda x: x[: self.aux_micro_batches], aux_micro)

  def update_args(self, logits_fn: LogitsFn, aux_micro: Optional[dict], rng) -> dict:
    """Sophia's `logits_fn`, `gnb_batch`, `gnb_rng`; no Hessian batch (no refresh) without one."""
    if aux_micro is None:
      return {}
    return dict(logits_fn=logits_fn, gnb_batch=self.hessian_batch(aux_micro), gnb_rng=rng)
