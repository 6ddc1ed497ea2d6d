"""The fine-tuning core shared by GLUE / SuperGLUE (BERT, :mod:`ntng_jax.eval.finetune`) and
SNI (T5, :mod:`ntng_jax.eval.sni_finetune`): the config, the mesh, the state, the pure train
step and its jitted programs, the epoch loop and the choice of the best epoch.

The task modules supply what differs: the parameters a state starts from (a new head on the
encoder, or the whole pre-trained model), the loss, the batches of an epoch, the learning-rate
schedule and the evaluation after each epoch. The train step is
``(state, batch, rng, learning_rate) -> (state, {'loss'})``: AdamW with the rate injected, jitted
once per static shape with the batch split over the data x fsdp mesh axes and the state donated.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import ml_collections
import numpy as np
import optax

from ntng_jax import partitioning
from ntng_jax.train import programs as programs_lib
from ntng_jax.train import state as state_lib
from ntng_jax.train.state import TrainState
from ntng_jax.train.step import set_learning_rate

# Fields every fine-tuning config has (the task modules add theirs and set the paper's values).
COMMON_FIELDS = dict(
  learning_rate=5e-5,
  epochs=2,
  batch_size=8,
  eval_batch_size=8,
  b1=0.9,
  b2=0.999,
  eps=1e-8,
  weight_decay=0.0,
  seed=0,
  max_train_examples=0,  # 0 = all; else a seeded random subset of that size
  max_eval_examples=0,  # 0 = all; else the first that many dev/test examples (per task)
)


def make_config(defaults: dict, **overrides) -> ml_collections.ConfigDict:
  """A fine-tuning config: ``COMMON_FIELDS``, then the task's ``defaults``, then the keyword
  ``overrides`` that are not None (an unknown name is a ValueError)."""
  fields = {**COMMON_FIELDS, **defaults}
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(
      f"unknown fine-tuning config field(s) {', '.join(unknown)}; the fields "
      f"are {', '.join(sorted(fields))}."
    )
  cfg = ml_collections.ConfigDict(fields)
  return with_overrides(cfg, **overrides)


def with_overrides(cfg: ml_collections.ConfigDict, **changes) -> ml_collections.ConfigDict:
  """A copy of ``cfg`` with the ``changes`` that are not None."""
  out = ml_collections.ConfigDict(cfg.to_dict())
  for key, value in changes.items():
    if value is None:
      continue
    if key not in out:
      raise ValueError(f"unknown fine-tuning config field {key!r}.")
    out[key] = value
  return out


def default_mesh():
  """All devices on the 'data' axis (the fine-tuned models fit one device)."""
  return partitioning.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))


def check_batch_sizes(mesh, *sizes: tuple[str, int]) -> None:
  """A ValueError unless every ``(name, size)`` is a multiple of the data-parallel devices."""
  divisor = partitioning.batch_divisor(mesh)
  for name, size in sizes:
    if size % divisor:
      raise ValueError(
        f"{name} ({size}) must be a multiple of the number of data-parallel devices ({divisor})."
      )


def local_rows(batch: dict) -> dict:
  """This process's contiguous share of a global host batch (all of it in one process), as
  ``partitioning.global_batch`` expects."""
  n, i = jax.process_count(), jax.process_index()
  if n == 1:
    return batch
  return {k: v[i * (len(v) // n) : (i + 1) * (len(v) // n)] for k, v in batch.items()}


def device_batch(mesh, batch: dict, keys: Sequence[str]) -> dict:
  """The ``keys`` of a global host batch, as arrays sharded over the mesh's batch axes."""
  return partitioning.global_batch(mesh, local_rows({k: batch[k] for k in keys}))


def subsample(examples: Sequence, n: int, seed: int) -> list:
  """A seeded random subset of ``n`` examples in their original order (all if n <= 0)."""
  if n <= 0 or n >= len(examples):
    return list(examples)
  keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:n])
  return [examples[i] for i in keep]


def best_over_epochs(epochs: Sequence[dict]) -> tuple[dict, dict]:
  """``({metric: max over epochs}, {metric: 1-based epoch of that max})``; NaN epochs are
  ignored (a metric that is NaN in every epoch stays NaN)."""
  best, best_epoch = {}, {}
  for rec in epochs:
    for name, value in rec["metrics"].items():
      if value is None or (isinstance(value, float) and math.isnan(value)):
        best.setdefault(name, float("nan"))
        best_epoch.setdefault(name, None)
        continue
      if best_epoch.get(name) is None or value > best[name]:
        best[name], best_epoch[name] = float(value), rec["epoch"]
  return best, best_epoch


def model_config(
  model_cfg, dropout_rate: float | None = None, attention_dropout_rate: float | None = None
) -> ml_collections.FrozenConfigDict:
  """The pre-trained model's config (hashable, for the program caches) with the fine-tuning
  dropout rates that are not None."""
  cfg = ml_collections.ConfigDict(dict(model_cfg))
  if dropout_rate is not None:
    cfg.dropout_rate = float(dropout_rate)
  if attention_dropout_rate is not None:
    cfg.attention_dropout_rate = float(attention_dropout_rate)
  return ml_collections.FrozenConfigDict(cfg)


def adamw(b1: float, b2: float, eps: float, weight_decay: float):
  """AdamW with the learning rate injected (the trainer writes it every step)."""
  return optax.inject_hyperparams(optax.adamw)(
    learning_rate=0.0, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay
  )


def make_train_step(loss_fn: Callable, tx) -> Callable:
  """The pure ``train_step(state, batch, rng, learning_rate) -> (state, {'loss'})`` of
  ``loss_fn(params, batch, rng) -> scalar``."""

  def train_step(state: TrainState, batch: dict, rng, learning_rate):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng)
    opt_state = set_learning_rate(state.opt_state, learning_rate)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), {"loss": loss}

  return train_step


@dataclasses.dataclass(frozen=True)
class Programs:
  init: Callable  # (*init_args) -> TrainState, into its shardings
  train_step: Callable  # (state, batch, rng, lr) -> (state, {'loss'}), the state donated
  state_shardings: Any
  replicated: Any
  batch_sharding: Any
  eval_step: Callable | None = None  # the task module's, if it jits one with these shardings


def build_programs(
  boxed_params: Callable,
  init_params: Callable,
  init_shardings: Callable,
  loss_fn: Callable,
  tx,
  mesh,
) -> Programs:
  """Shape-only init -> logical shardings -> jitted init and train step (`train.programs`).

  boxed_params(rng): the (boxed) params of a state, for shapes and logical axes only;
  init_params(*args): the params a real state starts from (copy what is reused: the state
  is donated); init_shardings(param_shardings, replicated): the in_shardings of ``args``."""
  shardings, _ = programs_lib.abstract_state(
    lambda rng: state_lib.create(boxed_params(rng), tx), mesh
  )
  rep, batch_sh = partitioning.replicated(mesh), partitioning.batch_sharding(mesh)
  return Programs(
    init=programs_lib.jit_init(
      lambda *args: state_lib.create(init_params(*args), tx),
      shardings,
      init_shardings(shardings.params, rep),
    ),
    train_step=programs_lib.jit_train_step(make_train_step(loss_fn, tx), shardings, mesh),
    state_shardings=shardings,
    replicated=rep,
    batch_sharding=batch_sh,
  )


def run_epochs(
  programs: Programs,
  state,
  mesh,
  epochs: int,
  batches: Callable[[int], Iterable[dict]],
  keys: Sequence[str],
  learning_rate: Callable[[int], float],
  step_rng: Callable[[int], Any],
  after_epoch: Callable[..., dict],
) -> tuple[Any, list[dict]]:
  """Trains ``epochs`` epochs; returns ``(state, [after_epoch(...) per epoch])``.

  batches(epoch): the host batches of 1-based ``epoch``; learning_rate(step) and
  step_rng(step) of the 0-based global step; after_epoch(epoch=, state=, train_loss=,
  steps=, started=) evaluates and returns the epoch's record."""
  records, step = [], 0
  for epoch in range(1, epochs + 1):
    started, losses = time.time(), []
    with partitioning.activate(mesh):
      for batch in batches(epoch):
        state, metrics = programs.train_step(
          state, device_batch(mesh, batch, keys), step_rng(step), np.float32(learning_rate(step))
        )
        losses.append(metrics["loss"])
        step += 1
    train_loss = float(np.mean(jax.device_get(losses))) if losses else float("nan")
    records.append(
      after_epoch(
        epoch=epoch, state=state, train_loss=train_loss, steps=len(losses), started=started
      )
    )
  return state, records
