"""Pre-training objectives on host numpy: BERT masked LM, T5 span corruption, GPT causal LM.

Each takes a ``np.random.Generator`` and an int token array ``[B, L]`` and returns a batch dict
following ``docs/architecture.md`` (all integer arrays int32, weights float32). Vectorised
over the batch (no Python loops over examples).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np

NOISE_DENSITY = 0.15  # T5's span-corruption defaults (data.noise_density, mean_noise_span_length)
MEAN_NOISE_SPAN_LENGTH = 3.0


@functools.lru_cache(maxsize=16)
def allowed_ids(low: int, high: int, special: tuple) -> np.ndarray:
  """Sorted ids in ``[low, high)`` minus ``special`` (cached; read-only)."""
  out = np.setdiff1d(np.arange(low, high), np.asarray(special, dtype=np.int64))
  out.flags.writeable = False
  return out


def round_half_up(x: float) -> int:
  """``floor(x + 0.5)`` (used for MLM counts; T5 length arithmetic uses Python ``round``)."""
  return int(np.floor(x + 0.5))


def default_max_predictions(seq_len: int, mask_prob: float = 0.15) -> int:
  """P = ``round_half_up(mask_prob * seq_len)``: the largest number of selections a sequence
  of ``seq_len`` maskable tokens can get, so the cap never binds (19 for S=128)."""
  return max(1, round_half_up(mask_prob * seq_len))


def mask_for_mlm(
  rng: np.random.Generator,
  tokens: np.ndarray,
  special_ids: Iterable[int],
  mask_id: int,
  vocab_size: int,
  mask_prob: float = 0.15,
  max_predictions: int | None = None,
  random_token_low: int = 0,
) -> dict:
  """BERT masking with exact per-sequence counts and fresh randomness every call.

  Each row selects exactly ``k = min(P, round_half_up(mask_prob * n_maskable))`` distinct
  positions uniformly among its non-special tokens. Each selected token independently
  becomes ``mask_id`` (p=0.8), a uniformly random non-special id in
  ``[random_token_low, vocab_size)`` (p=0.1), or stays unchanged (p=0.1).

  Args:
    tokens: int [B, S] original ids.
    special_ids: ids never selected (pad, cls, sep, mask, unk, ...).
    vocab_size: exclusive upper bound for random replacement ids (pass the tokenizer's
      ``random_token_high`` so only real pieces are drawn).
    max_predictions: P; ``None``/0 = :func:`default_max_predictions` (S).
  Returns:
    ``input_ids`` int32 [B, S]; ``mlm_positions`` int32 [B, P] (ascending, padding = 0);
    ``mlm_labels`` int32 [B, P] (original ids, padding = 0); ``mlm_weights`` float32 [B, P].
  """
  tokens = np.asarray(tokens)
  b, s = tokens.shape
  p = int(max_predictions) if max_predictions else default_max_predictions(s, mask_prob)
  special = np.fromiter(special_ids, dtype=np.int64)
  maskable = ~np.isin(tokens, special)
  k = np.minimum(np.floor(mask_prob * maskable.sum(axis=1) + 0.5).astype(np.int64), p)
  # Random order with maskable positions first: sort random keys, non-maskable keyed at 2.
  keys = np.where(maskable, rng.random((b, s), dtype=np.float32), np.float32(2.0))
  order = np.argsort(keys, axis=1)[:, :p] if p < s else np.argsort(keys, axis=1)
  valid = np.arange(order.shape[1])[None, :] < k[:, None]
  pos = np.sort(np.where(valid, order, s), axis=1)  # selected ascending, padding = s last
  valid = pos < s
  pos = np.where(valid, pos, 0)
  if pos.shape[1] < p:  # P > S: pad the position list
    pad = p - pos.shape[1]
    pos, valid = np.pad(pos, ((0, 0), (0, pad))), np.pad(valid, ((0, 0), (0, pad)))
  rows = np.arange(b)[:, None]
  labels = np.where(valid, tokens[rows, pos], 0)
  # 80 / 10 / 10 replacement.
  u = rng.random((b, p), dtype=np.float32)
  allowed = allowed_ids(int(random_token_low), int(vocab_size), tuple(np.unique(special)))
  random_ids = allowed[rng.integers(0, len(allowed), size=(b, p))]
  new = np.where(u < 0.8, mask_id, np.where(u < 0.9, random_ids, labels))
  input_ids = tokens.astype(np.int32, copy=True)
  r, c = np.nonzero(valid)
  input_ids[r, pos[r, c]] = new[r, c]
  return dict(
    input_ids=input_ids,
    mlm_positions=pos.astype(np.int32),
    mlm_labels=labels.astype(np.int32),
    mlm_weights=valid.astype(np.float32),
  )


# ---------------------------------------------------------------------------- T5
def _span_counts(length: int, noise_density: float, mean_noise_span_length: float):
  """(num_noise_tokens, num_noise_spans) as T5's ``random_spans_noise_mask`` computes them."""
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
  return num_noise, num_spans


def compute_input_and_target_lengths(
  inputs_length: int,
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tuple[int, int]:
  """Raw chunk length that span-corrupts to exactly ``inputs_length`` encoder tokens (incl.
  EOS), and the resulting target length (incl. EOS). 512 -> (568, 114) at 0.15 / 3.0."""

  def lengths(raw: int) -> tuple[int, int]:
    noise = int(round(raw * noise_density))
    spans = int(round(noise / mean_noise_span_length))
    return raw - noise + spans + 1, noise + spans + 1

  raw = inputs_length
  while lengths(raw + 1)[0] <= inputs_length:
    raw += 1
  _, targets_length = lengths(raw)
  if noise_density == 0.5 and targets_length > inputs_length:  # T5's nice-number tweak
    raw, targets_length = raw - 1, targets_length - 1
  return raw, targets_length


def _random_segmentation(
  rng: np.random.Generator, b: int, num_items: int, num_segments: int
) -> np.ndarray:
  """int64 [b, num_segments] random positive lengths summing to ``num_items`` per row."""
  if num_segments == 1:
    return np.full((b, 1), num_items, dtype=np.int64)
  keys = rng.random((b, num_items - 1))
  cuts = np.argpartition(keys, num_segments - 2, axis=1)[:, : num_segments - 1] + 1
  bounds = np.concatenate(
    [np.zeros((b, 1), np.int64), np.sort(cuts, axis=1), np.full((b, 1), num_items, np.int64)],
    axis=1,
  )
  return np.diff(bounds, axis=1)


def random_spans_noise_mask(
  rng: np.random.Generator,
  batch: int,
  length: int,
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> np.ndarray:
  """bool [batch, length]: T5 noise mask; each row alternates non-noise/noise spans, starting
  with non-noise, with exactly ``num_noise`` noise tokens in ``num_spans`` spans."""
  num_noise, num_spans = _span_counts(length, noise_density, mean_noise_span_length)
  noise_len = _random_segmentation(rng, batch, num_noise, num_spans)
  keep_len = _random_segmentation(rng, batch, length - num_noise, num_spans)
  interleaved = np.stack([keep_len, noise_len], axis=2).reshape(batch, 2 * num_spans)
  starts = np.cumsum(interleaved, axis=1)[:, :-1]
  indicator = np.zeros((batch, length), np.int64)
  np.put_along_axis(indicator, starts, 1, axis=1)
  return np.cumsum(indicator, axis=1) % 2 == 1


def span_corruption(
  rng: np.random.Generator,
  tokens: np.ndarray,
  sentinel_ids,
  eos_id: int = 1,
  pad_id: int = 0,
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
  targets_length: int | None = None,
) -> dict:
  """T5 span corruption of raw chunks.

  Noise span j becomes ``sentinel_ids[j]`` in the inputs; targets are
  ``sentinel_ids[0] span_0 sentinel_ids[1] span_1 ... EOS``. Every row of a fixed raw length
  yields the same lengths, so the outputs are dense.

  Args:
    tokens: int [B, L_raw] (L_raw from :func:`compute_input_and_target_lengths`).
    sentinel_ids: int [>= num_spans]; entry j = id of ``<extra_id_j>``.
    targets_length: pad targets to this length (weights 0); default = natural length.
  Returns:
    ``encoder_input_ids`` int32 [B, Si]; ``decoder_input_ids`` int32 [B, St] (targets shifted
    right, start id = ``pad_id``); ``targets`` int32 [B, St]; ``target_weights`` float32 [B, St].
  """
  tokens = np.asarray(tokens)
  b, length = tokens.shape
  sentinel_ids = np.asarray(sentinel_ids, dtype=np.int64)
  num_noise, num_spans = _span_counts(length, noise_density, mean_noise_span_length)
  if num_spans > len(sentinel_ids):
    raise ValueError(f"{num_spans} noise spans need more than {len(sentinel_ids)} sentinels.")
  noise = random_spans_noise_mask(rng, b, length, noise_density, mean_noise_span_length)
  prev = np.pad(noise, ((0, 0), (1, 0)))[:, :-1]
  noise_start, keep_start = noise & ~prev, ~noise & prev
  keep_start[:, 0] = True  # the first (non-noise) span
  # Span index j of each position: noise span j and the non-noise span before it share j.
  span_j = np.cumsum(keep_start, axis=1) - 1
  sent = sentinel_ids[span_j]
  eos = np.full((b, 1), eos_id, np.int64)
  # Inputs: non-noise tokens, plus a sentinel at the start of each noise span.
  keep_in = ~noise | noise_start
  vals_in = np.where(noise_start, sent, tokens)
  inputs = np.concatenate([vals_in[keep_in].reshape(b, -1), eos], axis=1)
  # Targets: a sentinel at each noise-span start followed by the noise tokens.
  n_tgt = num_noise + num_spans
  tgt = np.empty((b, n_tgt), np.int64)
  slot = np.cumsum(noise.astype(np.int64) + noise_start, axis=1) - 1  # slot of noise tokens
  r, c = np.nonzero(noise)
  tgt[r, slot[r, c]] = tokens[r, c]
  r, c = np.nonzero(noise_start)
  tgt[r, slot[r, c] - 1] = sent[r, c]
  targets = np.concatenate([tgt, eos], axis=1)
  weights = np.ones(targets.shape, np.float32)
  if targets_length is not None and targets_length != targets.shape[1]:
    extra = targets_length - targets.shape[1]
    if extra < 0:
      raise ValueError(f"targets need {targets.shape[1]} tokens > targets_length {targets_length}.")
    targets = np.pad(targets, ((0, 0), (0, extra)), constant_values=pad_id)
    weights = np.pad(weights, ((0, 0), (0, extra)))
  decoder_inputs = np.concatenate([np.full((b, 1), pad_id, np.int64), targets[:, :-1]], 1)
  return dict(
    encoder_input_ids=inputs.astype(np.int32),
    decoder_input_ids=decoder_inputs.astype(np.int32),
    targets=targets.astype(np.int32),
    target_weights=weights,
  )


def reconstruct_from_span_corruption(
  encoder_input_ids: np.ndarray,
  targets: np.ndarray,
  sentinel_ids,
  eos_id: int = 1,
  target_weights: np.ndarray | None = None,
) -> np.ndarray:
  """Invert :func:`span_corruption`: int [B, Si], [B, St] -> original tokens int32 [B, L_raw].

  The final EOS of inputs and targets (and target padding, via ``target_weights``) is
  stripped; each sentinel in the inputs is replaced by the target tokens that follow the
  same sentinel. A per-row loop (used in tests and debugging, not in the input pipeline).
  """
  sentinel_set = set(int(x) for x in np.asarray(sentinel_ids))
  rows = []
  for i in range(encoder_input_ids.shape[0]):
    n_t = targets.shape[1] if target_weights is None else int(target_weights[i].sum())
    tgt, spans, cur = targets[i, : n_t - 1].tolist(), {}, None
    for t in tgt:
      if t in sentinel_set:
        cur = spans.setdefault(t, [])
      elif cur is not None:
        cur.append(t)
    out = []
    for t in encoder_input_ids[i, :-1].tolist():
      out.extend(spans[t] if t in sentinel_set else (t,))
    rows.append(out)
  return np.asarray(rows, dtype=np.int32)


# ---------------------------------------------------------------------------- GPT
def causal_lm(rng: np.random.Generator, tokens: np.ndarray) -> dict:
  """Next-token prediction on packed chunks of ``seq_len + 1`` tokens (documents joined by
  EOS, no attention reset at document boundaries, as GPT-2). ``rng`` is unused (the batch is
  a pure function of the chunk).

  Returns: ``input_ids`` int32 [B, S] = tokens[:, :-1]; ``targets`` int32 [B, S] =
  tokens[:, 1:]; ``target_weights`` float32 [B, S] (all ones: every position predicts).
  """
  del rng
  tokens = np.asarray(tokens)
  return dict(
    input_ids=tokens[:, :-1].astype(np.int32),
    targets=tokens[:, 1:].astype(np.int32),
    target_weights=np.ones((tokens.shape[0], tokens.shape[1] - 1), np.float32),
  )
