"""Deterministic, resumable batches from a document stream (``data.source='tfds'``).

A stream source is ``docs_from(start) -> iterator of str``: this process's share of the records
from record ``start`` on. A document is held out iff ``doc_hash(text, seed) < fraction``;
training chunks are shuffled in windows of ``window_batches`` local batches by
``default_rng((seed, epoch, window))``; the iterator state is six integers ``{epoch, window,
doc, offset, chunk, batch}``; example ids are ``chunk_index * process_count + process_index``.
Details: docs/data.md.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator

import numpy as np

from ntng_jax.data.dataset import Dataset
from ntng_jax.data.errors import DataError
from ntng_jax.data.layout import make_objective
from ntng_jax.data.pipeline import take_chunks, unigram_entropy_nats
from ntng_jax.data.spec import as_spec
from ntng_jax.data.tokenizers import load_or_train_tokenizer
from ntng_jax.data.validation import fixed_batches

_U64 = float(1 << 64)


def doc_hash(text: str, seed: int = 0) -> float:
  """Uniform number in [0, 1) from ``text`` and ``seed`` (blake2b)."""
  h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(seed).encode()[:64])
  return int.from_bytes(h.digest(), "little") / _U64


def is_heldout(text: str, fraction: float, seed: int = 0) -> bool:
  return fraction > 0 and doc_hash(text, seed) < fraction


class StreamIterator:
  """See the module docstring. Yields this process's rows of each global batch."""

  def __init__(
    self,
    docs_from: Callable[[int], Iterator[str]],
    encode_batch: Callable[[list[str]], list[list[int]]],
    chunk_len: int,
    append_ids,
    objective,
    batch_size: int,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    holdout_fraction: float = 0.0,
    holdout_seed: int = 0,
    window_batches: int = 64,
    batch_docs: int = 256,
  ):
    if batch_size % process_count:
      raise ValueError(
        f"batch_size {batch_size} is not divisible by process_count {process_count}."
      )
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
    self.docs_from, self.encode_batch = docs_from, encode_batch
    self.chunk_len, self.append = int(chunk_len), [int(a) for a in append_ids]
    self.objective, self.seed = objective, int(seed)
    self.batch_size = int(batch_size)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.local_batch = self.batch_size // self.process_count
    self.holdout_fraction, self.holdout_seed = float(holdout_fraction), int(holdout_seed)
    self.window_batches, self.batch_docs = max(1, int(window_batches)), int(batch_docs)
    self._state = dict(epoch=0, window=0, doc=0, offset=0, chunk=0, batch=0)
    self._window = None  # (chunks [n, C], ids [n], next position dict) of the current window
    self._gen = None

  # -------------------------------------------------------------- state
  def get_state(self) -> dict:
    return dict(self._state)

  def set_state(self, state: dict) -> None:
    s = {k: int(state[k]) for k in ("epoch", "window", "doc", "offset", "chunk", "batch")}
    if min(s.values()) < 0:
      raise ValueError(f"invalid stream iterator state {state}.")
    self._state, self._window, self._gen = s, None, None

  # -------------------------------------------------------------- chunks
  def _chunk_stream(self, doc: int, offset: int) -> Iterator[tuple[np.ndarray, int, int]]:
    """``(chunk, start_doc, start_offset)`` from document ``doc``, token ``offset`` on;
    held-out documents are skipped (their index still counts)."""
    docs = self.docs_from(doc)
    flat = np.empty(0, np.int32)
    pos = np.empty(0, np.int64)  # start of each document's tokens in ``flat``
    didx = np.empty(0, np.int64)  # its document index
    doff = np.empty(0, np.int64)  # token offset inside the document at that start
    index, skip = doc, int(offset)
    while True:
      batch = list(itertools.islice(docs, self.batch_docs))
      if not batch:
        return
      keep = [
        (index + i, d)
        for i, d in enumerate(batch)
        if d and not is_heldout(d, self.holdout_fraction, self.holdout_seed)
      ]
      index += len(batch)
      if not keep:
        continue
      arrs, starts, idxs, offs = [flat], [], [], []
      p = len(flat)
      for (i, _), t in zip(keep, self.encode_batch([d for _, d in keep])):
        arr = np.asarray(list(t) + self.append, np.int32)
        o = skip if i == doc else 0
        skip = 0 if i == doc else skip
        arrs.append(arr[o:])
        starts.append(p)
        idxs.append(i)
        offs.append(o)
        p += len(arr) - o
      flat = np.concatenate(arrs)
      pos, didx, doff = (
        np.concatenate([pos, starts]),
        np.concatenate([didx, idxs]),
        np.concatenate([doff, offs]),
      )
      n = len(flat) // self.chunk_len
      if not n:
        continue
      qs = np.arange(n) * self.chunk_len
      js = np.searchsorted(pos, qs, side="right") - 1
      for q, j in zip(qs.tolist(), js.tolist()):
        yield flat[q : q + self.chunk_len], int(didx[j]), int(doff[j] + q - pos[j])
      cut = n * self.chunk_len
      jc = int(np.searchsorted(pos, cut, side="right") - 1)  # document covering ``cut``
      off0 = doff[jc] + cut - pos[jc]
      flat = flat[cut:]
      pos = np.concatenate([[0], pos[jc + 1 :] - cut])
      doff = np.concatenate([[off0], doff[jc + 1 :]])
      didx = np.concatenate([[didx[jc]], didx[jc + 1 :]])

  def _fill_window(self) -> None:
    """Read the window that starts at the state's position (state['batch'] untouched)."""
    s = self._state
    want = self.local_batch * self.window_batches
    chunks, ids = [], []
    nxt = None
    for c, (tokens, d, o) in enumerate(self._chunk_stream(s["doc"], s["offset"])):
      if len(chunks) == want:
        nxt = dict(doc=d, offset=o, chunk=s["chunk"] + c)
        break
      chunks.append(tokens)
      ids.append((s["chunk"] + c) * self.process_count + self.process_index)
    n_batches = len(chunks) // self.local_batch
    if nxt is None and n_batches == 0:
      if s["doc"] == 0 and s["offset"] == 0:
        raise ValueError(
          f"the stream has fewer than {self.local_batch} training chunks "
          f"of {self.chunk_len} tokens; use more data or a smaller batch."
        )
      self._window = None  # end of the epoch
      return
    arr = np.stack(chunks)
    order = np.random.default_rng((self.seed, s["epoch"], s["window"])).permutation(len(arr))
    order = order[: n_batches * self.local_batch]
    self._window = (arr[order], np.asarray(ids, np.int64)[order], n_batches, nxt)

  def __iter__(self) -> "StreamIterator":
    return self

  def __next__(self) -> dict:
    for _ in range(3):
      if self._window is None:
        self._fill_window()
        if self._window is None:  # epoch end: restart the stream
          self._state = dict(
            epoch=self._state["epoch"] + 1, window=0, doc=0, offset=0, chunk=0, batch=0
          )
          continue
      chunks, ids, n_batches, nxt = self._window
      s = self._state
      if s["batch"] >= n_batches:
        self._window = None
        if nxt is None:
          self._state = dict(epoch=s["epoch"] + 1, window=0, doc=0, offset=0, chunk=0, batch=0)
        else:
          self._state = dict(epoch=s["epoch"], window=s["window"] + 1, batch=0, **nxt)
        continue
      b = s["batch"]
      sl = slice(b * self.local_batch, (b + 1) * self.local_batch)
      rng = np.random.default_rng((self.seed, 1, s["epoch"], s["window"], b, self.process_index))
      batch = self.objective(rng, chunks[sl])
      batch["example_id"] = ids[sl].astype(np.int32)
      s["batch"] = b + 1
      return batch
    raise RuntimeError("the stream yields no training batches.")


def heldout_chunks(
  docs: Iterator[str],
  encode_batch,
  chunk_len: int,
  append_ids,
  fraction: float,
  seed: int,
  max_chunks: int | None,
  batch_docs: int = 256,
) -> np.ndarray:
  """Chunks int32 [n, chunk_len] of the held-out documents of ``docs`` (in order), at most
  ``max_chunks``; the 'heldout' validation set of a stream."""
  held = (d for d in docs if d and is_heldout(d, fraction, seed))
  return take_chunks(held, encode_batch, chunk_len, append_ids, max_chunks, batch_docs)


# ----------------------------------------------------------------------------- dataset
def build_stream_dataset(
  cfg_data,
  kind: str,
  vocab_size: int,
  work,
  *,
  share_docs: Callable[[int, int, int], Iterator[str]],
  source: str,
  tokenizer_train_chars: int = 4_000_000,
  entropy_docs: int = 2000,
):
  """A :class:`Dataset` over a document stream; ``cfg_data``: a ``DataSpec`` or config.data.

  Args:
    share_docs: ``(process_index, process_count, start) -> documents`` of that process's
      share from record ``start`` on; ``share_docs(0, 1, 0)`` is the full stream.
    source: description for ``meta['source']``.
  The tokenizer comes from ``data.tokenizer_dir`` or is trained on the first
  ``tokenizer_train_chars`` characters of the training documents (cached in
  ``workdir/tokenizer``).
  """
  spec = as_spec(cfg_data)
  frac = spec.validation_fraction
  hseed = 0

  def training_docs():  # a generator: the stream is opened only when the docs are read
    for d in share_docs(0, 1, 0):
      if d and not is_heldout(d, frac, hseed):
        yield d

  tok = load_or_train_tokenizer(
    spec.tokenizer_dir,
    kind,
    vocab_size,
    training_docs(),
    work / "tokenizer" if work else None,
    max_train_chars=tokenizer_train_chars,
  )
  objective, lay = make_objective(spec, kind, tok)
  chunk_len, append = lay["chunk_len"], lay["append_ids"]
  sample = take_chunks(
    itertools.islice(training_docs(), entropy_docs), tok.encode_batch, chunk_len, append, None
  )
  if len(sample) == 0:
    raise DataError(
      f"The stream {source} yields no training text; check data.path and data.tfds_text_key."
    )
  entropy = unigram_entropy_nats(
    sample, tok.vocab_size, sorted(tok.special_ids) if kind == "bert" else ()
  )

  def stream(batch_size, seed, process_index=0, process_count=1):
    return StreamIterator(
      lambda start: share_docs(process_index, process_count, start),
      tok.encode_batch,
      chunk_len,
      append,
      objective,
      batch_size,
      seed,
      process_index,
      process_count,
      frac,
      hseed,
    )

  memo: dict = {}

  def heldout(max_chunks):
    if max_chunks not in memo:
      memo[max_chunks] = heldout_chunks(
        share_docs(0, 1, 0), tok.encode_batch, chunk_len, append, frac, hseed, max_chunks
      )
    return memo[max_chunks]

  meta = dict(
    source=source,
    family=kind,
    tokenizer_fingerprint=tok.fingerprint,
    vocab_size=tok.vocab_size,
    num_pieces=tok.num_pieces,
    validation_fraction=frac,
    holdout="document hash (blake2b) < fraction",
    **lay,
  )
  return StreamDataset(
    family=kind,
    tokenizer=tok,
    train_chunks=None,
    validation_chunks=None,
    train_ids=np.empty(0, np.int64),
    validation_ids=np.empty(0, np.int64),
    objective=objective,
    unigram_entropy_nats=entropy,
    meta=meta,
    stream=stream,
    heldout=heldout,
  )


class StreamDataset(Dataset):
  """A Dataset whose training data and 'heldout' set come from a document stream."""

  def __init__(self, *args, heldout=None, **kwargs):
    super().__init__(*args, **kwargs)
    self._heldout = heldout

  def validation_batches(self, batch_size, seed=0, max_batches=None):
    chunks = self._heldout(None if max_batches is None else max_batches * batch_size)
    if len(chunks) == 0:
      raise DataError(
        "The stream's held-out documents give no chunk; set "
        "data.validation_fraction > 0 (or higher)."
      )
    return fixed_batches(
      chunks, np.arange(len(chunks)), self.objective, batch_size, seed, max_batches
    )

  def heldout_batches(self, name, batch_size, seed, max_batches):
    return self.validation_batches(batch_size, seed, max_batches)
