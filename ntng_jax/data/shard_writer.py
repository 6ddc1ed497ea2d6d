"""Writing a shards directory: ``prepare_shards`` tokenises a corpus once (the engine of
``python -m launch.prepare_data``); the format is in ``shard_format.py``.

Documents are tokenised, followed by ``<sep>`` (BERT) or ``</s>`` (T5, GPT), concatenated in
corpus order and cut into chunks of ``chunk_len`` tokens (``layout.chunk_layout``); the tokens
after the last full chunk are dropped. The manifest goes last (marks completion).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from ntng_jax.data import tfds_source
from ntng_jax.data.errors import DataError
from ntng_jax.data.layout import chunk_layout
from ntng_jax.data.pipeline import holdout_count, iter_chunk_blocks
from ntng_jax.data.shard_format import FORMAT, MANIFEST
from ntng_jax.data.sources import corpus_files, file_digest, iter_documents
from ntng_jax.data.spec import default
from ntng_jax.data.tokenizers import META_FILE, MODEL_FILE, Tokenizer, train_tokenizer

DEFAULT_VOCAB = {"bert": 32768, "t5": 32100, "gpt": 50304}  # t5: 32000 pieces + 100 sentinels
DEFAULT_SEQ_LEN = {"bert": 128, "t5": 512, "gpt": 1024}
TOKENIZER_TRAIN_CHARS = 20_000_000  # characters sampled evenly to train a tokenizer
SHARD_MB = 256.0  # target size of one shard file


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
  holdout_fraction: float = default("validation_fraction"),
  holdout_seed: int = 0,
  noise_density: float = default("noise_density"),
  mean_noise_span_length: float = default("mean_noise_span_length"),
  tokenizer_train_chars: int = TOKENIZER_TRAIN_CHARS,
  shard_mb: float = SHARD_MB,
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
    family: 'bert', 't5' or 'gpt'.
    vocab_size: ids the tokenizer may emit (BERT default 32768; T5 default 32100 = 32000
      pieces + 100 sentinels). Ignored with ``tokenizer``.
    seq_len: BERT sequence length / T5 encoder input length (default ``DEFAULT_SEQ_LEN``).
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
      files=[MODEL_FILE, META_FILE],
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
