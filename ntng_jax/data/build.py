"""``build_dataset``: the :class:`Dataset` of a data config, one builder per ``data.source``
('synthetic' and 'text' in memory, 'shards' memory-mapped, 'tfds' streamed), each receiving
the :class:`DataSpec` read once at the entry."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from ntng_jax.data import shards as shards_lib
from ntng_jax.data import tfds_source
from ntng_jax.data.dataset import Dataset
from ntng_jax.data.errors import DataError
from ntng_jax.data.layout import make_objective
from ntng_jax.data.pipeline import (
  chunk_token_stream,
  holdout_split,
  limit_unique_tokens,
  unigram_entropy_nats,
)
from ntng_jax.data.resolver import ValidationResolver
from ntng_jax.data.sources import read_text_lines
from ntng_jax.data.spec import DataSpec, as_spec
from ntng_jax.data.streaming import build_stream_dataset
from ntng_jax.data.synthetic import SyntheticCorpus
from ntng_jax.data.tokenizers import Tokenizer, load_or_train_tokenizer

FAMILIES = ("bert", "t5", "gpt")


def build_dataset(
  cfg_data, model_family: str, vocab_size: int, workdir: str | os.PathLike | None
) -> Dataset:
  """The :class:`Dataset` for ``model_family`` ('bert' | 't5' | 'gpt').

  ``cfg_data``: config.data (a ConfigDict or mapping; missing fields take the defaults of
  :class:`DataSpec`) or a ``DataSpec``. Tokenisers trained here are cached under
  ``workdir/tokenizer``, tokenised chunks of text corpora and validation files under
  ``workdir/data_cache``.
  """
  if model_family not in FAMILIES:
    raise ValueError(f"model_family must be 'bert', 't5' or 'gpt', got {model_family!r}.")
  spec = as_spec(cfg_data)
  work = Path(workdir) if workdir else None
  if spec.source == "shards":
    ds = _build_from_shards(spec, model_family, vocab_size, work)
  elif spec.source == "tfds":
    ds = _build_tfds(spec, model_family, vocab_size, work)
  else:
    ds = _build_in_memory(spec, model_family, vocab_size, work)
  ds = limit_unique_tokens(ds, spec.unique_tokens)
  ds.validation_sources = dict(spec.validation)
  if ds.resolver is None:
    ds.resolver = ValidationResolver(
      ds.tokenizer,
      model_family,
      ds.meta["chunk_len"],
      tuple(ds.meta["append_ids"]),
      work / "data_cache" if work else None,
      spec.tfds_options,
    )
  for name, src in spec.validation.items():
    ds.resolver.check(name, src)
  return ds


def _corpus_lines(spec: DataSpec) -> tuple[list[str], str]:
  if spec.source == "synthetic":
    corpus = SyntheticCorpus(seed=spec.corpus_seed)
    return list(corpus.lines(spec.num_lines)), "synthetic"
  return read_text_lines(spec.path), f"text:{spec.path}"


def _tokenize_and_chunk(
  lines: list[str], tok: Tokenizer, chunk_len: int, append: tuple, cache_dir: Path | None
) -> np.ndarray:
  """Chunks int32 [N, chunk_len]; cached as .npy under ``cache_dir`` keyed by corpus text,
  tokenizer fingerprint, chunk length and separator ids."""
  path = None
  if cache_dir is not None:
    h = hashlib.sha256()
    for s in lines:
      h.update(s.encode("utf-8"))
      h.update(b"\n")
    key = hashlib.sha256(
      f"{h.hexdigest()}|{tok.fingerprint}|{chunk_len}|{append}".encode()
    ).hexdigest()[:16]
    path = cache_dir / f"chunks-{key}.npy"
    if path.is_file():
      return np.load(path)
  chunks = chunk_token_stream(tok.encode_batch(lines), chunk_len, append)
  if path is not None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".chunks.", suffix=".npy")
    with os.fdopen(fd, "wb") as f:
      np.save(f, chunks)
    os.replace(tmp, path)
  return chunks


def _build_in_memory(spec: DataSpec, kind: str, vocab_size: int, work: Path | None) -> Dataset:
  lines, source = _corpus_lines(spec)
  tok = load_or_train_tokenizer(
    spec.tokenizer_dir, kind, vocab_size, lines, work / "tokenizer" if work else None
  )
  objective, lay = make_objective(spec, kind, tok)
  chunk_len, append = lay["chunk_len"], lay["append_ids"]
  chunks = _tokenize_and_chunk(lines, tok, chunk_len, append, work / "data_cache" if work else None)
  if len(chunks) == 0:
    raise DataError(
      f"The corpus ({source}) has fewer tokens than one chunk of {chunk_len}; "
      f"use a larger corpus or a smaller data.seq_len."
    )
  frac = spec.validation_fraction
  train_ids, val_ids = holdout_split(len(chunks), frac, seed=0)
  train_chunks, val_chunks = chunks[train_ids], chunks[val_ids]
  exclude = sorted(tok.special_ids) if kind == "bert" else ()
  meta = dict(
    source=source,
    family=kind,
    tokenizer_fingerprint=tok.fingerprint,
    vocab_size=tok.vocab_size,
    num_pieces=tok.num_pieces,
    num_lines=len(lines),
    num_tokens=int(chunks.size),
    num_chunks=len(chunks),
    num_train=len(train_ids),
    num_validation=len(val_ids),
    validation_fraction=frac,
    **lay,
  )
  return Dataset(
    family=kind,
    tokenizer=tok,
    train_chunks=train_chunks,
    validation_chunks=val_chunks,
    train_ids=train_ids,
    validation_ids=val_ids,
    objective=objective,
    unigram_entropy_nats=unigram_entropy_nats(train_chunks, tok.vocab_size, exclude),
    meta=meta,
  )


def _build_from_shards(spec: DataSpec, kind: str, vocab_size: int, work: Path | None) -> Dataset:
  path = spec.path
  manifest = shards_lib.read_manifest(path)
  fp = Tokenizer.load(spec.tokenizer_dir).fingerprint if spec.tokenizer_dir else None
  shards_lib.check_compatible(
    manifest,
    path,
    kind,
    spec.seq_len,
    vocab_size,
    spec.noise_density,
    spec.mean_noise_span_length,
    fp,
  )
  manifest, tok, chunks = shards_lib.open_shards(path)
  objective, lay = make_objective(spec, kind, tok)
  if work is not None:
    shards_lib.install_tokenizer(tok, work, f"data.path='{path}'")
    shards_lib.copy_manifest(path, work)
  frac = spec.validation_fraction
  train_ids, val_ids = holdout_split(len(chunks), frac, seed=manifest["holdout"]["seed"])
  meta = dict(
    source=f"shards:{path}",
    family=kind,
    tokenizer_fingerprint=tok.fingerprint,
    vocab_size=tok.vocab_size,
    num_pieces=tok.num_pieces,
    num_docs=manifest["num_docs"],
    num_tokens=manifest["num_tokens"],
    num_chunks=len(chunks),
    num_train=len(train_ids),
    num_validation=len(val_ids),
    validation_fraction=frac,
    holdout_seed=manifest["holdout"]["seed"],
    dtype=manifest["dtype"],
    **lay,
  )
  return Dataset(
    family=kind,
    tokenizer=tok,
    train_chunks=shards_lib.RowView(chunks, train_ids),
    validation_chunks=shards_lib.RowView(chunks, val_ids),
    train_ids=train_ids,
    validation_ids=val_ids,
    objective=objective,
    unigram_entropy_nats=float(manifest["unigram_entropy_nats"]),
    meta=meta,
  )


def _build_tfds(spec: DataSpec, kind: str, vocab_size: int, work: Path | None) -> Dataset:
  """The streamed dataset of the TFDS dataset ``data.path`` (split from the name, else
  ``data.tfds_split``)."""
  name, split = tfds_source.parse_tfds_spec(spec.path)
  split = split or spec.tfds_split
  opts = spec.tfds_options
  tfds_source.builder(name, opts["data_dir"])  # fail early, in one sentence, on a wrong name

  def share_docs(process_index: int, process_count: int, start: int):
    return tfds_source.iter_documents(
      name, split, opts["data_dir"], opts["text_key"], process_index, process_count, start
    )

  return build_stream_dataset(
    spec, kind, vocab_size, work, share_docs=share_docs, source=f"tfds:{name}:{split}"
  )
