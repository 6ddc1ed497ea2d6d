"""Chunk layout and objective of a family: what length to cut chunks to, what to append after
each document, and the objective bound to a tokenizer (``make_objective``)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from ntng_jax.data.objectives import (
  causal_lm,
  compute_input_and_target_lengths,
  default_max_predictions,
  mask_for_mlm,
  span_corruption,
)
from ntng_jax.data.spec import as_spec
from ntng_jax.data.tokenizers import Tokenizer


def chunk_layout(
  family: str, seq_len: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int | None]:
  """``(chunk_len, targets_length)``: BERT ``(seq_len, None)``; GPT ``(seq_len + 1, None)``
  (inputs and next-token targets); T5 the raw span-corruption length and target length for
  ``seq_len`` encoder inputs (512 -> (568, 114) at 0.15 / 3.0)."""
  if family == "bert":
    return int(seq_len), None
  if family == "gpt":
    return int(seq_len) + 1, None
  if family == "t5":
    return compute_input_and_target_lengths(
      int(seq_len), float(noise_density), float(mean_noise_span_length)
    )
  raise ValueError(f"family must be 'bert', 't5' or 'gpt', got {family!r}.")


def make_objective(cfg_data, kind: str, tok: Tokenizer) -> tuple[Callable, dict]:
  """The objective for ``kind`` and the chunk layout it needs: ``(objective, layout)`` with
  layout keys ``seq_len, chunk_len, targets_length, max_predictions, append_ids,
  noise_density, mean_noise_span_length``. ``cfg_data``: a :class:`DataSpec` or config.data."""
  spec = as_spec(cfg_data)
  seq_len, nd, msl = spec.seq_len, spec.noise_density, spec.mean_noise_span_length
  chunk_len, targets_len = chunk_layout(kind, seq_len, nd, msl)
  if kind == "gpt":  # chunks of seq_len + 1 tokens: inputs [:-1], next-token targets [1:]
    objective, max_pred, append = causal_lm, None, (tok.eos_id,)
  elif kind == "bert":
    max_pred = spec.max_predictions or default_max_predictions(seq_len)
    objective = functools.partial(
      mask_for_mlm,
      special_ids=tuple(sorted(tok.special_ids)),
      mask_id=tok.mask_id,
      vocab_size=tok.random_token_high,
      max_predictions=max_pred,
    )
    append = (tok.sep_id,)
  else:
    objective = functools.partial(
      span_corruption,
      sentinel_ids=tok.sentinel_ids,
      eos_id=tok.eos_id,
      pad_id=tok.pad_id,
      noise_density=nd,
      mean_noise_span_length=msl,
      targets_length=targets_len,
    )
    max_pred, append = None, (tok.eos_id,)
  layout = dict(
    chunk_len=chunk_len,
    targets_length=targets_len,
    max_predictions=max_pred,
    append_ids=append,
    seq_len=seq_len,
    noise_density=nd,
    mean_noise_span_length=msl,
  )
  return objective, layout
