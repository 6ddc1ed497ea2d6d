"""Data: corpus -> tokenizer -> fixed-length chunks (with stable ids) -> objective -> batches.

``build_dataset(cfg.data, model_family, vocab_size, workdir)`` is the entry point; batches
follow the contract in ``docs/architecture.md``. Sources (``data.source``):

* ``'synthetic'``: the built-in Markov-chain corpus (``synthetic.py``);
* ``'text'``: a text/jsonl file or directory (``sources.py``), tokenised at start-up (cached);
* ``'shards'``: a directory written by ``python -m launch.prepare_data`` (``shards.py``):
  pre-tokenised, memory-mapped chunks plus the tokenizer, copied into ``workdir/tokenizer``;
* ``'tfds'``: a TFDS dataset by name, streamed (``tfds_source.py``, imported only then).

Named validation sets come from ``data.validation`` (``validation.py``). Nothing imported here
imports TensorFlow, seqio or TFDS: ``tfds_source`` and ``seqio_tasks`` are imported on use.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ntng_jax.data.errors import DataError
from ntng_jax.data.objectives import (
  causal_lm,
  compute_input_and_target_lengths,
  default_max_predictions,
  mask_for_mlm,
  reconstruct_from_span_corruption,
  span_corruption,
)
from ntng_jax.data.pipeline import (
  BatchIterator,
  Prefetcher,
  chunk_token_stream,
  epochs_seen,
  holdout_split,
  iter_chunk_blocks,
  limit_unique_tokens,
  unigram_entropy_nats,
)
from ntng_jax.data.sources import read_text_lines
from ntng_jax.data.synthetic import SyntheticCorpus
from ntng_jax.data.tokenizers import Tokenizer, default_num_sentinels, train_tokenizer
from ntng_jax.data.validation import (
  HELDOUT,
  ValidationResolver,
  apply_validation_overrides,
  fixed_batches,
  pop_validation_overrides,
  validation_spec,
)

__all__ = [
  "BatchIterator",
  "DataError",
  "Prefetcher",
  "Dataset",
  "SyntheticCorpus",
  "Tokenizer",
  "apply_validation_overrides",
  "build_dataset",
  "chunk_token_stream",
  "compute_input_and_target_lengths",
  "default_max_predictions",
  "default_num_sentinels",
  "holdout_split",
  "iter_chunk_blocks",
  "make_objective",
  "mask_for_mlm",
  "pop_validation_overrides",
  "read_text_lines",
  "reconstruct_from_span_corruption",
  "span_corruption",
  "train_tokenizer",
  "unigram_entropy_nats",
  "validation_spec", "epochs_seen",
]

_FAMILY_KIND = {"bert": "bert", "t5": "t5", "gpt": "gpt"}
SOURCES = ("synthetic", "text", "shards", "tfds")


@dataclasses.dataclass
class Dataset:
  """A tokenised, chunked corpus plus its objective.

  Attributes:
    family: 'bert' or 't5'. tokenizer: :class:`Tokenizer`.
    train_chunks / validation_chunks: int [N, C] array-likes (``np.ndarray``; for shards a
      ``RowView`` over memory-mapped uint16/uint32 shards), C = seq_len for BERT, the raw
      span-corruption length for T5; train_ids / validation_ids: int64 [N] chunk ids.
    objective: ``(rng, tokens [b, C]) -> batch dict`` (MLM or span corruption).
    unigram_entropy_nats: entropy of the training tokens (BERT: non-special tokens only),
      i.e. the loss a context-free model can reach, in nats/token.
    meta: source, tokenizer fingerprint, counts and lengths.
    validation_sources: ``{name: source}`` (see ``validation.py``), 'heldout' first.
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

  def _heldout_batches(
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
        out[name] = self._heldout_batches(name, batch_size, seed, max_batches)
        continue
      if self.resolver is None:
        raise DataError(
          f"Validation set '{name}' needs a resolver; build the dataset with build_dataset."
        )
      chunks, ids = self.resolver(name, src, max_chunks)
      out[name] = fixed_batches(chunks, ids, self.objective, batch_size, seed, max_batches)
    return out


def make_objective(cfg_data, kind: str, tok: Tokenizer) -> tuple[Callable, dict]:
  """The objective for ``kind`` and the chunk layout it needs: ``(objective, layout)`` with
  layout keys ``seq_len, chunk_len, targets_length, max_predictions, append_ids,
  noise_density, mean_noise_span_length``."""
  seq_len = int(_get(cfg_data, "seq_len", 128))
  nd = float(_get(cfg_data, "noise_density", 0.15))
  msl = float(_get(cfg_data, "mean_noise_span_length", 3.0))
  if kind == "gpt":  # chunks of seq_len + 1 tokens: inputs [:-1], next-token targets [1:]
    objective = causal_lm
    layout = dict(
      chunk_len=seq_len + 1, targets_length=None, max_predictions=None, append_ids=(tok.eos_id,)
    )
  elif kind == "bert":
    max_pred = int(_get(cfg_data, "max_predictions", 0)) or default_max_predictions(seq_len)
    objective = functools.partial(
      mask_for_mlm,
      special_ids=tuple(sorted(tok.special_ids)),
      mask_id=tok.mask_id,
      vocab_size=tok.random_token_high,
      max_predictions=max_pred,
    )
    layout = dict(
      chunk_len=seq_len, targets_length=None, max_predictions=max_pred, append_ids=(tok.sep_id,)
    )
  else:
    chunk_len, targets_len = compute_input_and_target_lengths(seq_len, nd, msl)
    objective = functools.partial(
      span_corruption,
      sentinel_ids=tok.sentinel_ids,
      eos_id=tok.eos_id,
      pad_id=tok.pad_id,
      noise_density=nd,
      mean_noise_span_length=msl,
      targets_length=targets_len,
    )
    layout = dict(
      chunk_len=chunk_len,
      targets_length=targets_len,
      max_predictions=None,
      append_ids=(tok.eos_id,),
    )
  layout.update(seq_len=seq_len, noise_density=nd, mean_noise_span_length=msl)
  return objective, layout


def _get(cfg, name: str, default):
  try:
    value = cfg.get(name, default)
  except AttributeError:
    value = getattr(cfg, name, default)
  return default if value is None else value


def _corpus_lines(cfg) -> tuple[list[str], str]:
  source = _get(cfg, "source", "synthetic")
  if source == "synthetic":
    corpus = SyntheticCorpus(seed=int(_get(cfg, "corpus_seed", 0)))
    return list(corpus.lines(int(_get(cfg, "num_lines", 20000)))), "synthetic"
  if source == "text":
    path = _get(cfg, "path", "")
    return read_text_lines(path), f"text:{path}"
  raise DataError(f"data.source must be one of {', '.join(SOURCES)}, got {source!r}.")


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


def build_dataset(
  cfg_data, model_family: str, vocab_size: int, workdir: str | os.PathLike | None
) -> Dataset:
  """Build the :class:`Dataset` for ``model_family`` ('bert' | 't5').

  ``cfg_data`` fields (ConfigDict or dict; missing ones take these defaults): ``source``
  ('synthetic' | 'text' | 'shards' | 'tfds'), ``path`` (file/dir, shards dir, or tfds name
  such as 'c4/en:3.1.0'), ``seq_len`` (BERT length / T5 encoder length), ``num_lines``,
  ``corpus_seed``, ``validation_fraction`` (0.02), ``validation`` ({name: source}, default
  {'heldout': 'heldout'}), ``max_predictions`` (0 = auto), ``noise_density`` (0.15),
  ``mean_noise_span_length`` (3.0), ``tokenizer_dir`` ('' = train and cache under
  ``workdir/tokenizer``; for shards: must match the shards' tokenizer if given), and for tfds
  ``tfds_data_dir`` ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets; gs:// works),
  ``tfds_split`` ('train'), ``tfds_text_key`` ('text'). Tokenised chunks of text corpora and
  validation files are cached under ``workdir/data_cache``.
  """
  if model_family not in _FAMILY_KIND:
    raise ValueError(f"model_family must be 'bert', 't5' or 'gpt', got {model_family!r}.")
  kind = _FAMILY_KIND[model_family]
  work = Path(workdir) if workdir else None
  source = _get(cfg_data, "source", "synthetic")
  if source not in SOURCES:
    raise DataError(f"data.source must be one of {', '.join(SOURCES)}, got {source!r}.")
  spec = validation_spec(cfg_data)
  if source == "shards":
    ds = _build_from_shards(cfg_data, kind, vocab_size, work)
  elif source == "tfds":
    from ntng_jax.data import tfds_source  # imported on use: needs tensorflow-datasets

    ds = tfds_source.build_tfds_dataset(cfg_data, kind, vocab_size, work)
  else:
    ds = _build_in_memory(cfg_data, kind, vocab_size, work)
  ds = limit_unique_tokens(ds, int(_get(cfg_data, "unique_tokens", 0)))
  ds.validation_sources = spec
  if ds.resolver is None:
    ds.resolver = ValidationResolver(
      ds.tokenizer,
      kind,
      ds.meta["chunk_len"],
      tuple(ds.meta["append_ids"]),
      work / "data_cache" if work else None,
      _tfds_options(cfg_data),
    )
  for name, src in spec.items():
    ds.resolver.check(name, src)
  return ds


def _tfds_options(cfg_data) -> dict:
  return dict(
    data_dir=_get(cfg_data, "tfds_data_dir", "") or None,
    text_key=_get(cfg_data, "tfds_text_key", "text"),
  )


def _load_or_train_tokenizer(cfg_data, kind, vocab_size, lines, work, **train_kwargs) -> Tokenizer:
  """``data.tokenizer_dir``'s tokenizer (checked against the model), or one trained on
  ``lines`` and cached under ``work/tokenizer``."""
  tok_dir = _get(cfg_data, "tokenizer_dir", "")
  if tok_dir:
    tok = Tokenizer.load(tok_dir)
    if tok.kind != kind or tok.vocab_size > vocab_size:
      raise DataError(
        f"Tokenizer in '{tok_dir}' is {tok.kind} with {tok.vocab_size} ids, "
        f"but the model needs {kind} with at most {vocab_size}; fix "
        f"data.tokenizer_dir or set it to '' to train one."
      )
    return tok
  return train_tokenizer(
    lines, kind, vocab_size, cache_dir=work / "tokenizer" if work else None, **train_kwargs
  )


def _build_in_memory(cfg_data, kind: str, vocab_size: int, work: Path | None) -> Dataset:
  lines, source = _corpus_lines(cfg_data)
  tok = _load_or_train_tokenizer(cfg_data, kind, vocab_size, lines, work)
  objective, lay = make_objective(cfg_data, kind, tok)
  chunk_len, append = lay["chunk_len"], lay["append_ids"]
  chunks = _tokenize_and_chunk(lines, tok, chunk_len, append, work / "data_cache" if work else None)
  if len(chunks) == 0:
    raise DataError(
      f"The corpus ({source}) has fewer tokens than one chunk of {chunk_len}; "
      f"use a larger corpus or a smaller data.seq_len."
    )
  frac = float(_get(cfg_data, "validation_fraction", 0.02))
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


def _build_from_shards(cfg_data, kind: str, vocab_size: int, work: Path | None) -> Dataset:
  from ntng_jax.data import shards as shards_lib

  path = _get(cfg_data, "path", "")
  manifest = shards_lib.read_manifest(path)
  seq_len = int(_get(cfg_data, "seq_len", 128))
  nd = float(_get(cfg_data, "noise_density", 0.15))
  msl = float(_get(cfg_data, "mean_noise_span_length", 3.0))
  tok_dir = _get(cfg_data, "tokenizer_dir", "")
  fp = Tokenizer.load(tok_dir).fingerprint if tok_dir else None
  shards_lib.check_compatible(manifest, path, kind, seq_len, vocab_size, nd, msl, fp)
  manifest, tok, chunks = shards_lib.open_shards(path)
  objective, lay = make_objective(cfg_data, kind, tok)
  if work is not None:
    shards_lib.install_tokenizer(tok, work, f"data.path='{path}'")
    shards_lib.copy_manifest(path, work)
  frac = float(_get(cfg_data, "validation_fraction", manifest["holdout"]["fraction"]))
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
