"""Batch selection methods: selective backprop, RHO-loss and the irreducible-loss (IL) model.

A selection method draws a mega-batch of M = `method.mega_batch_factor` x B sequences per step,
scores each (forward at full depth, in chunks of `train.micro_batch_size`), keeps exactly B for
the ordinary train step, and is charged `Charge('forward', L, M)` (unless `method.free_scoring`)
plus `Charge('train', L, B)`. SB keeps by loss percentile (`sampling`), RHO-loss takes the top B
by train loss minus IL loss (`il_table`); `il_model` trains on the held-out split. Protocol and
rationale: docs/paper.md §4.3-4.4, docs/implementation-notes.md "Batch selection".
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from ntng_jax.errors import ConfigError
from ntng_jax.methods.base import Method, Plan, settings
from ntng_jax.methods.il_table import (
  SPLIT_SEED,
  check_il_metadata,
  config_signature,
  dataset_signature,
  read_il_table,
)
from ntng_jax.methods.sampling import (
  chunked_scores,
  fixed_size_inclusion,
  gather_rows,
  init_history,
  make_score_step,
  percentile_of_scores,
  push_history,
  systematic_sample,
  top_k_indices,
)
from ntng_jax.rst import Charge

IL_VALIDATION_SEED = 11  # which held-out chunks the IL model validates on


class _Selection(Method):
  """Shared plumbing: the mega-batch, the chunked scoring pass and the RST charges."""

  name = "selection"
  DEFAULTS = {"mega_batch_factor": 2, "free_scoring": False, "score_micro_batch_size": 0}
  DATA_DEFAULTS = {"validation_fraction": 0.2}

  def __init__(self, config):
    super().__init__(config)
    m = settings(config, self.DEFAULTS)
    factor = m["mega_batch_factor"]
    if int(factor) != factor or factor < 1:
      raise ConfigError(
        f"method.mega_batch_factor must be a positive integer (mega-batch = factor"
        f" × train.batch_size); got {factor!r}."
      )
    self.mega_batch_factor = int(factor)
    self.free_scoring = bool(m["free_scoring"])
    self.batch_size = int(config.train.batch_size) if config is not None else 0
    self.score_chunk = int(m["score_micro_batch_size"]) or (
      int(config.train.micro_batch_size) if config is not None else 0
    )

  @classmethod
  def default_config(cls, family: str, size: str) -> dict:
    del family, size
    return {"method": dict(cls.DEFAULTS), "data": dict(cls.DATA_DEFAULTS)}

  def input_batch_size(self, batch_size: int) -> int:
    return self.mega_batch_factor * batch_size

  def charges(self, plan: Plan, batch_size: int) -> list[Charge]:
    out = (
      []
      if self.free_scoring
      else [Charge("forward", plan.active_layers, self.input_batch_size(batch_size))]
    )
    return out + [Charge("train", plan.active_layers, batch_size)]

  def metrics(self, plan: Plan) -> dict:
    return {**super().metrics(plan), "scored_sequences": self.input_batch_size(self.batch_size)}

  def scorer(self, model, compute_dtype: str):
    """`scores(params, mega_batch) -> [M]` per-example losses, in chunks of `score_chunk`."""
    score = make_score_step(model, compute_dtype)  # full depth (keep=None)
    chunk = self.score_chunk

    def scores(params, mega_batch):
      return chunked_scores(lambda p, b: score(p, b), params, mega_batch, chunk or 1 << 30)

    return scores

  def _batch_size_of(self, mega_batch: dict) -> int:
    m = mega_batch["example_id"].shape[0]
    if m % self.mega_batch_factor:
      raise ValueError(
        f"mega-batch of {m} rows is not a multiple of mega_batch_factor {self.mega_batch_factor}."
      )
    return m // self.mega_batch_factor


class SelectiveBackprop(_Selection):
  """Selective backprop: keep by loss percentile against a history of recent losses."""

  name = "selective_backprop"
  DEFAULTS = {**_Selection.DEFAULTS, "history_size": 5000, "beta": 1.0}

  def __init__(self, config):
    super().__init__(config)
    m = settings(config, self.DEFAULTS)
    self.history_size = int(m["history_size"])
    self.beta = float(m["beta"])
    if self.history_size < 1:
      raise ConfigError(f"method.history_size must be positive; got {self.history_size}.")
    if self.beta < 0:
      raise ConfigError(f"method.beta must be ≥ 0; got {self.beta}.")

  def init_method_state(self):
    return init_history(self.history_size)

  def select_from_scores(self, method_state: dict, mega_batch: dict, scores, rng, beta=None):
    """The selection given the scoring pass's losses: (method_state, batch, metrics, index).
    `beta` (default `method.beta`) may be a traced value."""
    b = self._batch_size_of(mega_batch)
    method_state = push_history(method_state, scores)
    pct = percentile_of_scores(method_state["history"], method_state["history_count"], scores)
    keep = pct ** (self.beta if beta is None else beta)
    pi = fixed_size_inclusion(keep, b)
    index = systematic_sample(rng, pi, b)
    metrics = {
      "score_loss_mean": jnp.mean(scores),
      "selected_score_loss_mean": jnp.mean(scores[index]),
      "sb_keep_probability_mean": jnp.mean(keep),
      "sb_inclusion_max": jnp.max(pi),
      "sb_history_count": method_state["history_count"].astype(jnp.float32),
    }
    return method_state, gather_rows(mega_batch, index), metrics, index

  def make_select_step(self, model, compute_dtype: str):
    scorer = self.scorer(model, compute_dtype)

    def select(state, mega_batch, rng):
      scores = scorer(state.params, mega_batch)
      method_state, batch, metrics, _ = self.select_from_scores(
        state.method_state, mega_batch, scores, rng
      )
      return state.replace(method_state=method_state), batch, metrics

    return select


class RhoLoss(_Selection):
  """RHO-loss: top-B of the mega-batch by train loss − irreducible (IL model) loss."""

  name = "rho_loss"
  DEFAULTS = {**_Selection.DEFAULTS, "il_path": ""}

  def __init__(self, config, il_losses: np.ndarray | None = None, il_meta: dict | None = None):
    super().__init__(config)
    self.il_path = str(settings(config, self.DEFAULTS)["il_path"])
    if il_losses is None:
      if not self.il_path:
        raise ConfigError(
          "method.il_path is empty; train an IL model (method=il_model), run"
          " `python -m launch.extract_il --workdir=IL_RUN` and pass"
          " --config.method.il_path=IL_RUN/il_losses."
        )
      il_losses, il_meta = read_il_table(self.il_path)
      if config is not None:
        check_il_metadata(il_meta, config_signature(config), self.il_path)
    self.il_losses = np.asarray(il_losses, np.float32)
    self.il_meta = il_meta or {}

  def prepare_dataset(self, dataset):
    """Checks the IL table against the data this run trains on (same chunks, split, tokenizer)."""
    check_il_metadata(self.il_meta, dataset_signature(dataset), self.il_path or "(in memory)")
    return dataset

  def select_from_scores(self, method_state, mega_batch: dict, scores, il_table):
    b = self._batch_size_of(mega_batch)
    ids = mega_batch["example_id"]
    il = il_table[jnp.clip(ids, 0, il_table.shape[0] - 1)]
    missing = ~jnp.isfinite(il) | (ids < 0) | (ids >= il_table.shape[0])
    reducible = jnp.where(missing, -jnp.inf, scores - jnp.where(missing, 0.0, il))
    index = top_k_indices(reducible, b)
    metrics = {
      "score_loss_mean": jnp.mean(scores),
      "selected_score_loss_mean": jnp.mean(scores[index]),
      "rho_il_loss_selected_mean": jnp.mean(jnp.where(missing, 0.0, il)[index]),
      "rho_reducible_selected_mean": jnp.mean(jnp.where(missing, 0.0, scores - il)[index]),
      "rho_il_missing": jnp.sum(missing).astype(jnp.float32),
    }
    return method_state, gather_rows(mega_batch, index), metrics, index

  def make_select_step(self, model, compute_dtype: str):
    scorer = self.scorer(model, compute_dtype)
    table = jnp.asarray(self.il_losses)  # a constant of the select program, not checkpointed

    def select(state, mega_batch, rng):
      del rng
      scores = scorer(state.params, mega_batch)
      _, batch, metrics, _ = self.select_from_scores(state.method_state, mega_batch, scores, table)
      return state, batch, metrics

    return select


class ILModel(Method):
  """The irreducible-loss model: the baseline recipe trained on the held-out split."""

  name = "il_model"
  DEFAULTS = {"il_validation_sequences": 10_000}

  def __init__(self, config):
    super().__init__(config)
    self.il_validation_sequences = int(settings(config, self.DEFAULTS)["il_validation_sequences"])

  @classmethod
  def default_config(cls, family: str, size: str) -> dict:
    del family, size
    return {"method": dict(cls.DEFAULTS), "data": dict(_Selection.DATA_DEFAULTS)}

  def prepare_dataset(self, dataset):
    return il_model_dataset(dataset, self.il_validation_sequences)


def il_model_dataset(dataset, il_validation_sequences: int):
  """The IL model's view of `dataset`: trains on the held-out chunks except a deterministic
  subset (min(il_validation_sequences, held-out // 10), at least 1) it validates on. Example ids
  stay the global chunk ids."""
  held_ids = np.asarray(dataset.validation_ids)
  n = len(held_ids)
  if n < 2:
    raise ConfigError(
      f"the held-out split has {n} chunks, too few to train an IL model on; raise"
      " data.validation_fraction or data.num_lines."
    )
  n_val = max(1, min(int(il_validation_sequences), n // 10))
  perm = np.random.default_rng((SPLIT_SEED, IL_VALIDATION_SEED)).permutation(n)
  val_rows, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
  meta = dict(
    dataset.meta,
    role="il_model",
    num_train=len(train_rows),
    num_validation=n_val,
    main_num_train=int(dataset.meta.get("num_train", len(dataset.train_ids))),
  )
  return dataclasses.replace(
    dataset,
    train_chunks=dataset.validation_chunks[train_rows],
    train_ids=held_ids[train_rows],
    validation_chunks=dataset.validation_chunks[val_rows],
    validation_ids=held_ids[val_rows],
    meta=meta,
  )
