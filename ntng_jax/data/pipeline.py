"""From token streams to batches: chunking, held-out split, resumable batch iterator.

Example ids are chunk indices in the full chunk array (stable across runs for a fixed
corpus + tokenizer + chunk length).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ntng_jax.data.errors import DataError

Objective = Callable[[np.random.Generator, np.ndarray], dict]


def _flatten(token_lists: Sequence[Sequence[int]], append_ids: Sequence[int]) -> np.ndarray:
  """int32 concatenation of ``doc + append_ids`` for every doc."""
  app = list(append_ids)
  total = sum(len(t) for t in token_lists) + len(app) * len(token_lists)
  return np.fromiter(
    itertools.chain.from_iterable(itertools.chain(t, app) for t in token_lists),
    dtype=np.int32,
    count=total,
  )


def chunk_token_stream(
  token_lists: Sequence[Sequence[int]], chunk_len: int, append_ids: Sequence[int] = ()
) -> np.ndarray:
  """Concatenate ``doc + append_ids`` for every doc and cut into full chunks.

  BERT: one doc per line with ``append_ids=(sep_id,)`` (``$A <sep>``); T5:
  ``append_ids=(eos_id,)``. The remainder after the last full chunk is dropped.

  Returns: int32 [N, chunk_len], N = total_tokens // chunk_len.
  """
  flat = _flatten(token_lists, append_ids)
  n = len(flat) // chunk_len
  return flat[: n * chunk_len].reshape(n, chunk_len)


def iter_chunk_blocks(
  docs: Iterable[str],
  encode_batch: Callable[[list[str]], list[list[int]]],
  chunk_len: int,
  append_ids: Sequence[int] = (),
  batch_docs: int = 2048,
) -> Iterator[tuple[np.ndarray, int, int]]:
  """Streaming :func:`chunk_token_stream`: tokenise ``docs`` ``batch_docs`` at a time and yield
  ``(chunks int32 [n, chunk_len], docs_read_so_far, tokens_streamed_so_far)`` blocks (n may be
  0); tokens left over after the last full chunk are dropped. Concatenating the blocks equals
  ``chunk_token_stream(encode_batch(all docs), chunk_len, append_ids)``."""
  carry = np.empty(0, np.int32)
  done = streamed = 0
  it = iter(docs)
  while True:
    batch = list(itertools.islice(it, batch_docs))
    if not batch:
      return
    done += len(batch)
    new = _flatten(encode_batch(batch), append_ids)
    streamed += len(new)
    flat = np.concatenate([carry, new])
    n = len(flat) // chunk_len
    carry = flat[n * chunk_len :]
    yield flat[: n * chunk_len].reshape(n, chunk_len), done, streamed


def take_chunks(
  docs: Iterable[str],
  encode_batch: Callable[[list[str]], list[list[int]]],
  chunk_len: int,
  append_ids: Sequence[int],
  max_chunks: int | None,
  batch_docs: int = 256,
) -> np.ndarray:
  """The first ``max_chunks`` (None = all) chunks int32 [n, chunk_len] of ``docs``."""
  blocks, have = [], 0
  for block, _, _ in iter_chunk_blocks(docs, encode_batch, chunk_len, append_ids, batch_docs):
    blocks.append(block)
    have += len(block)
    if max_chunks is not None and have >= max_chunks:
      break
  out = np.concatenate(blocks) if blocks else np.empty((0, chunk_len), np.int32)
  return out[:max_chunks]


def holdout_count(num_chunks: int, fraction: float) -> int:
  """Number of held-out chunks :func:`holdout_split` carves from ``num_chunks``."""
  n_held = int(round(fraction * num_chunks))
  if fraction > 0 and num_chunks > 1:
    n_held = min(max(n_held, 1), num_chunks - 1)
  return n_held


def holdout_split(num_chunks: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic random split of ``range(num_chunks)``.

  Held out: ``round(fraction * num_chunks)`` chunks (at least 1 if ``fraction > 0`` and
  ``num_chunks > 1``). Returns (train_ids, heldout_ids), both sorted int64.
  """
  n_held = holdout_count(num_chunks, fraction)
  perm = np.random.default_rng((seed, 7)).permutation(num_chunks)
  return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def unigram_entropy_nats(
  chunks: np.ndarray, vocab_size: int, exclude_ids: Sequence[int] = ()
) -> float:
  """Entropy (nats/token) of the empirical token distribution of ``chunks`` (int [N, C]),
  ignoring ``exclude_ids``: the cross-entropy of the best context-free predictor."""
  counts = np.bincount(np.asarray(chunks).ravel(), minlength=vocab_size).astype(np.float64)
  counts[list(exclude_ids)] = 0.0
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


class BatchIterator:
  """Infinite, deterministic, exactly resumable batch iterator over chunks.

  Epoch ``e`` visits rows in the order ``default_rng((seed, e)).permutation(N)`` (or
  ``arange(N)`` without shuffle), in ``N // batch_size`` full global batches (remainder
  dropped). Global batch ``(e, i)`` is split into blocks of ``rng_block`` rows (the last may
  be shorter); block ``j`` gets the objective RNG ``default_rng((seed, 1, e, i, j))``.
  Process ``p`` of ``P`` yields rows ``[p*B/P, (p+1)*B/P)`` of each global batch; it runs the
  objective on the whole blocks overlapping its rows and keeps its rows, so concatenating
  the processes' batches gives exactly the single-process batch for any ``P``.

  Args:
    chunks: int [N, C] (an ``np.memmap`` or a :class:`ntng_jax.data.shards.ShardedChunks` /
      ``RowView`` works: only this process's blocks of the batch rows are read; uint16/uint32
      rows are widened to int32).
    batch_size: global batch size B.
    objective: ``(rng, tokens int [b, C]) -> dict of [b, ...] arrays``.
    example_ids: int [N] global ids of the rows (default ``arange(N)``).
    rng_block: rows per objective call; part of the batch definition (keep it fixed).
  Yields: the objective's dict plus ``example_id`` int32 [B / process_count].
  """

  def __init__(
    self,
    chunks: np.ndarray,
    batch_size: int,
    objective: Objective,
    seed: int = 0,
    shuffle: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    example_ids: np.ndarray | None = None,
    rng_block: int = 8,
  ):
    self.chunks, self.objective = chunks, objective
    self.num_rows = int(chunks.shape[0])
    self.batch_size, self.seed, self.shuffle = int(batch_size), int(seed), bool(shuffle)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.example_ids = np.arange(self.num_rows) if example_ids is None else np.asarray(example_ids)
    if len(self.example_ids) != self.num_rows:
      raise ValueError(
        f"example_ids has {len(self.example_ids)} entries for {self.num_rows} chunks."
      )
    if self.batch_size % self.process_count:
      raise ValueError(
        f"batch_size {batch_size} is not divisible by process_count {process_count}."
      )
    self.local_batch = self.batch_size // self.process_count
    self.rng_block = max(1, int(rng_block))
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
    self.batches_per_epoch = self.num_rows // self.batch_size
    if self.batches_per_epoch == 0:
      raise ValueError(
        f"only {self.num_rows} chunks for a batch of {self.batch_size}; "
        f"use more data or a smaller batch."
      )
    self.epoch, self.index = 0, 0
    self._perm_cache: dict = {}

  # -------------------------------------------------------------- state
  def get_state(self) -> dict:
    """Position of the next batch: ``{'epoch': int, 'index': int}``."""
    return {"epoch": self.epoch, "index": self.index}

  def set_state(self, state: dict) -> None:
    """Continue from a :meth:`get_state` dict (the next batch is the one it described)."""
    epoch, index = int(state["epoch"]), int(state["index"])
    if not (epoch >= 0 and 0 <= index <= self.batches_per_epoch):
      raise ValueError(
        f"invalid iterator state {state} (batches/epoch = {self.batches_per_epoch})."
      )
    self.epoch, self.index = epoch, index

  # -------------------------------------------------------------- batches
  def _order(self, epoch: int) -> np.ndarray:
    # The two most recent epochs' orders (a prefetcher straddles an epoch boundary); the
    # dict is replaced, never mutated, so worker threads always see a consistent one.
    cache = self._perm_cache
    if epoch not in cache:
      order = (
        np.random.default_rng((self.seed, epoch)).permutation(self.num_rows)
        if self.shuffle
        else np.arange(self.num_rows)
      )
      keep = {e: o for e, o in cache.items() if e > epoch - 2 and e != epoch}
      cache = self._perm_cache = {**dict(list(keep.items())[-1:]), epoch: order}
    return cache[epoch]

  def batch_at(self, epoch: int, index: int) -> dict:
    """This process's part of global batch ``index`` of ``epoch`` (pure function)."""
    rb, lo = self.rng_block, self.process_index * self.local_batch  # lo: offset in batch
    hi = lo + self.local_batch
    j0, j1 = lo // rb, -(-hi // rb)  # blocks overlapping [lo, hi)
    b0, b1 = j0 * rb, min(j1 * rb, self.batch_size)  # rows those blocks cover
    order = self._order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
    tokens = np.asarray(self.chunks[order[b0:b1]]).astype(np.int32, copy=False)
    parts = []
    for j in range(j0, j1):
      rng = np.random.default_rng((self.seed, 1, epoch, index, j))
      parts.append(self.objective(rng, tokens[j * rb - b0 : (j + 1) * rb - b0]))
    batch = {
      k: (np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k])[
        lo - b0 : hi - b0
      ]
      for k in parts[0]
    }
    batch["example_id"] = self.example_ids[order[lo:hi]].astype(np.int32)
    return batch

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> dict:
    if self.index >= self.batches_per_epoch:
      self.epoch, self.index = self.epoch + 1, 0
    batch = self.batch_at(self.epoch, self.index)
    self.index += 1
    return batch


class Prefetcher:
  """Batches of a :class:`BatchIterator` computed ahead in worker threads, returned in order.

  ``BatchIterator.batch_at`` is a pure function of the position, so the next ``depth``
  positions are computed by ``workers`` threads and the result is identical to iterating
  ``it`` directly. It overlaps batch preparation with a step waiting on the device; it is not a
  parallel speed-up (the objectives hold the GIL; see docs/data.md). Keep ``workers`` at 1-2.
  ``get_state``/``set_state`` describe the next batch to be *returned* (not the next to be
  computed), so checkpoints resume exactly.
  """

  def __init__(self, it: "BatchIterator", depth: int = 4, workers: int = 1):
    self.it, self.depth = it, max(1, int(depth))
    self._pool = ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix="batches")
    self._queue = collections.deque()
    self._next = (it.epoch, it.index)  # next position to return
    self._scheduled = self._next  # next position to schedule

  @staticmethod
  def _normal(pos, per_epoch):
    epoch, index = pos
    return (epoch + 1, 0) if index >= per_epoch else (epoch, index)

  def get_state(self) -> dict:
    return {"epoch": self._next[0], "index": self._next[1]}

  def set_state(self, state: dict) -> None:
    self.it.set_state(state)
    for f in self._queue:
      f.cancel()
    self._queue.clear()
    self._next = self._scheduled = (self.it.epoch, self.it.index)

  def __iter__(self) -> "Prefetcher":
    return self

  def __next__(self) -> dict:
    per_epoch = self.it.batches_per_epoch
    while len(self._queue) < self.depth:
      e, i = self._normal(self._scheduled, per_epoch)
      self._queue.append(self._pool.submit(self.it.batch_at, e, i))
      self._scheduled = (e, i + 1)
    batch = self._queue.popleft().result()
    e, i = self._normal(self._next, per_epoch)
    self._next = (e, i + 1)
    self.it.epoch, self.it.index = self._next
    return batch

  def close(self) -> None:
    for f in self._queue:
      f.cancel()
    self._pool.shutdown(wait=False)


# -------------------------------------------------------------- multi-epoch regime
def limit_unique_tokens(dataset, unique_tokens: int):
  """The dataset restricted to a fixed prefix of its training split (``data.unique_tokens``).

  The first ``unique_tokens // chunk_len`` training chunks in corpus order (training ids are
  sorted) are kept; the batch iterator then repeats them epoch after epoch, reshuffled each
  epoch, for as long as the RST budget lasts. Held-out / validation data are unchanged.
  ``unique_tokens <= 0`` returns ``dataset`` as is.

  Raises:
    DataError: a streamed source, a prefix of no chunk, or more tokens than the split holds.
  """
  unique_tokens = int(unique_tokens or 0)
  if unique_tokens <= 0:
    return dataset
  if dataset.train_chunks is None:
    raise DataError(
      "data.unique_tokens needs a chunked source (synthetic, text or shards), "
      "not a streamed one; set data.unique_tokens=0 or prepare shards."
    )
  chunk_len = int(dataset.train_chunks.shape[1])
  available = len(dataset.train_ids)
  n = unique_tokens // chunk_len
  if n < 1 or n > available:
    raise DataError(
      f"data.unique_tokens={unique_tokens} gives {n} chunks of {chunk_len} "
      f"tokens but the training split has {available} (1 to "
      f"{available * chunk_len} tokens); pick a value in that range or 0."
    )
  chunks = dataset.train_chunks
  if hasattr(chunks, "base") and hasattr(chunks, "rows"):  # shards.RowView: stay lazy
    chunks = type(chunks)(chunks.base, chunks.rows[:n])
  else:
    chunks = chunks[:n]
  meta = dict(
    dataset.meta, unique_tokens=unique_tokens, num_unique_chunks=n, num_train_before_limit=available
  )
  return dataclasses.replace(
    dataset, train_chunks=chunks, train_ids=np.asarray(dataset.train_ids)[:n], meta=meta
  )


def epochs_seen(iterator) -> float | None:
  """Epochs of training data consumed so far by a (prefetching) batch iterator, fractional:
  ``epoch + index / batches_per_epoch``; None for iterators without epochs (streams)."""
  base = getattr(iterator, "it", iterator)
  per = getattr(base, "batches_per_epoch", None)
  state = iterator.get_state()
  if not per or "epoch" not in state or "index" not in state:
    return None
  return float(state["epoch"]) + float(state["index"]) / float(per)
