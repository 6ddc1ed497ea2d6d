"""Batch-selection maths, pure and jit-friendly (every shape static).

The loss-history ring buffer and percentiles of selective backprop, fixed-size πps inclusion
probabilities and systematic sampling, top-k, row gathering, and the chunked per-example scoring
pass (`make_score_step`: [B] mean token losses, forward only). Why systematic sampling:
docs/implementation-notes.md, "Batch selection".
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ntng_jax.models import losses


def make_score_step(model, compute_dtype: str = "float32") -> Callable:
  """`score_step(params, batch, keep=None) -> [B]` per-example mean token losses (forward only):
  the scoring pass of batch selection (BERT: over masked tokens, T5: over target tokens)."""
  dtype = jnp.dtype(compute_dtype)

  def score_step(params, batch, keep=None):
    logits, labels, weights = model.logits(params, batch, keep=keep, dtype=dtype)
    return losses.per_example_loss(logits, labels, weights)

  return score_step


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
