"""Pure steps (jitted by `train.programs`): `train_step(state, batch, rng, controls)`,
`eval_step(params, batch)`, `score_step(params, batch, keep)`.

`controls` carries what the host decides from the RST clock each step: `learning_rate` (f32 [])
and optionally `keep` (bool [num_micro, L], a row per micro-batch, or [L]) for layer dropping.
The global batch of B sequences is split into B / micro_batch_size micro-batches; gradients are
accumulated with `lax.scan`; the loss is the mean over micro-batches of each micro-batch's mean
token loss (the paper's loss ÷ accumulation).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ntng_jax import partitioning
from ntng_jax.models import losses
from ntng_jax.train.state import TrainState

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype_of(name_or_dtype):
  """A config's compute dtype name ('float32', 'bfloat16') or a jnp dtype -> the jnp dtype."""
  return DTYPES[name_or_dtype] if isinstance(name_or_dtype, str) else name_or_dtype


def split_micro_batches(batch: dict, num_micro: int, mesh=None) -> dict:
  """[B, ...] -> [num_micro, B / num_micro, ...]; row r goes to micro-batch r % num_micro, so each
  device's contiguous shard contributes equally to every micro-batch (no resharding)."""

  def split(x):
    x = x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)
    if mesh is not None:
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, partitioning.BATCH_AXES)))
    return x

  return jax.tree.map(split, batch)


def set_learning_rate(opt_state, learning_rate):
  """Writes the host-computed learning rate into an `optax.inject_hyperparams` state."""
  hyper = dict(opt_state.hyperparams)
  hyper["learning_rate"] = jnp.asarray(learning_rate, hyper["learning_rate"].dtype)
  return opt_state._replace(hyperparams=hyper)


def make_loss_fn(model, compute_dtype, groups: int = 1) -> Callable:
  """`loss_fn(params, batch, keep) -> []`: the mean token loss of a micro-batch; with `groups`
  > 1 the micro-batch holds `groups` reference micro-batches (row i in group i % groups) and the
  loss is the mean of their mean token losses (the same loss as `groups` separate calls)."""

  def loss_fn(params, batch, keep):
    logits, labels, weights = model.logits(params, batch, keep=keep, dtype=compute_dtype)
    if groups == 1:
      return losses.mean_token_loss(logits, labels, weights)
    weights = weights.astype(jnp.float32)
    rows = lambda x: x.reshape(x.shape[0], -1).sum(-1).reshape(-1, groups).sum(0)
    totals = rows(losses.token_losses(logits, labels) * weights)
    return jnp.mean(totals / jnp.maximum(rows(weights), 1.0))

  return loss_fn


def make_train_step(
  model,
  tx: optax.GradientTransformation,
  num_micro: int,
  compute_dtype: str,
  mesh=None,
  optimizer_hook=None,
  groups: int = 1,
) -> Callable:
  """Returns the pure `train_step(state, batch, rng, controls) -> (state, metrics)`.

  The batch runs as `num_micro` micro-batches of `groups` reference micro-batches each; the loss
  and gradient are the mean over the `num_micro × groups` reference micro-batches whatever the
  split (`make_loss_fn`).

  `controls['keep']` (optional): bool [L] (every micro-batch) or [num_micro, L] (row m for
  micro-batch m); the gradient is the mean over micro-batches, so a layer dropped in some of them
  gets the others' gradient. `optimizer_hook` (an `ntng_jax.optim.OptimizerHook`, e.g. Sophia-G's):
  the batch may carry the extra batch it asked for (`hook.split_aux`), split into micro-batches
  like the training batch and passed to `tx.update` with the full-depth `logits_fn` and `rng`
  through `hook.update_args`.
  """
  dtype = compute_dtype_of(compute_dtype)
  loss_fn = make_loss_fn(model, dtype, groups)
  grad_fn = jax.value_and_grad(loss_fn)

  def train_step(state: TrainState, batch: dict, rng: jax.Array, controls: dict[str, Any]):
    keep = controls.get("keep")
    aux = None
    if optimizer_hook is not None:
      batch, aux = optimizer_hook.split_aux(batch)
    micro = split_micro_batches(batch, num_micro, mesh)
    if keep is not None:
      keep = jnp.asarray(keep, bool)
      keep = jnp.broadcast_to(keep, (num_micro, keep.shape[-1]))

    def accumulate(carry, xs):
      loss_sum, grad_sum = carry
      micro_batch, micro_keep = xs
      loss, grads = grad_fn(state.params, micro_batch, micro_keep)
      return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (loss_sum, grad_sum), _ = jax.lax.scan(
      accumulate, (jnp.zeros((), jnp.float32), zeros), (micro, keep)
    )
    loss = loss_sum / num_micro
    grads = jax.tree.map(lambda g: g / num_micro, grad_sum)

    extra = {}
    if optimizer_hook is not None:
      aux_micro = None if aux is None else split_micro_batches(aux, num_micro, mesh)
      extra = optimizer_hook.update_args(
        lambda p, b: model.logits(p, b, dtype=dtype), aux_micro, rng
      )
    opt_state = set_learning_rate(state.opt_state, controls["learning_rate"])
    updates, opt_state = tx.update(grads, opt_state, state.params, **extra)
    params = optax.apply_updates(state.params, updates)
    metrics = {"train_loss": loss, "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(model, compute_dtype: str = "float32") -> Callable:
  """`eval_step(params, batch) -> {'loss_sum', 'weight_sum', 'correct_sum'}` at full depth."""
  dtype = compute_dtype_of(compute_dtype)

  def eval_step(params, batch):
    logits, labels, weights = model.logits(params, batch, dtype=dtype)
    token_loss = losses.token_losses(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {
      "loss_sum": jnp.sum(token_loss * weights),
      "weight_sum": jnp.sum(weights),
      "correct_sum": jnp.sum(correct * weights),
    }

  return eval_step


def make_score_step(model, compute_dtype: str = "float32") -> Callable:
  """`score_step(params, batch, keep) -> [B]` per-example mean token losses (forward only): the
  scoring pre-pass of batch selection and the kind 'forward' of the RST meter."""
  dtype = compute_dtype_of(compute_dtype)

  def score_step(params, batch, keep=None):
    logits, labels, weights = model.logits(params, batch, keep=keep, dtype=dtype)
    return losses.per_example_loss(logits, labels, weights)

  return score_step
