"""TensorFlow Datasets as a streamed text source (``data.source='tfds'``).

Imported only when a tfds source is used (it imports ``tensorflow_datasets``, which imports
TensorFlow); ``import ntng_jax.data`` never imports it.

``data.path`` names the dataset as ``NAME[/CONFIG][:VERSION][:SPLIT]``, e.g. ``'c4/en:3.1.0'``
(split from ``data.tfds_split``, default 'train') or ``'c4/en:3.1.0:validation'``. The data
directory is ``data.tfds_data_dir`` if set, else TFDS's default (``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``); ``gs://`` directories work (TFDS reads them through
``tf.io.gfile``), e.g. ``gs://my-bucket/tensorflow_datasets`` holding a prepared ``c4/en/3.1.0``.
The dataset must already be prepared there (C4 needs Apache Beam to build; see the TFDS
catalogue); nothing is downloaded implicitly.

Records are read in their stored order (``shuffle_files=False``); the text field
(``data.tfds_text_key``, default 'text') of each record is a document. Each process reads only
``tfds.even_splits(split, n=process_count)[process_index]``; resuming skips records with
``Dataset.skip``. Tokenising, chunking, the held-out split and shuffling are those of
``streaming.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

from ntng_jax.data.errors import DataError

_VERSION = re.compile(r"^\d+(\.\d+)*$")
_PREPARE = (
  "prepare it with `tfds build` (or download_and_prepare) into that directory, or set "
  "data.tfds_data_dir / $TFDS_DATA_DIR (gs:// works) to where it is prepared"
)


def _tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DataError(
      f"data.source='tfds' needs tensorflow-datasets ({e}); install it with "
      f"pip install -e '.[data]' or prepare shards elsewhere."
    ) from None
  return tfds


def parse_tfds_spec(spec: str) -> tuple[str, str | None]:
  """``'c4/en:3.1.0'`` -> ``('c4/en:3.1.0', None)``; ``'c4/en:3.1.0:validation'`` ->
  ``('c4/en:3.1.0', 'validation')``; ``'c4/en:validation'`` -> ``('c4/en', 'validation')``."""
  spec = spec.strip()
  if spec.startswith("tfds:"):
    spec = spec[5:]
  if not spec:
    raise DataError("The TFDS dataset name is empty; set data.path to e.g. 'c4/en:3.1.0'.")
  head, sep, tail = spec.rpartition(":")
  if sep and head and not _VERSION.match(tail):
    return head, tail
  return spec, None


def _builder(name: str, data_dir: str | None):
  tfds = _tfds()
  not_found = getattr(getattr(tfds.core, "registered", None), "DatasetNotFoundError", ())
  try:
    return tfds.builder(name, data_dir=data_dir)
  except not_found as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(
      f"TFDS dataset '{name}' does not exist ({first}); check data.path (e.g. 'c4/en:3.1.0')."
    ) from None
  except (ValueError, AssertionError, KeyError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(
      f"TFDS dataset '{name}' cannot be opened ({first}); check the config "
      f"and version in data.path (e.g. 'c4/en:3.1.0')."
    ) from None


def describe(name: str, split: str | None, data_dir: str | None = None) -> dict:
  """Provenance for manifests: name, split, version, data_dir."""
  b = _builder(name, data_dir)
  return {
    "tfds": name,
    "split": split or "train",
    "version": str(b.info.version),
    "data_dir": str(getattr(b, "data_dir", data_dir)),
  }


def iter_documents(
  name: str,
  split: str | None = None,
  data_dir: str | None = None,
  text_key: str = "text",
  process_index: int = 0,
  process_count: int = 1,
  start: int = 0,
) -> Iterator[str]:
  """One stripped string per record of this process's share of ``split``, from record
  ``start`` on (empty strings included, so indices are record indices)."""
  tfds = _tfds()
  split = split or "train"
  builder = _builder(name, data_dir)
  share = split if process_count == 1 else tfds.even_splits(split, n=process_count)[process_index]
  try:
    ds = builder.as_dataset(split=share, shuffle_files=False)
  except (AssertionError, FileNotFoundError, ValueError, KeyError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    where = data_dir or "the default TFDS data directory"
    raise DataError(
      f"TFDS dataset '{name}' split '{split}' is not available in {where} ({first}); {_PREPARE}."
    ) from None
  if start:
    ds = ds.skip(start)
  for ex in tfds.as_numpy(ds):
    if text_key not in ex:
      raise DataError(
        f"TFDS dataset '{name}' has no feature '{text_key}' (features: "
        f"{', '.join(sorted(ex))}); set data.tfds_text_key."
      )
    text = ex[text_key]
    if isinstance(text, bytes):
      text = text.decode("utf-8", errors="replace")
    yield str(text).strip()


def validation_chunks(
  spec: str,
  tok,
  chunk_len: int,
  append_ids,
  max_chunks: int | None,
  data_dir: str | None = None,
  text_key: str = "text",
) -> np.ndarray:
  """The first ``max_chunks`` chunks of a TFDS split (a 'tfds:NAME[:SPLIT]' validation set;
  default split 'validation')."""
  from ntng_jax.data.streaming import take_chunks

  name, split = parse_tfds_spec(spec)
  docs = (d for d in iter_documents(name, split or "validation", data_dir, text_key) if d)
  return take_chunks(docs, tok.encode_batch, chunk_len, append_ids, max_chunks)


def build_tfds_dataset(cfg_data, kind: str, vocab_size: int, work):
  """The streamed :class:`ntng_jax.data.Dataset` of ``data.path`` (see module docstring)."""
  from ntng_jax.data import _get
  from ntng_jax.data.streaming import build_stream_dataset

  name, split = parse_tfds_spec(str(_get(cfg_data, "path", "")))
  split = split or _get(cfg_data, "tfds_split", "train")
  data_dir = _get(cfg_data, "tfds_data_dir", "") or None
  text_key = _get(cfg_data, "tfds_text_key", "text")
  _builder(name, data_dir)  # fail early, in one sentence, on a wrong name

  def share_docs(process_index: int, process_count: int, start: int) -> Iterator[str]:
    return iter_documents(name, split, data_dir, text_key, process_index, process_count, start)

  return build_stream_dataset(
    cfg_data, kind, vocab_size, work, share_docs=share_docs, source=f"tfds:{name}:{split}"
  )
