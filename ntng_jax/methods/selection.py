"""Batch selection: selective backprop (SB), RHO-loss, and the irreducible-loss (IL) model.

Both selection methods draw a *mega-batch* of `M = method.mega_batch_factor × B` sequences per
optimizer step (B = `train.batch_size`), score every sequence with a forward pass at full depth
(`train.step.make_score_step`: BERT = mean loss over the sequence's masked tokens, T5 = mean loss
over its target tokens; computed in chunks of `train.micro_batch_size` so that the logits of the
whole mega-batch never coexist), and keep exactly B of them for the ordinary train step. Every
array keeps a static shape: the kept rows are gathered from every key of the batch, so the train
step compiles once. Selection runs on device inside the trainer's jitted
`select(state, mega_batch, rng) -> (state, batch, metrics)`.

RST (docs/paper.md §1.4, §7.4): each step is charged `Charge('forward', L, M)` for the scoring pass
plus `Charge('train', L, B)`; `method.free_scoring=True` is the paper's ablation in which
forward passes cost nothing. With the paper's BERT table and M = 2B this is 1.82× the baseline's
cost per step.

Selective backprop (docs/paper.md §4.3)
-------------------------------------
The M losses are appended to a ring buffer of the last `method.history_size` (5000) losses (in
`TrainState.method_state`, so it is checkpointed and a resumed run selects exactly as an
uninterrupted one), *then* each candidate gets its percentile against the buffer with
`scipy.stats.percentileofscore(history, loss, kind='rank') / 100` semantics (the paper appends
before ranking; 'rank' is the mean of the strict-less and less-or-equal fractions plus half an
entry when the score ties itself, so with append-first the largest loss gets exactly 1.0; an
empty history would give 1.0). The paper keeps a candidate with probability `p = pct^β`.

Fixed-size batches. The paper keeps candidates independently and trains whenever its buffer
holds ≥ 1536, carrying the surplus over. We instead draw exactly B of the M candidates with
*first-order inclusion probabilities*

    π_i = min(1, c · pct_i^β),   c chosen so that Σ π_i = B,

by randomized systematic sampling (random permutation, cumulative π, one uniform offset u and
the points u, u+1, …, u+B−1; each candidate's interval has length π_i ≤ 1, so it is chosen with
probability exactly π_i and never twice). Why this and not the alternatives:

* Accumulating across mega-batches (the paper) needs a device-side buffer of whole examples and
  a variable number of candidates per step; our trainer draws a fixed M per step, and its cost
  charge would no longer be what ran.
* Gumbel-top-k on log-weights is successive sampling (Plackett-Luce): its inclusion
  probabilities are *not* proportional to the weights (large weights are under-included), even
  when Σ w = B, so the realised rates would not follow pct^β.
* Systematic πps sampling reproduces pct^β *exactly* when Σ pct^β = B, and otherwise keeps the
  inclusion probabilities proportional to pct^β (the relative preference the paper's filter
  expresses), saturating at 1. With β = 1 the percentiles are close to uniform on [0, 1] so
  Σ pct ≈ M/2, which is exactly B for the paper-matching factor 2: the paper's filter also
  consumes on average B / E[pct^β] = 2B candidates per trained batch, so the RST charged per
  step agrees with the paper's on average. For β ≠ 1 (or factor ≠ 1/E[pct^β]) the batch is
  rescaled to size B instead of varying the number of candidates scored.

RHO-loss (docs/paper.md §4.4)
---------------------------
`RhoLoss` picks the top-B candidates by reducible loss = train loss − IL loss (exact sort,
`lax.top_k`), the IL loss looked up by the sequence's stable `example_id` in a table written by
`launch/extract_il.py` and checked against this run's data (`method.il_path`). The table is a
closed-over device constant of the select program (4 bytes per chunk of the corpus; compiled
into the select program once, not checkpointed).

`ILModel` (`method=il_model`) is the baseline recipe trained on the *held-out* split: the run's
dataset has its roles swapped (`prepare_dataset`): the held-out chunks (`data.validation_fraction`
of the corpus, 0.2 by default for all three methods, same deterministic `holdout_split`) are the
IL model's training data, minus `method.il_validation_sequences` of them (10,000 in the paper,
at most a tenth of the held-out chunks here) kept for its validation loss. Example ids remain the
global chunk indices, so the table written from it indexes the main run's training split
directly, and the metadata (tokenizer fingerprint, chunk counts, split fraction and a hash of
the training ids and of sampled chunk contents) pins the exact split (paper quirk §7.3).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from ntng_jax.config import ConfigError
from ntng_jax.methods.base import Method, Plan
from ntng_jax.rst import Charge

IL_FORMAT = "ntng-il-losses/1"
IL_FILENAME = "il_losses.npy"
IL_META_FILENAME = "il_losses.json"
SPLIT_SEED = 0  # the `holdout_split` seed `data.build_dataset` uses
IL_VALIDATION_SEED = 11  # which held-out chunks the IL model validates on


# -------------------------------------------------------------------------------------------------
# Pure pieces (jit-friendly; fixed shapes).


def percentile_of_scores(history, count, scores):
  """`scipy.stats.percentileofscore(history[:count], s, kind='rank') / 100` for every s in
  `scores` ([M] -> [M] float32); 1.0 for every score when `count == 0`.

  `history` is a ring buffer [H] whose first `count` entries are valid (it fills from index 0)."""
  history = jnp.asarray(history, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  count = jnp.asarray(count, jnp.int32)
  valid = jnp.arange(history.shape[0]) < count
  ordered = jnp.sort(jnp.where(valid, history, jnp.inf))
  left = jnp.minimum(jnp.searchsorted(ordered, scores, side="left"), count)
  right = jnp.minimum(jnp.searchsorted(ordered, scores, side="right"), count)
  plus1 = (left < right).astype(jnp.int32)
  pct = (left + right + plus1).astype(jnp.float32) / (2.0 * jnp.maximum(count, 1))
  return jnp.where(count > 0, pct, 1.0)


def init_history(size: int) -> dict:
  return {
    "history": jnp.zeros((size,), jnp.float32),
    "history_position": jnp.zeros((), jnp.int32),
    "history_count": jnp.zeros((), jnp.int32),
  }


def push_history(state: dict, losses) -> dict:
  """Appends `losses` ([M], oldest first) to the ring buffer (a deque of maxlen H)."""
  size = state["history"].shape[0]
  values = jnp.asarray(losses, jnp.float32)[-size:]  # only the last H can survive
  k = values.shape[0]
  index = (state["history_position"] + jnp.arange(k)) % size
  return {
    "history": state["history"].at[index].set(values),
    "history_position": (state["history_position"] + k) % size,
    "history_count": jnp.minimum(state["history_count"] + k, size),
  }


def fixed_size_inclusion(weights, k: int):
  """Inclusion probabilities π_i = min(1, c·w_i) with Σ π = k (π proportional to the weights,
  capped at 1; the standard πps capping). Weights ≤ 1e-12 are floored there, so π exists for any
  k ≤ len(weights). [M] -> [M] float32."""
  w = jnp.maximum(jnp.asarray(weights, jnp.float32), 1e-12)
  m = w.shape[0]
  if not 1 <= k <= m:
    raise ValueError(f"cannot select {k} of {m} candidates.")
  desc = -jnp.sort(-w)
  tail = jnp.cumsum(desc[::-1])[::-1]  # tail[j] = sum of all but the j largest
  j = jnp.arange(m)
  c = (k - j) / tail  # scale if the j largest are capped at 1
  ok = (c * desc <= 1.0 + 1e-6) & (j < k)  # then the largest uncapped one stays ≤ 1
  c_star = c[jnp.argmax(ok)]  # the smallest such j (j = k-1 always works)
  return jnp.minimum(1.0, c_star * w)


def systematic_sample(rng, pi, k: int):
  """Exactly k distinct indices with P(i chosen) = pi[i] (requires Σ pi = k, pi ≤ 1): randomized
  systematic sampling. Returns int32 [k], ascending."""
  m = pi.shape[0]
  perm_rng, u_rng = jax.random.split(rng)
  perm = jax.random.permutation(perm_rng, m)
  cum = jnp.cumsum(pi[perm])
  cum = cum * (k / cum[-1])  # remove float drift: the total is exactly k
  points = jax.random.uniform(u_rng, (), jnp.float32) + jnp.arange(k, dtype=jnp.float32)
  pos = jnp.minimum(jnp.searchsorted(cum, points, side="right"), m - 1)
  return jnp.sort(perm[pos]).astype(jnp.int32)


def top_k_indices(values, k: int):
  """The k largest (ties: lower index first), ascending by index. int32 [k]."""
  _, idx = jax.lax.top_k(values, k)
  return jnp.sort(idx).astype(jnp.int32)


def gather_rows(batch: dict, index) -> dict:
  """Rows `index` of every key of a batch (fixed output shape [len(index), ...])."""
  return {key: jnp.take(value, index, axis=0) for key, value in batch.items()}


def chunked_scores(score_fn, params, batch: dict, chunk: int):
  """Per-example losses [M] of a mega-batch, scored `chunk` rows at a time with `lax.map` (the
  logits of only one chunk are live at once). Row r goes to chunk r % (M / chunk), like the train
  step's micro-batches, so each device's contiguous rows stay local."""
  m = batch["example_id"].shape[0] if "example_id" in batch else next(iter(batch.values())).shape[0]
  n = max(1, m // chunk) if m % chunk == 0 else 1
  if n == 1:
    return score_fn(params, batch)
  split = jax.tree.map(lambda x: x.reshape(m // n, n, *x.shape[1:]).swapaxes(0, 1), batch)
  losses = jax.lax.map(lambda b: score_fn(params, b), split)  # [n, m / n]
  return losses.swapaxes(0, 1).reshape(m)


# -------------------------------------------------------------------------------------------------
# Methods.


def _method_get(config, key, default):
  if config is None:
    return default
  value = config.method.get(key, default)
  return default if value is None else value


class _Selection(Method):
  """Shared plumbing: the mega-batch, the chunked scoring pass and the RST charges."""

  name = "selection"

  def __init__(self, config):
    super().__init__(config)
    factor = _method_get(config, "mega_batch_factor", 2)
    if int(factor) != factor or factor < 1:
      raise ConfigError(
        f"method.mega_batch_factor must be a positive integer (mega-batch = factor"
        f" × train.batch_size); got {factor!r}."
      )
    self.mega_batch_factor = int(factor)
    self.free_scoring = bool(_method_get(config, "free_scoring", False))
    self.batch_size = int(config.train.batch_size) if config is not None else 0
    self.score_chunk = int(_method_get(config, "score_micro_batch_size", 0)) or (
      int(config.train.micro_batch_size) if config is not None else 0
    )

  @staticmethod
  def default_config(family: str, size: str) -> dict:
    del family, size
    return {
      "method": {"mega_batch_factor": 2, "free_scoring": False, "score_micro_batch_size": 0},
      "data": {"validation_fraction": 0.2},
    }

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

  def _scorer(self, model, compute_dtype: str):
    from ntng_jax.train.step import make_score_step

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

  def __init__(self, config):
    super().__init__(config)
    self.history_size = int(_method_get(config, "history_size", 5000))
    self.beta = float(_method_get(config, "beta", 1.0))
    if self.history_size < 1:
      raise ConfigError(f"method.history_size must be positive; got {self.history_size}.")
    if self.beta < 0:
      raise ConfigError(f"method.beta must be ≥ 0; got {self.beta}.")

  @staticmethod
  def default_config(family: str, size: str) -> dict:
    c = _Selection.default_config(family, size)
    c["method"].update(history_size=5000, beta=1.0)
    return c

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
    scorer = self._scorer(model, compute_dtype)

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

  def __init__(self, config, il_losses: np.ndarray | None = None, il_meta: dict | None = None):
    super().__init__(config)
    self.il_path = str(_method_get(config, "il_path", ""))
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

  @staticmethod
  def default_config(family: str, size: str) -> dict:
    c = _Selection.default_config(family, size)
    c["method"].update(il_path="")
    return c

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
    scorer = self._scorer(model, compute_dtype)
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

  def __init__(self, config):
    super().__init__(config)
    self.il_validation_sequences = int(_method_get(config, "il_validation_sequences", 10_000))

  @staticmethod
  def default_config(family: str, size: str) -> dict:
    del family, size
    return {"method": {"il_validation_sequences": 10_000}, "data": {"validation_fraction": 0.2}}

  def prepare_dataset(self, dataset):
    return il_model_dataset(dataset, self.il_validation_sequences)


def il_model_dataset(dataset, il_validation_sequences: int = 10_000):
  """The IL model's view of `dataset`: trains on the held-out chunks except a deterministic
  subset (min(il_validation_sequences, held-out // 10), at least 1) it validates on. Example ids
  stay the global chunk ids."""
  held_ids = np.asarray(dataset.validation_ids)
  n = len(held_ids)
  if n < 2:
    raise ValueError(
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


# -------------------------------------------------------------------------------------------------
# The IL table: losses indexed by example id, and where they came from.

_CONFIG_FIELDS = (
  "source",
  "num_lines",
  "corpus_seed",
  "seq_len",
  "validation_fraction",
  "max_predictions",
  "noise_density",
  "mean_noise_span_length",
)


def config_signature(config) -> dict:
  """What the config alone says about the training split (checked when the table is loaded)."""
  d = config.data
  sig = {"family": config.model.family, "vocab_size": int(config.model.vocab_size)}
  for key in _CONFIG_FIELDS:
    if key in ("noise_density", "mean_noise_span_length") and config.model.family != "t5":
      continue
    if key in ("num_lines", "corpus_seed") and d.get("source") != "synthetic":
      continue
    value = d.get(key)
    sig[f"data.{key}"] = float(value) if isinstance(value, float) else value
  return sig


def _sha(array) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def dataset_signature(dataset) -> dict:
  """What pins the training split of a built dataset: tokenizer, chunk counts, the split itself
  (hash of the training ids) and the content of up to 1024 evenly spaced training chunks."""
  ids = np.asarray(dataset.train_ids, np.int64)
  rows = np.unique(np.linspace(0, len(ids) - 1, min(len(ids), 1024)).astype(np.int64))
  meta = dataset.meta
  return {
    "family": dataset.family,
    "tokenizer_fingerprint": meta.get("tokenizer_fingerprint"),
    "num_chunks": int(meta.get("num_chunks", -1)),
    "num_train": int(len(ids)),
    "chunk_len": int(meta.get("chunk_len", dataset.train_chunks.shape[1])),
    "train_ids_sha256": _sha(ids),
    "train_chunks_sample_sha256": _sha(np.asarray(dataset.train_chunks[rows], np.int32)),
  }


def check_il_metadata(meta: dict, signature: dict, path: str) -> None:
  """Raises a one-sentence ValueError naming the first field where the table and data differ."""
  if meta.get("format") != IL_FORMAT:
    raise ValueError(
      f"{path} is not an IL table of format {IL_FORMAT} (found"
      f" {meta.get('format')!r}); re-run `python -m launch.extract_il`."
    )
  recorded = meta.get("signature", {})
  for key, want in signature.items():
    have = recorded.get(key, "(absent)")
    if isinstance(want, float) and isinstance(have, (int, float)):
      same = abs(float(have) - want) <= 1e-9 * max(1.0, abs(want))
    else:
      same = have == want
    if not same:
      raise ValueError(
        f"the IL table {path} does not match this run's data: {key} is {have!r} in"
        f" the table but {want!r} here; re-run `python -m launch.extract_il` on an"
        " il_model run with this data config."
      )


def il_table_paths(path: str) -> tuple[str, str]:
  """(losses .npy, metadata .json) for a table directory, its .npy file, or the IL run's workdir
  (whose `il_losses/` subdirectory holds the table)."""
  if path.endswith(".npy"):
    return path, os.path.join(os.path.dirname(path), IL_META_FILENAME)
  if not os.path.exists(os.path.join(path, IL_FILENAME)) and os.path.exists(
    os.path.join(path, "il_losses", IL_FILENAME)
  ):
    path = os.path.join(path, "il_losses")
  return os.path.join(path, IL_FILENAME), os.path.join(path, IL_META_FILENAME)


def write_il_table(directory: str, losses: np.ndarray, meta: dict) -> tuple[str, str]:
  """Writes `losses` (float32 [num_chunks], NaN where not scored) and `meta` atomically."""
  os.makedirs(directory, exist_ok=True)
  npy, js = il_table_paths(directory)
  losses = np.asarray(losses, np.float32)
  meta = dict(meta, format=IL_FORMAT, num_entries=int(losses.shape[0]), losses_sha256=_sha(losses))
  for path, write in (
    (npy, lambda f: np.save(f, losses)),
    (js, lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True).encode())),
  ):
    with open(path + ".tmp", "wb") as f:
      write(f)
    os.replace(path + ".tmp", path)
  return npy, js


def read_il_table(path: str) -> tuple[np.ndarray, dict]:
  npy, js = il_table_paths(path)
  for p in (npy, js):
    if not os.path.exists(p):
      raise FileNotFoundError(
        f"IL table file {p} does not exist; create it with `python -m"
        " launch.extract_il --workdir=IL_RUN` and pass method.il_path."
      )
  fix = "re-run `python -m launch.extract_il --workdir=IL_RUN` to write it again."
  try:
    with open(js) as f:
      meta = json.load(f)
  except (ValueError, OSError) as e:
    raise ValueError(
      f"IL table metadata {js} is unreadable or not valid JSON ({e}); {fix}"
    ) from None
  if not isinstance(meta, dict):
    raise ValueError(f"IL table metadata {js} is not a JSON object; {fix}")
  try:
    losses = np.load(npy, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f"IL table {npy} is truncated or not a .npy array ({e}); {fix}") from None
  if losses.dtype != np.float32 or losses.ndim != 1 or meta.get("losses_sha256") != _sha(losses):
    raise ValueError(
      f"IL table {npy} is corrupt or does not belong to {js}; re-run `python -m launch.extract_il`."
    )
  return losses, meta


def score_chunks(
  score_fn, params, chunks: np.ndarray, objective, batch_size: int, mask_seed: int = 0, put=None
) -> np.ndarray:
  """Each chunk's loss under one fixed mask (BERT) / span corruption (T5): batch b of
  `batch_size` rows is corrupted with `default_rng((mask_seed, 2, b))`; the last batch is padded
  by repeating rows so every call has one shape. `put` maps a numpy batch onto devices.
  Returns float32 [len(chunks)]."""
  n = len(chunks)
  out = np.empty(n, np.float32)
  for b, start in enumerate(range(0, n, batch_size)):
    rows = np.arange(start, min(start + batch_size, n))
    padded = np.resize(rows, batch_size)  # repeats rows to fill the last batch
    batch = objective(np.random.default_rng((mask_seed, 2, b)), np.asarray(chunks[padded]))
    batch["example_id"] = padded.astype(np.int32)
    if put is not None:
      batch = put(batch)
    out[rows] = np.asarray(jax.device_get(score_fn(params, batch)))[: len(rows)]
  return out


def il_table_from_losses(config, dataset, train_losses: np.ndarray, extra: dict | None = None):
  """(table float32 [num_chunks] with NaN outside the training split, metadata) from the losses
  of `dataset.train_chunks` in order; refuses non-finite losses."""
  train_losses = np.asarray(train_losses, np.float32)
  bad = int(np.sum(~np.isfinite(train_losses)))
  if bad:
    raise ValueError(
      f"the IL model gives non-finite losses on {bad} training chunks; retrain it"
      " (e.g. with a lower optim.learning_rate) before extracting."
    )
  table = np.full(int(dataset.meta["num_chunks"]), np.nan, np.float32)
  table[np.asarray(dataset.train_ids)] = train_losses
  meta = dict(
    extra or {},
    signature={**config_signature(config), **dataset_signature(dataset)},
    split_seed=SPLIT_SEED,
    validation_fraction=float(config.data.validation_fraction),
    data_meta=dict(dataset.meta),
    num_scored=int(len(train_losses)),
    stats=dict(
      mean=float(np.mean(train_losses)),
      std=float(np.std(train_losses)),
      min=float(np.min(train_losses)),
      max=float(np.max(train_losses)),
    ),
  )
  return table, meta
