"""A built dataset: tokenised, chunked training and held-out data plus its objective, with
the batch iterators the trainer uses (contract of a batch: docs/architecture.md)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from ntng_jax.data.errors import DataError
from ntng_jax.data.pipeline import BatchIterator, Prefetcher
from ntng_jax.data.resolver import ValidationResolver
from ntng_jax.data.tokenizers import Tokenizer
from ntng_jax.data.validation import HELDOUT, fixed_batches


@dataclasses.dataclass
class Dataset:
  """A tokenised, chunked corpus plus its objective.

  Attributes:
    family: 'bert', 't5' or 'gpt'. tokenizer: :class:`Tokenizer`.
    train_chunks / validation_chunks: int [N, C] array-likes (``np.ndarray``; for shards a
      ``RowView`` over memory-mapped uint16/uint32 shards), C = seq_len for BERT, the raw
      span-corruption length for T5; train_ids / validation_ids: int64 [N] chunk ids.
    objective: ``(rng, tokens [b, C]) -> batch dict`` (MLM or span corruption).
    unigram_entropy_nats: entropy of the training tokens (BERT: non-special tokens only),
      i.e. the loss a context-free model can reach, in nats/token.
    meta: source, tokenizer fingerprint, counts and lengths.
    validation_sources: ``{name: source}`` (``data.validation``), 'heldout' first.
    resolver: builds the chunks of non-'heldout' validation sources.
    stream: for streamed sources (tfds), ``(batch_size, seed, process_index, process_count)
      -> iterator`` replacing the chunk-array iterator.
  """

  family: str
  tokenizer: Tokenizer
  train_chunks: Any
  validation_chunks: Any
  train_ids: np.ndarray
  validation_ids: np.ndarray
  objective: Callable[[np.random.Generator, np.ndarray], dict]
  unigram_entropy_nats: float
  meta: dict[str, Any]
  validation_sources: dict[str, str] = dataclasses.field(default_factory=lambda: {HELDOUT: HELDOUT})
  resolver: ValidationResolver | None = None
  stream: Callable | None = None

  def train_iterator(
    self,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 0,
    workers: int = 1,
  ):
    """Infinite shuffled iterator over training chunks (see :class:`BatchIterator`): this
    process's rows of each global batch, ``get_state()``/``set_state()`` for resuming.
    ``prefetch > 0`` computes that many batches ahead in ``workers`` threads
    (:class:`Prefetcher`; same batches, same states)."""
    if self.stream is not None:
      return self.stream(batch_size, seed, process_index, process_count)
    it = BatchIterator(
      self.train_chunks,
      batch_size,
      self.objective,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      example_ids=self.train_ids,
    )
    return Prefetcher(it, prefetch, workers) if prefetch > 0 else it

  def validation_batches(
    self, batch_size: int, seed: int = 0, max_batches: int | None = None
  ) -> list[dict]:
    """Full global batches over the held-out chunks in order, with masks/spans fixed by
    ``seed`` (identical on every call). If fewer chunks than ``batch_size`` exist, one
    batch of all of them."""
    if len(self.validation_chunks) == 0:
      raise DataError("No validation chunks; set data.validation_fraction > 0.")
    return fixed_batches(
      self.validation_chunks, self.validation_ids, self.objective, batch_size, seed, max_batches
    )

  def heldout_batches(
    self, name: str, batch_size: int, seed: int, max_batches: int | None
  ) -> list[dict]:
    if len(self.validation_chunks) == 0:
      raise DataError(
        f"Validation set '{name}' is the held-out split, which is empty; "
        f"set data.validation_fraction > 0 or remove "
        f"data.validation.{name}."
      )
    return self.validation_batches(batch_size, seed, max_batches)

  def validation_sets(
    self, batch_size: int, seed: int = 0, max_batches: int | None = None
  ) -> dict[str, list[dict]]:
    """``{name: [global batch dicts]}`` for every ``data.validation`` entry, 'heldout'
    sources first; batches are fixed (same masks/spans on every call) and hold
    ``min(batch_size, chunks)`` sequences; at most ``max_batches`` per set."""
    out = {}
    max_chunks = None if max_batches is None else max_batches * batch_size
    for name, src in self.validation_sources.items():
      if src == HELDOUT:
        out[name] = self.heldout_batches(name, batch_size, seed, max_batches)
        continue
      if self.resolver is None:
        raise DataError(
          f"Validation set '{name}' needs a resolver; build the dataset with build_dataset."
        )
      chunks, ids = self.resolver(name, src, max_chunks)
      out[name] = fixed_batches(chunks, ids, self.objective, batch_size, seed, max_batches)
    return out
