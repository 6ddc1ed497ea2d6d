"""Pre-tokenised, packed, memory-mapped chunk shards (``data.source='shards'``).

``prepare_shards`` (the engine of ``python -m launch.prepare_data``) tokenises a corpus once and
writes, into one directory::

    manifest.json            what was built, from what, how (written last: marks completion)
    spm.model                the SentencePiece model  } the tokenizer (``Tokenizer.load(DIR)``);
    tokenizer.json           its id layout            } training copies it into the workdir
    chunks-00000.npy ...     uint16 (vocab <= 65536) or uint32 [rows, chunk_len] arrays

Documents are tokenised, followed by ``<sep>`` (BERT, ``$A <sep>``) or ``</s>`` (T5),
concatenated in corpus order and cut into chunks of ``chunk_len`` tokens (BERT: ``seq_len``; T5:
the raw length that span-corrupts to ``seq_len`` inputs, ``compute_input_and_target_lengths``);
the tokens after the last full chunk are dropped. Chunk ``i`` (row ``i`` of the shards read in
order) has the stable global example id ``i``. The in-domain held-out split is
``holdout_split(num_chunks, fraction, seed)`` (``pipeline.py``); the manifest records the
fraction and seed used at preparation, training uses ``data.validation_fraction`` with that seed.

Manifest fields: ``format``, ``family``, ``sources`` (``[{path, bytes, sha256}]`` or a tfds
description), ``tokenizer`` (fingerprint, kind, vocab_size, num_pieces, num_sentinels, files),
``seq_len``, ``chunk_len``, ``targets_length`` (T5), ``noise_density``,
``mean_noise_span_length``, ``append_ids``, ``dtype``, ``shards`` (``[{file, num_chunks, bytes,
sha256}]``: sizes are checked whenever the shards are opened, token ids whenever rows are read,
checksums by ``verify_shards`` / ``launch.prepare_data --verify=DIR``),
``num_docs``, ``num_tokens`` (tokens in chunks), ``dropped_tokens``, ``num_chunks``,
``holdout`` (``{fraction, seed, num_heldout}``), ``unigram_entropy_nats`` (over all chunks;
BERT excludes special ids), ``created``, ``prepare_seconds``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from ntng_jax.data.errors import DataError
from ntng_jax.data.objectives import compute_input_and_target_lengths
from ntng_jax.data.pipeline import holdout_count, iter_chunk_blocks
from ntng_jax.data.sources import corpus_files, file_digest, iter_documents
from ntng_jax.data.tokenizers import (
  _META_FILE,
  _MODEL_FILE,
  Tokenizer,
  default_num_sentinels,
  train_tokenizer,
)

MANIFEST = "manifest.json"
FORMAT = "ntng_jax.shards/1"
DEFAULT_VOCAB = {"bert": 32768, "t5": 32100, "gpt": 50304}  # t5: 32000 pieces + 100 sentinels
DEFAULT_SEQ_LEN = {"bert": 128, "t5": 512, "gpt": 1024}
_PREPARE_HINT = "python -m launch.prepare_data --model=bert|t5|gpt --input=CORPUS --output=DIR"


# ----------------------------------------------------------------------------- reading
class ShardedChunks:
  """Rows of several ``[n_i, C]`` arrays (memory-mapped shards) as one ``[sum n_i, C]`` array.

  Supports ``len``, ``shape``, ``dtype`` and indexing by an int, a slice or an int array
  (only the requested rows are read; returned as a new ``np.ndarray``).
  """

  def __init__(
    self, arrays: list[np.ndarray], max_id: int | None = None, files: list[str] | None = None
  ):
    if not arrays:
      raise ValueError("ShardedChunks needs at least one array.")
    widths = {a.shape[1] for a in arrays}
    if len(widths) != 1:
      raise ValueError(f"shards have different chunk lengths {sorted(widths)}.")
    self.arrays = arrays
    # Rows read are checked to hold token ids < max_id (cheap): damaged shard bytes then stop
    # the run with the file's name instead of a NaN loss a few steps later.
    self.max_id, self.files = max_id, files
    self.offsets = np.cumsum([0] + [a.shape[0] for a in arrays])
    self.shape = (int(self.offsets[-1]), widths.pop())
    self.dtype = arrays[0].dtype

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, idx) -> np.ndarray:
    if isinstance(idx, (int, np.integer)):
      return self[np.asarray([idx])][0]
    if isinstance(idx, slice):
      idx = np.arange(*idx.indices(self.shape[0]))
    idx = np.asarray(idx, dtype=np.int64)
    if idx.ndim != 1:
      raise IndexError("ShardedChunks takes an int, a slice or a 1-D int array.")
    if len(self.arrays) == 1:
      return self._checked(np.asarray(self.arrays[0][idx]), idx)
    if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
      raise IndexError(f"row index out of range [0, {self.shape[0]}).")
    out = np.empty((idx.size, self.shape[1]), self.dtype)
    shard = np.searchsorted(self.offsets, idx, side="right") - 1
    for s in np.unique(shard):
      sel = np.nonzero(shard == s)[0]
      out[sel] = self.arrays[s][idx[sel] - self.offsets[s]]
    return self._checked(out, idx)

  def _checked(self, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
    if self.max_id is None or not rows.size or int(rows.max()) < self.max_id:
      return rows
    bad = int(np.nonzero((rows >= self.max_id).any(axis=1))[0][0])
    row = int(idx[bad])
    s = int(np.searchsorted(self.offsets, row, side="right") - 1)
    where = f"'{self.files[s]}'" if self.files else f"shard {s}"
    raise DataError(
      f"Shard file {where} holds token id {int(rows[bad].max())} in chunk "
      f"{row - int(self.offsets[s])}, outside the tokenizer's {self.max_id} ids "
      f"(the file is damaged); check the shards with `python -m "
      f"launch.prepare_data --verify=DIR` and rebuild them."
    )


class RowView:
  """Rows ``rows`` of an array-like ``base`` (``view[i] = base[rows[i]]``), without copying."""

  def __init__(self, base, rows: np.ndarray):
    self.base, self.rows = base, np.asarray(rows, dtype=np.int64)
    self.shape = (len(self.rows), base.shape[1])
    self.dtype = base.dtype

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, idx) -> np.ndarray:
    if isinstance(idx, (int, np.integer)):
      return np.asarray(self.base[np.asarray([self.rows[idx]])])[0]
    return np.asarray(self.base[self.rows[idx]])

  def __array__(self, dtype=None, copy=None):
    out = np.asarray(self.base[self.rows])
    return out if dtype is None else out.astype(dtype)


def chunk_layout(
  family: str, seq_len: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int | None]:
  """``(chunk_len, targets_length)``: BERT ``(seq_len, None)``; T5 the raw span-corruption
  length and target length for ``seq_len`` encoder inputs (512 -> (568, 114))."""
  if family == "bert":
    return int(seq_len), None
  if family == "gpt":  # causal LM: seq_len inputs and their seq_len next-token targets
    return int(seq_len) + 1, None
  if family == "t5":
    return compute_input_and_target_lengths(
      int(seq_len), float(noise_density), float(mean_noise_span_length)
    )
  raise ValueError(f"family must be 'bert', 't5' or 'gpt', got {family!r}.")


def read_manifest(directory: str | os.PathLike) -> dict:
  """The manifest of a shards directory; one-sentence errors when it is missing or broken."""
  d = Path(directory).expanduser()
  if not str(directory) or not d.exists():
    raise FileNotFoundError(
      f"Shards directory '{directory}' does not exist; build it with {_PREPARE_HINT}."
    )
  if not (d / MANIFEST).is_file():
    raise DataError(
      f"'{directory}' has no {MANIFEST} (not a prepare_data output, or its "
      f"preparation did not finish); rebuild it with {_PREPARE_HINT}."
    )
  try:
    m = json.loads((d / MANIFEST).read_text())
  except json.JSONDecodeError as e:
    raise DataError(f"{d / MANIFEST} is not valid JSON ({e}); rebuild the shards.") from None
  if m.get("format") != FORMAT:
    raise DataError(
      f"{d / MANIFEST} has format {m.get('format')!r}, this code reads "
      f"{FORMAT!r}; rebuild the shards with {_PREPARE_HINT}."
    )
  return m


def open_shards(directory: str | os.PathLike) -> tuple[dict, Tokenizer, ShardedChunks]:
  """``(manifest, tokenizer, chunks)`` of a shards directory; the shards are memory-mapped
  (``np.load(mmap_mode='r')``) and checked against the manifest."""
  d = Path(directory).expanduser()
  m = read_manifest(d)
  try:
    tok = Tokenizer.load(d)
  except (FileNotFoundError, ValueError) as e:
    raise DataError(
      f"The tokenizer in shards directory '{directory}' is unusable ({e}); rebuild the shards."
    ) from None
  if tok.fingerprint != m["tokenizer"]["fingerprint"]:
    raise DataError(
      f"The tokenizer in '{directory}' (fingerprint {tok.fingerprint}) is not "
      f"the one its shards were made with ({m['tokenizer']['fingerprint']}); "
      f"rebuild the shards."
    )
  arrays = []
  for s in m["shards"]:
    f = d / s["file"]
    if not f.is_file():
      raise DataError(f"Shard file '{f}' listed in the manifest is missing; rebuild the shards.")
    size = f.stat().st_size
    if "bytes" in s and size != s["bytes"]:
      raise DataError(
        f"Shard file '{f}' has {size} bytes but the manifest says "
        f"{s['bytes']} (truncated or overwritten); rebuild the shards."
      )
    try:
      a = np.load(f, mmap_mode="r")
    except ValueError as e:
      raise DataError(f"Shard file '{f}' is unreadable ({e}); rebuild the shards.") from None
    if a.shape != (s["num_chunks"], m["chunk_len"]) or a.dtype != np.dtype(m["dtype"]):
      raise DataError(
        f"Shard file '{f}' holds {a.dtype}{list(a.shape)} but the manifest "
        f"says {m['dtype']}[{s['num_chunks']}, {m['chunk_len']}]; rebuild "
        f"the shards."
      )
    arrays.append(a)
  if not arrays:
    raise DataError(
      f"Shards directory '{directory}' holds no chunks; prepare it from a larger corpus."
    )
  return (
    m,
    tok,
    ShardedChunks(
      arrays,
      max_id=int(m["tokenizer"]["vocab_size"]),
      files=[str(d / s["file"]) for s in m["shards"]],
    ),
  )


def verify_shards(directory: str | os.PathLike, log: Callable[[str], None] | None = None) -> dict:
  """Checks every shard file of a shards directory against the sizes and sha256 checksums in its
  manifest (reads every byte; ``python -m launch.prepare_data --verify=DIR``); returns the
  manifest, or raises a one-sentence :class:`DataError` naming the first damaged file."""
  log = log or (lambda s: None)
  m, _, _ = open_shards(directory)  # manifest, tokenizer, sizes and headers
  d = Path(directory).expanduser()
  unchecked = [s["file"] for s in m["shards"] if "sha256" not in s]
  if unchecked:
    raise DataError(
      f"The manifest of '{directory}' records no checksums (shards prepared by "
      f"an older version); rebuild the shards with {_PREPARE_HINT} to be able "
      f"to verify them."
    )
  for s in m["shards"]:
    digest = file_digest(d / s["file"])
    if digest["sha256"] != s["sha256"]:
      raise DataError(
        f"Shard file '{d / s['file']}' does not match the checksum in the "
        f"manifest (its bytes were changed after preparation); rebuild the "
        f"shards with {_PREPARE_HINT}."
      )
    log(f"  {s['file']}: {s['num_chunks']:,} chunks, {digest['bytes']:,} bytes, sha256 ok")
  log(f"All {len(m['shards'])} shard file(s) in {d} match their manifest.")
  return m


def nonfinite_loss_hint(cfg_data, step: int, first_steps: int = 20) -> str:
  """What to suspect besides the optimizer when the loss turns non-finite at `step` (a clause
  for the trainer's message; '' if nothing): damaged shards early in a run from shards."""
  if step > first_steps or _get(cfg_data, "source") != "shards":
    return ""
  return (
    f"; a non-finite loss this early can also mean damaged data: check the shards with "
    f"`python -m launch.prepare_data --verify={_get(cfg_data, 'path')}`"
  )


def _get(cfg, key):
  return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)


def check_compatible(
  manifest: dict,
  directory,
  family: str,
  seq_len: int,
  model_vocab: int,
  noise_density: float = 0.15,
  mean_noise_span_length: float = 3.0,
  tokenizer_fingerprint: str | None = None,
  what: str = "data.path",
) -> None:
  """Raise a one-sentence :class:`DataError` if shards don't fit the model/config."""
  m = manifest
  if m["family"] != family:
    raise DataError(
      f"The shards in {what}='{directory}' were prepared for {m['family']} but "
      f"model.family is {family}; prepare them with --model={family}."
    )
  chunk_len, _ = chunk_layout(family, seq_len, noise_density, mean_noise_span_length)
  if m["chunk_len"] != chunk_len:
    need = (
      f"data.seq_len={seq_len} needs {chunk_len}"
      if family == "bert"
      else f"data.seq_len={seq_len} (noise_density {noise_density}, mean span "
      f"{mean_noise_span_length}) needs raw chunks of {chunk_len}"
    )
    raise DataError(
      f"The shards in {what}='{directory}' hold chunks of {m['chunk_len']} "
      f"tokens (prepared with --seq_len={m['seq_len']}) but {need}; set "
      f"data.seq_len={m['seq_len']} or rerun prepare_data with "
      f"--seq_len={seq_len}."
    )
  vocab = m["tokenizer"]["vocab_size"]
  if vocab > model_vocab:
    raise DataError(
      f"The shards in {what}='{directory}' use a tokenizer with {vocab} ids but "
      f"model.vocab_size is {model_vocab}; raise model.vocab_size to at least "
      f"{vocab} or rerun prepare_data with --vocab_size={model_vocab}."
    )
  if tokenizer_fingerprint is not None and tokenizer_fingerprint != m["tokenizer"]["fingerprint"]:
    raise DataError(
      f"The shards in {what}='{directory}' were tokenised with tokenizer "
      f"{m['tokenizer']['fingerprint']} but data.tokenizer_dir holds "
      f"{tokenizer_fingerprint}; point data.tokenizer_dir at the shards "
      f"directory (or set it to '') or re-prepare the shards with "
      f"--tokenizer=that tokenizer."
    )


# ----------------------------------------------------------------------------- writing
class _ShardWriter:
  """Buffers rows and writes ``chunks-XXXXX.npy`` files of ``rows_per_shard`` rows."""

  def __init__(self, directory: Path, chunk_len: int, dtype, rows_per_shard: int):
    self.dir, self.dtype = directory, np.dtype(dtype)
    self.rows = max(1, int(rows_per_shard))
    self.buf = np.empty((self.rows, chunk_len), self.dtype)
    self.fill = 0
    self.shards: list[dict] = []

  def add(self, chunks: np.ndarray) -> None:
    i = 0
    while i < len(chunks):
      take = min(len(chunks) - i, self.rows - self.fill)
      self.buf[self.fill : self.fill + take] = chunks[i : i + take]
      self.fill += take
      i += take
      if self.fill == self.rows:
        self._flush()

  def _flush(self) -> None:
    if not self.fill:
      return
    name = f"chunks-{len(self.shards):05d}.npy"
    fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{name}.")
    with os.fdopen(fd, "wb") as f:
      np.save(f, self.buf[: self.fill])
    os.chmod(tmp, 0o644)
    os.replace(tmp, self.dir / name)
    digest = file_digest(self.dir / name)
    self.shards.append(
      {
        "file": name,
        "num_chunks": int(self.fill),
        "bytes": digest["bytes"],
        "sha256": digest["sha256"],
      }
    )
    self.fill = 0

  def close(self) -> list[dict]:
    self._flush()
    return self.shards


def _stride_sample(docs: Iterable[str], every: int, max_chars: int) -> list[str]:
  out, total = [], 0
  for i, doc in enumerate(docs):
    if i % every == 0:
      out.append(doc)
      total += len(doc)
      if total >= max_chars:
        break
  return out


def _resolve_input(
  input_path: str,
  *,
  tfds_data_dir: str | None = None,
  tfds_text_key: str = "text",
  max_docs: int = 0,
) -> tuple[Callable[[], Iterator[str]], list[dict] | dict, int]:
  """``(docs_factory, sources, approx_total_chars)`` of ``input_path``: a text/jsonl file or
  directory, or ``tfds:NAME[:SPLIT]`` (streamed; needs tensorflow-datasets)."""
  if str(input_path).startswith("tfds:"):
    from ntng_jax.data import tfds_source  # imported on use: needs tensorflow-datasets

    name, split = tfds_source.parse_tfds_spec(str(input_path)[5:])
    info = tfds_source.describe(name, split, data_dir=tfds_data_dir)

    def factory():
      docs = tfds_source.iter_documents(name, split, data_dir=tfds_data_dir, text_key=tfds_text_key)
      return _limit(docs, max_docs)

    return factory, info, 0
  files = corpus_files(
    input_path, what="Input", fix="pass --input=a text/jsonl file or a directory of them"
  )
  sources = [file_digest(f) for f in files]
  if not files or sum(s["bytes"] for s in sources) == 0:
    raise DataError(
      f"Input '{input_path}' contains no text ({len(files)} .txt/.jsonl "
      f"file(s), all empty); pass a non-empty corpus."
    )
  total = sum(s["bytes"] for s in sources)
  if max_docs:  # only a prefix is used: measure it, so the tokenizer sample spans it evenly
    total = sum(len(d) for d in _limit(iter_documents(files), max_docs))
  return (lambda: _limit(iter_documents(files), max_docs)), sources, total


def _limit(docs: Iterator[str], max_docs: int) -> Iterator[str]:
  if not max_docs:
    return docs
  import itertools

  return itertools.islice(docs, max_docs)


def prepare_shards(
  input_path: str,
  output_dir: str | os.PathLike,
  family: str,
  *,
  vocab_size: int | None = None,
  seq_len: int | None = None,
  tokenizer: str | os.PathLike | None = None,
  num_sentinels: int | None = None,
  holdout_fraction: float = 0.02,
  holdout_seed: int = 0,
  noise_density: float = 0.15,
  mean_noise_span_length: float = 3.0,
  tokenizer_train_chars: int = 20_000_000,
  shard_mb: float = 256.0,
  batch_docs: int = 2048,
  max_docs: int = 0,
  overwrite: bool = False,
  tfds_data_dir: str | None = None,
  tfds_text_key: str = "text",
  log: Callable[[str], None] | None = None,
) -> dict:
  """Tokenise ``input_path`` once into shards in ``output_dir``; returns the manifest.

  Args:
    input_path: text/jsonl file or directory (see ``sources.py``), or ``tfds:NAME[:SPLIT]``.
    family: 'bert' or 't5'.
    vocab_size: ids the tokenizer may emit (BERT default 32768; T5 default 32100 = 32000
      pieces + 100 sentinels). Ignored with ``tokenizer``.
    seq_len: BERT sequence length (128) / T5 encoder input length (512).
    tokenizer: an existing SentencePiece ``.model`` file (see
      ``Tokenizer.from_sentencepiece``) or a tokenizer directory (``spm.model`` +
      ``tokenizer.json``, e.g. another shards directory); default: train one on an even
      sample of ``tokenizer_train_chars`` characters of the corpus.
    holdout_fraction, holdout_seed: the recorded in-domain held-out split.
    shard_mb: target size of one shard file.
    max_docs: stop after this many documents (0 = all).
  """
  t0 = time.time()
  log = log or (lambda s: None)
  if family not in ("bert", "t5", "gpt"):
    raise DataError(f"--model must be 'bert', 't5' or 'gpt', got {family!r}.")
  out = Path(output_dir).expanduser()
  if (out / MANIFEST).exists() and not overwrite:
    raise DataError(
      f"'{out}' already holds shards ({MANIFEST}); pass --overwrite or choose another --output."
    )
  if not 0 <= holdout_fraction < 1:
    raise DataError(f"--holdout_fraction must be in [0, 1), got {holdout_fraction}.")
  seq_len = int(seq_len or DEFAULT_SEQ_LEN[family])
  chunk_len, targets_len = chunk_layout(family, seq_len, noise_density, mean_noise_span_length)
  docs_factory, sources, total_chars = _resolve_input(
    input_path, tfds_data_dir=tfds_data_dir, tfds_text_key=tfds_text_key, max_docs=max_docs
  )

  # Tokenizer.
  if tokenizer:
    tok = _load_tokenizer(tokenizer, family, num_sentinels)
    log(f"Loaded tokenizer {tok} from {tokenizer}.")
  else:
    vocab = int(vocab_size or DEFAULT_VOCAB[family])
    every = max(1, math.ceil(total_chars / tokenizer_train_chars)) if total_chars else 1
    sample = _stride_sample(docs_factory(), every, tokenizer_train_chars)
    if not sample:
      raise DataError(f"Input '{input_path}' contains no text; pass a non-empty corpus.")
    log(
      f"Training a {family} tokenizer ({vocab} ids) on {len(sample):,} documents "
      f"({sum(map(len, sample)):,} characters)."
    )
    tok = train_tokenizer(
      sample, family, vocab, num_sentinels=num_sentinels, max_train_chars=2 * tokenizer_train_chars
    )
    if family == "t5" and tok.num_pieces + tok.num_sentinels < tok.vocab_size:
      tok = Tokenizer(
        tok.model_proto, "t5", tok.num_pieces + tok.num_sentinels, tok.num_sentinels
      )  # tight: sentinels right after the pieces
  append = (tok.sep_id,) if family == "bert" else (tok.eos_id,)
  dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32

  # Tokenise, chunk, write (into a fresh directory; the manifest goes last).
  out.mkdir(parents=True, exist_ok=True)
  for old in list(out.glob("chunks-*.npy")) + [out / MANIFEST]:
    old.unlink(missing_ok=True)
  rows = max(1, int(shard_mb * 2**20 / (chunk_len * np.dtype(dtype).itemsize)))
  writer = _ShardWriter(out, chunk_len, dtype, rows)
  counts = np.zeros(tok.vocab_size, np.int64)
  num_docs = num_chunks = streamed = 0
  next_log = time.time() + 30
  for block, num_docs, streamed in iter_chunk_blocks(
    docs_factory(), tok.encode_batch, chunk_len, append, batch_docs
  ):
    if len(block):
      writer.add(block)
      counts += np.bincount(block.ravel(), minlength=tok.vocab_size)[: tok.vocab_size]
      num_chunks += len(block)
    if time.time() > next_log:
      log(f"  {num_docs:,} documents, {num_chunks:,} chunks, {time.time() - t0:.0f} s")
      next_log = time.time() + 30
  shards = writer.close()
  if num_docs == 0:
    raise DataError(
      f"Input '{input_path}' contains no documents (no non-empty lines or "
      f"records); pass a non-empty corpus."
    )
  if num_chunks == 0:
    raise DataError(
      f"Input '{input_path}' has fewer tokens than one chunk of {chunk_len}; "
      f"pass a larger corpus or a smaller --seq_len."
    )
  total_tokens = int(counts.sum())
  tok.save(out)
  exclude = sorted(tok.special_ids) if family == "bert" else []
  c = counts.astype(np.float64)
  c[exclude] = 0.0
  p = c[c > 0] / c.sum()
  manifest = dict(
    format=FORMAT,
    family=family,
    sources=sources if isinstance(sources, list) else [sources],
    tokenizer=dict(
      fingerprint=tok.fingerprint,
      kind=tok.kind,
      vocab_size=tok.vocab_size,
      num_pieces=tok.num_pieces,
      num_sentinels=tok.num_sentinels,
      files=[_MODEL_FILE, _META_FILE],
      origin=str(tokenizer) if tokenizer else "trained on the input",
    ),
    seq_len=seq_len,
    chunk_len=chunk_len,
    targets_length=targets_len,
    noise_density=noise_density,
    mean_noise_span_length=mean_noise_span_length,
    append_ids=[int(a) for a in append],
    dtype=np.dtype(dtype).name,
    shards=shards,
    num_docs=int(num_docs),
    num_tokens=total_tokens,
    dropped_tokens=int(streamed - total_tokens),
    num_chunks=int(num_chunks),
    holdout=dict(
      fraction=float(holdout_fraction),
      seed=int(holdout_seed),
      num_heldout=holdout_count(num_chunks, holdout_fraction),
    ),
    unigram_entropy_nats=float(-(p * np.log(p)).sum()),
    created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    prepare_seconds=round(time.time() - t0, 2),
  )
  fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{MANIFEST}.")
  with os.fdopen(fd, "w") as f:
    json.dump(manifest, f, indent=1)
  os.chmod(tmp, 0o644)
  os.replace(tmp, out / MANIFEST)
  log(
    f"Wrote {num_chunks:,} chunks of {chunk_len} tokens ({total_tokens:,} tokens from "
    f"{num_docs:,} documents) in {len(shards)} shard(s) to {out} in "
    f"{time.time() - t0:.1f} s."
  )
  return manifest


def _load_tokenizer(path: str | os.PathLike, family: str, num_sentinels: int | None) -> Tokenizer:
  p = Path(path).expanduser()
  if not p.exists():
    raise FileNotFoundError(
      f"Tokenizer '{path}' does not exist; pass --tokenizer=a "
      f"SentencePiece .model file or a tokenizer directory."
    )
  if p.is_dir():
    tok = Tokenizer.load(p)
    if tok.kind != family:
      raise DataError(
        f"Tokenizer in '{path}' is for {tok.kind}, not {family}; pass a {family} tokenizer."
      )
    return tok
  try:
    return Tokenizer.from_sentencepiece(p, family, num_sentinels)
  except (RuntimeError, OSError) as e:
    raise DataError(
      f"'{path}' is not a SentencePiece model ({e}); pass a .model file written by SentencePiece."
    ) from None


def install_tokenizer(tok: Tokenizer, workdir: str | os.PathLike, source: str) -> None:
  """Copy the run's tokenizer into ``workdir/tokenizer`` (so it travels with checkpoints);
  refuse if the workdir already holds a different one (a resumed run changed its data)."""
  d = Path(workdir) / "tokenizer"
  meta = d / _META_FILE
  if meta.is_file():
    old = json.loads(meta.read_text()).get("fingerprint")
    if old != tok.fingerprint:
      raise DataError(
        f"Workdir '{workdir}' was trained with tokenizer {old} but {source} "
        f"uses {tok.fingerprint}; use a new --workdir or the original data."
      )
    return
  tok.save(d)


def copy_manifest(directory: str | os.PathLike, workdir: str | os.PathLike) -> None:
  """Keep a copy of the shards manifest in the workdir (``data_manifest.json``)."""
  Path(workdir).mkdir(parents=True, exist_ok=True)
  shutil.copyfile(Path(directory) / MANIFEST, Path(workdir) / "data_manifest.json")


__all__ = [
  "DEFAULT_SEQ_LEN",
  "DEFAULT_VOCAB",
  "MANIFEST",
  "RowView",
  "ShardedChunks",
  "check_compatible",
  "chunk_layout",
  "copy_manifest",
  "install_tokenizer",
  "open_shards",
  "prepare_shards",
  "read_manifest",
  "default_num_sentinels",
  "verify_shards",
  "nonfinite_loss_hint",
]
