"""Validation sources other than 'heldout' as ``(chunks [n, C], ids [n])``, with the run's
tokenizer and chunk layout: text/jsonl (cached under ``workdir/data_cache``), shards directories
(their recorded held-out split, or all chunks if prepared with ``--holdout_fraction=0``; same
tokenizer required) and ``'tfds:NAME[:SPLIT]'`` (streamed; needs tensorflow-datasets)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ntng_jax.data import tfds_source
from ntng_jax.data.errors import DataError
from ntng_jax.data.pipeline import holdout_split, take_chunks
from ntng_jax.data.shard_format import MANIFEST
from ntng_jax.data.shards import RowView, open_shards
from ntng_jax.data.sources import corpus_files, iter_documents
from ntng_jax.data.validation import HELDOUT


class ValidationResolver:
  """Turns a non-'heldout' validation source into ``(chunks [n, C], ids [n])`` with the run's
  tokenizer and chunk layout."""

  def __init__(
    self,
    tokenizer,
    family: str,
    chunk_len: int,
    append_ids: tuple,
    cache_dir: Path | None,
    tfds_options: dict | None = None,
  ):
    self.tok, self.family, self.chunk_len = tokenizer, family, int(chunk_len)
    self.append = tuple(int(a) for a in append_ids)
    self.cache_dir = cache_dir
    self.tfds_options = dict(tfds_options or {})
    self._memo: dict = {}

  def check(self, name: str, src: str) -> None:
    """Cheap up-front checks (path exists, shards compatible), so a bad source fails at
    start-up rather than at the first evaluation."""
    if src == HELDOUT or src.startswith("tfds:"):
      return
    p = Path(src).expanduser()
    if not p.exists():
      raise FileNotFoundError(
        f"Validation set '{name}' source '{src}' does not exist; "
        f"fix data.validation.{name} (a text/jsonl path, a shards "
        f"directory, 'heldout' or 'tfds:NAME[:SPLIT]')."
      )
    if (p / MANIFEST).is_file():
      self._shards(name, p)

  def __call__(self, name: str, src: str, max_chunks: int | None) -> tuple:
    key = (src, max_chunks)
    if key not in self._memo:
      self.check(name, src)
      if src.startswith("tfds:"):
        chunks = tfds_source.validation_chunks(
          src[5:], self.tok, self.chunk_len, self.append, max_chunks, **self.tfds_options
        )
        out = (chunks, np.arange(len(chunks)))
      elif (Path(src).expanduser() / MANIFEST).is_file():
        out = self._shards(name, Path(src).expanduser(), max_chunks)
      else:
        out = self._text(name, src, max_chunks)
      if len(out[0]) == 0:
        raise DataError(
          f"Validation set '{name}' ('{src}') has fewer tokens than one "
          f"chunk of {self.chunk_len}; give it more text."
        )
      self._memo[key] = out
    return self._memo[key]

  def _shards(self, name: str, directory: Path, max_chunks: int | None = None) -> tuple:
    m, tok, chunks = open_shards(directory)
    if tok.fingerprint != self.tok.fingerprint:
      raise DataError(
        f"Validation set '{name}': the shards in '{directory}' were tokenised "
        f"with tokenizer {tok.fingerprint} but the run uses "
        f"{self.tok.fingerprint}; re-prepare them with "
        f"--tokenizer=<the training shards directory>."
      )
    if m["chunk_len"] != self.chunk_len or m["family"] != self.family:
      raise DataError(
        f"Validation set '{name}': the shards in '{directory}' hold "
        f"{m['family']} chunks of {m['chunk_len']} tokens but the run needs "
        f"{self.family} chunks of {self.chunk_len}; re-prepare them with the "
        f"training --model and --seq_len."
      )
    h = m["holdout"]
    rows = (
      holdout_split(len(chunks), h["fraction"], h["seed"])[1]
      if h["num_heldout"]
      else np.arange(len(chunks))
    )
    if max_chunks is not None:
      rows = rows[:max_chunks]
    return RowView(chunks, rows), rows

  def _text(self, name: str, src: str, max_chunks: int | None) -> tuple:
    files = corpus_files(
      src, what=f"Validation set '{name}' source", fix=f"fix data.validation.{name}"
    )
    path = None
    if self.cache_dir is not None:
      stamp = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
      key = hashlib.sha256(
        repr((stamp, self.tok.fingerprint, self.chunk_len, self.append, max_chunks)).encode()
      ).hexdigest()[:16]
      path = self.cache_dir / f"validation-{key}.npy"
      if path.is_file():
        chunks = np.load(path)
        return chunks, np.arange(len(chunks))
    chunks = take_chunks(
      iter_documents(files), self.tok.encode_batch, self.chunk_len, self.append, max_chunks, 512
    )
    if path is not None and len(chunks):
      self.cache_dir.mkdir(parents=True, exist_ok=True)
      tmp = path.with_name(f".{path.name}.{os.getpid()}")
      with open(tmp, "wb") as f:
        np.save(f, chunks)
      os.replace(tmp, path)
    return chunks, np.arange(len(chunks))
