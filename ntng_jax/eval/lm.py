"""Evaluation of a causal language model (the `gpt` family): loss and perplexity, greedy
generation with a KV cache, and a zero-shot multiple-choice check built from the run's own data.

* :func:`validation_perplexity`: token-weighted mean loss and ``exp(loss)`` on every named
  validation set of the run (``data.validation``), at full depth.
* :func:`greedy_generate`: greedy continuation of a prompt; with ``use_cache`` the prompt is
  prefilled once and each new token runs one position against the per-layer key/value cache,
  otherwise every step re-runs the whole (fixed-length, causally masked) buffer. Both give the
  same tokens (tested).
* :func:`multiple_choice_items` / :func:`multiple_choice_accuracy`: a cloze-style zero-shot set
  that needs no download. From each held-out chunk (never trained on) the first
  ``context_len`` tokens are the context and the next ``continuation_len`` tokens the correct
  ending; ``num_choices - 1`` distractors are the endings at the same offset of other,
  randomly chosen held-out chunks. The model picks the ending with the highest summed
  log-probability given the context (all endings have the same length). Chance is
  ``1 / num_choices``; a model that uses context beats it, a unigram model cannot (the
  distractors are real text from the same distribution).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ntng_jax.train import programs
from ntng_jax.train import step as step_lib

__all__ = [
  "validation_perplexity",
  "greedy_generate",
  "multiple_choice_items",
  "multiple_choice_accuracy",
  "sequence_log_probs",
]


def _logits_fn(model, dtype=jnp.float32):
  """Jitted ``(params, input_ids [B, S]) -> logits [B, S, V]`` at full depth."""
  return programs.apply_program(model.module.clone(dtype=dtype, deterministic=True))


def validation_perplexity(
  model, params, sets: dict[str, list[dict]], dtype=jnp.float32
) -> dict[str, dict[str, float]]:
  """``{name: {'loss', 'perplexity', 'tokens'}}`` over fixed batches ``{name: [batch]}`` (as
  ``Dataset.validation_sets`` returns them); loss = token-weighted mean cross-entropy."""
  fn = programs.jit_eval_step(step_lib.make_eval_step(model, dtype))
  out = {}
  for name, batches in sets.items():
    total, weight = 0.0, 0.0
    for batch in batches:
      sums = jax.device_get(
        fn(params, {k: np.asarray(v) for k, v in batch.items() if k != "example_id"})
      )
      total, weight = total + float(sums["loss_sum"]), weight + float(sums["weight_sum"])
    loss = total / max(weight, 1.0)
    out[name] = dict(loss=loss, perplexity=math.exp(min(loss, 700.0)), tokens=int(weight))
  return out


def greedy_generate(
  model, params, prompt_ids, max_new_tokens: int, use_cache: bool = True, dtype=jnp.float32
):
  """prompt_ids int [B, P] -> int32 [B, max_new_tokens], the greedy continuation.

  ``model`` is a gpt ``LanguageModel``; ``params`` boxed or not. ``P + max_new_tokens`` must
  not exceed ``model.cfg.max_length``. Jitted once per (shape, use_cache)."""
  prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
  total = prompt_ids.shape[1] + int(max_new_tokens)
  if total > model.cfg.max_length:
    raise ValueError(
      f"prompt ({prompt_ids.shape[1]}) + {max_new_tokens} new tokens exceed "
      f"model.max_length {model.cfg.max_length}."
    )
  fn = _generate_cached if use_cache else _generate_full
  return fn(
    model.module.clone(dtype=dtype, deterministic=True),
    nn.unbox(params),
    prompt_ids,
    int(max_new_tokens),
  )


def _generate_cached_impl(module, params, prompt, n):
  b, p = prompt.shape
  mod = module.clone(decode_len=p + n)
  logits, state = mod.apply({"params": params}, prompt, position=0, mutable=["cache"])
  first = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
  out = jnp.zeros((b, n), jnp.int32).at[:, 0].set(first)

  def body(i, carry):
    out, cache = carry
    token = jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1)
    logits, state = mod.apply(
      {"params": params, "cache": cache}, token, position=p + i - 1, mutable=["cache"]
    )
    nxt = jnp.argmax(logits[:, 0], -1).astype(jnp.int32)
    return jax.lax.dynamic_update_slice_in_dim(out, nxt[:, None], i, axis=1), state["cache"]

  out, _ = jax.lax.fori_loop(1, n, body, (out, state["cache"]))
  return out


def _generate_full_impl(module, params, prompt, n):
  b, p = prompt.shape
  buf = jnp.concatenate([prompt, jnp.zeros((b, n), jnp.int32)], axis=1)

  def body(i, buf):
    logits = module.apply({"params": params}, buf)  # causal: the tail is ignored
    nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, p + i - 1, 1, False), -1)
    return jax.lax.dynamic_update_slice_in_dim(buf, nxt.astype(jnp.int32)[:, None], p + i, axis=1)

  return jax.lax.fori_loop(0, n, body, buf)[:, p:]


_generate_cached = jax.jit(_generate_cached_impl, static_argnums=(0, 3))
_generate_full = jax.jit(_generate_full_impl, static_argnums=(0, 3))


def multiple_choice_items(
  chunks: Any,
  num_items: int = 200,
  num_choices: int = 4,
  context_len: int = 24,
  continuation_len: int = 8,
  seed: int = 0,
) -> dict[str, np.ndarray]:
  """A zero-shot cloze set from held-out chunks (int [N, C], C >= context + continuation).

  Returns ``context`` int32 [n, context_len], ``choices`` int32 [n, num_choices,
  continuation_len] and ``answer`` int32 [n] (index of the true ending), n = min(num_items,
  N) items; deterministic in ``seed``."""
  chunks = np.asarray(chunks)
  n_chunks, width = chunks.shape
  if width < context_len + continuation_len:
    raise ValueError(
      f"chunks of {width} tokens are shorter than context {context_len} + "
      f"continuation {continuation_len}."
    )
  if n_chunks < num_choices:
    raise ValueError(f"{n_chunks} held-out chunks cannot give {num_choices} choices.")
  rng = np.random.default_rng((seed, 0x3C))
  n = min(num_items, n_chunks)
  rows = np.sort(rng.choice(n_chunks, size=n, replace=False))
  context = chunks[rows, :context_len]
  endings = chunks[:, context_len : context_len + continuation_len]
  choices = np.empty((n, num_choices, continuation_len), np.int32)
  answer = rng.integers(0, num_choices, size=n)
  for i, row in enumerate(rows):
    others = rng.choice(np.delete(np.arange(n_chunks), row), size=num_choices - 1, replace=False)
    picks = list(others)
    picks.insert(int(answer[i]), row)
    choices[i] = endings[picks]
  return dict(context=context.astype(np.int32), choices=choices, answer=answer.astype(np.int32))


def sequence_log_probs(model, params, context, choices, dtype=jnp.float32) -> np.ndarray:
  """Summed log-probability of each ending given its context -> float32 [n, num_choices]."""
  context, choices = np.asarray(context), np.asarray(choices)
  n, k, m = choices.shape
  seqs = np.concatenate([np.repeat(context[:, None], k, 1), choices], -1).reshape(n * k, -1)
  c = context.shape[1]
  fn = _logits_fn(model, dtype)
  logits = np.asarray(fn(params, seqs[:, :-1]), np.float32)
  logp = jax.nn.log_softmax(logits[:, c - 1 :], -1)  # predicts seqs[:, c:]
  picked = np.take_along_axis(np.asarray(logp), seqs[:, c:, None], -1)[..., 0]
  return picked.sum(-1).reshape(n, k)


def multiple_choice_accuracy(model, params, items: dict, dtype=jnp.float32) -> float:
  """Fraction of items whose true ending gets the highest log-probability."""
  scores = sequence_log_probs(model, params, items["context"], items["choices"], dtype)
  return float(np.mean(np.argmax(scores, -1) == items["answer"]))
