"""Named validation sets: ``data.validation = {name: source}``.

A source is

* ``'heldout'``: the in-domain split carved deterministically from the training source with
  ``data.validation_fraction`` (``holdout_split`` for text/synthetic/shards; a hashed document
  selection for streamed tfds data, see ``streaming.py``);
* a text/jsonl file or directory: tokenised with the run's tokenizer and chunked exactly like
  the training data (cached under ``workdir/data_cache``);
* a shards directory (``launch.prepare_data`` output, recognised by its ``manifest.json``): its
  recorded held-out split, or all its chunks if it was prepared with ``--holdout_fraction=0``;
  it must have been tokenised with the run's tokenizer (``--tokenizer=<the training shards
  directory>``);
* ``'tfds:NAME[:SPLIT]'`` (e.g. ``'tfds:c4/en:3.1.0:validation'``, the paper's T5 validation
  data): streamed from TFDS (needs tensorflow-datasets).

Sources named ``'heldout'`` come first (the trainer logs the first set as ``validation_loss``),
then the others in the order given. Without the field the sets are ``{'heldout': 'heldout'}``.

The command line cannot add keys to a locked ConfigDict, so ``--config.data.validation.NAME=SRC``
flags for new names are taken out of ``argv`` by :func:`pop_validation_overrides` before absl
parses it, and applied with :func:`apply_validation_overrides`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ntng_jax.data.errors import DataError
from ntng_jax.data.pipeline import BatchIterator, holdout_split, iter_chunk_blocks
from ntng_jax.data.sources import corpus_files, iter_documents

HELDOUT = "heldout"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_FLAG = "--config.data.validation."


def validation_spec(cfg_data) -> dict[str, str]:
  """``{name: source}`` from ``data.validation`` (a mapping / ConfigDict, or a string
  ``'name=source,name=source'``), ``'heldout'`` sources first; default ``{'heldout':
  'heldout'}`` when the field is missing, None or empty."""
  try:
    raw = cfg_data.get("validation", None)
  except AttributeError:
    raw = getattr(cfg_data, "validation", None)
  if raw is None or (isinstance(raw, str) and not raw.strip()):
    return {HELDOUT: HELDOUT}
  if isinstance(raw, str):
    items = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
      name, sep, src = part.partition("=")
      items.append(
        (name.strip(), src.strip())
        if sep
        else ((HELDOUT, HELDOUT) if part == HELDOUT else (Path(part).stem, part))
      )
  elif isinstance(raw, Mapping) or hasattr(raw, "items"):
    items = [(str(k), v) for k, v in raw.items()]
    if not items:
      return {HELDOUT: HELDOUT}
  else:
    raise DataError(
      f"data.validation must be a mapping {{name: source}} or a string "
      f"'name=source,...', got {type(raw).__name__}."
    )
  spec: dict[str, str] = {}
  for name, src in items:
    if not _NAME.match(name):
      raise DataError(
        f"data.validation name {name!r} is not a simple name (letters, digits, _ . -); rename it."
      )
    if not isinstance(src, str) or not src:
      raise DataError(
        f"data.validation.{name} must be 'heldout', a text/jsonl path, a "
        f"shards directory or 'tfds:NAME[:SPLIT]', got {src!r}."
      )
    spec[name] = src
  first = {k: v for k, v in spec.items() if v == HELDOUT}
  return {**first, **{k: v for k, v in spec.items() if v != HELDOUT}}


def pop_validation_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  """Split ``--config.data.validation.NAME=SRC`` (or ``... NAME SRC``) out of ``argv``.

  Returns ``(remaining argv, {NAME: SRC})``. Use before absl parses flags, then
  :func:`apply_validation_overrides` on the parsed config.
  """
  rest, found = [], {}
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(_FLAG):
      key, sep, value = arg[len(_FLAG) :].partition("=")
      if not sep:
        if i + 1 >= len(argv):
          raise DataError(f"{arg} needs a value (a source for validation set '{key}').")
        value = argv[i + 1]
        i += 1
      found[key] = value
    else:
      rest.append(arg)
    i += 1
  return rest, found


def apply_validation_overrides(config, overrides: Mapping[str, str]) -> None:
  """Add/replace ``config.data.validation[NAME] = SRC`` on a (possibly locked) ConfigDict."""
  if not overrides:
    return
  import ml_collections

  with config.unlocked():
    current = config.data.get("validation", None)
    if current is None or isinstance(current, str):
      merged = {} if not current else dict(validation_spec(config.data))
      config.data.validation = ml_collections.ConfigDict({**merged, **dict(overrides)})
    else:
      for name, src in overrides.items():
        config.data.validation[name] = src


# ----------------------------------------------------------------------------- batches
def fixed_batches(
  chunks, ids: np.ndarray, objective, batch_size: int, seed: int = 0, max_batches: int | None = None
) -> list[dict]:
  """Full global batches over ``chunks`` in order with masks/spans fixed by ``seed``
  (identical on every call); one batch of all chunks if there are fewer than
  ``batch_size``."""
  n = len(chunks)
  bs = min(batch_size, n)
  it = BatchIterator(chunks, bs, objective, seed=seed, shuffle=False, example_ids=ids)
  count = it.batches_per_epoch if max_batches is None else min(max_batches, it.batches_per_epoch)
  return [it.batch_at(0, i) for i in range(count)]


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
    if (p / "manifest.json").is_file():
      self._shards(name, p)

  def __call__(self, name: str, src: str, max_chunks: int | None) -> tuple:
    key = (src, max_chunks)
    if key not in self._memo:
      self.check(name, src)
      if src.startswith("tfds:"):
        from ntng_jax.data import tfds_source  # needs tensorflow-datasets

        chunks = tfds_source.validation_chunks(
          src[5:], self.tok, self.chunk_len, self.append, max_chunks, **self.tfds_options
        )
        out = (chunks, np.arange(len(chunks)))
      elif (Path(src).expanduser() / "manifest.json").is_file():
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
    from ntng_jax.data.shards import RowView, open_shards

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
    blocks, have = [], 0
    for block, _, _ in iter_chunk_blocks(
      iter_documents(files), self.tok.encode_batch, self.chunk_len, self.append, batch_docs=512
    ):
      blocks.append(block)
      have += len(block)
      if max_chunks is not None and have >= max_chunks:
        break
    chunks = (np.concatenate(blocks) if blocks else np.empty((0, self.chunk_len), np.int32))[
      :max_chunks
    ]
    if path is not None and len(chunks):
      self.cache_dir.mkdir(parents=True, exist_ok=True)
      tmp = path.with_name(f".{path.name}.{os.getpid()}")
      with open(tmp, "wb") as f:
        np.save(f, chunks)
      os.replace(tmp, path)
    return chunks, np.arange(len(chunks))
