"""Pure, jitted steps: `train_step(state, batch, rng, controls)`, `eval_step(params, batch)`.

`controls` carries what the host decides from the RST clock each step: `learning_rate` (f32 []),
and optionally `keep` (bool [L]) for layer dropping. The global batch of B sequences is split into
B / micro_batch_size micro-batches; gradients are accumulated with `lax.scan`, and the loss is the
mean over micro-batches of each micro-batch's mean token loss (the paper's loss ÷ accumulation).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from ntng_jax import partitioning
from ntng_jax.models import losses
from ntng_jax.train.state import TrainState

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def split_micro_batches(batch: dict, num_micro: int, mesh=None) -> dict:
  """[B, ...] -> [num_micro, B / num_micro, ...]; row r goes to micro-batch r % num_micro, so each
  device's contiguous shard contributes equally to every micro-batch (no resharding)."""
  def split(x):
    x = x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)
    if mesh is not None:
      x = jax.lax.with_sharding_constraint(
          x, NamedSharding(mesh, P(None, partitioning.BATCH_AXES)))
    return x
  return jax.tree.map(split, batch)


def set_learning_rate(opt_state, learning_rate):
  """Writes the host-computed learning rate into an `optax.inject_hyperparams` state."""
  hyper = dict(opt_state.hyperparams)
  hyper["learning_rate"] = jnp.asarray(learning_rate, hyper["learning_rate"].dtype)
  return opt_state._replace(hyperparams=hyper)


def make_loss_fn(model, compute_dtype) -> Callable:
  def loss_fn(params, batch, keep):
    logits, labels, weights = model.logits(params, batch, keep=keep, dtype=compute_dtype)
    return losses.mean_token_loss(logits, labels, weights)
  return loss_fn


def make_train_step(model, tx: optax.GradientTransformation, num_micro: int, compute_dtype: str,
                    mesh=None, hessian_micro_batches: int = 0) -> Callable:
  """Returns the pure `train_step(state, batch, rng, controls) -> (state, metrics)`.

  `hessian_micro_batches` > 0 (Sophia-G): the first that many micro-batches of the step's batch
  are passed to the optimizer as its Hessian batch (`gnb_batch`, read only on refresh steps)
  together with `logits_fn` and `gnb_rng`, so the estimate uses the same keep vector and dtype.
  """
  dtype = DTYPES[compute_dtype]
  loss_fn = make_loss_fn(model, dtype)
  grad_fn = jax.value_and_grad(loss_fn)

  def train_step(state: TrainState, batch: dict, rng: jax.Array, controls: dict[str, Any]):
    keep = controls.get("keep")
    micro = split_micro_batches(batch, num_micro, mesh)

    def accumulate(carry, micro_batch):
      loss_sum, grad_sum = carry
      loss, grads = grad_fn(state.params, micro_batch, keep)
      return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (loss_sum, grad_sum), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros), micro)
    loss = loss_sum / num_micro
    grads = jax.tree.map(lambda g: g / num_micro, grad_sum)

    extra = {}
    if hessian_micro_batches:
      extra = dict(logits_fn=lambda p, b: model.logits(p, b, keep=keep, dtype=dtype),
                   gnb_batch=jax.tree.map(lambda x: x[:hessian_micro_batches], micro),
                   gnb_rng=rng)
    opt_state = set_learning_rate(state.opt_state, controls["learning_rate"])
    updates, opt_state = tx.update(grads, opt_state, state.params, **extra)
    params = optax.apply_updates(state.params, updates)
    metrics = {"train_loss": loss, "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(model, compute_dtype: str = "float32") -> Callable:
  """`eval_step(params, batch) -> {'loss_sum', 'weight_sum', 'correct_sum'}` at full depth."""
  dtype = DTYPES[compute_dtype]

  def eval_step(params, batch):
    logits, labels, weights = model.logits(params, batch, dtype=dtype)
    token_loss = losses.token_losses(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(token_loss * weights), "weight_sum": jnp.sum(weights),
            "correct_sum": jnp.sum(correct * weights)}

  return eval_step


def jit_train_step(train_step, state_shardings, mesh):
  """Jits once per static shape with the state donated; the batch is split over data × fsdp."""
  rep = partitioning.replicated(mesh)
  return jax.jit(train_step,
                 in_shardings=(state_shardings, partitioning.batch_sharding(mesh), rep, rep),
                 out_shardings=(state_shardings, rep),
                 donate_argnums=(0,))


def jit_eval_step(eval_step, param_shardings, mesh):
  rep = partitioning.replicated(mesh)
  return jax.jit(eval_step, in_shardings=(param_shardings, partitioning.batch_sharding(mesh)),
                 out_shardings=rep)



def make_score_step(model, compute_dtype: str = "float32") -> Callable:
  """`score_step(params, batch, keep) -> [B]` per-example mean token losses (forward only): the
  scoring pre-pass of batch selection and the kind 'forward' of the RST meter."""
  dtype = DTYPES[compute_dtype]

  def score_step(params, batch, keep=None):
    logits, labels, weights = model.logits(params, batch, keep=keep, dtype=dtype)
    return losses.per_example_loss(logits, labels, weights)

  return score_step
