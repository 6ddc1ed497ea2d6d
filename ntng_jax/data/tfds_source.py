"""TensorFlow Datasets as a document source: ``NAME[/CONFIG][:VERSION][:SPLIT]`` names, one
stripped string per record in stored order (``shuffle_files=False``), each process reading
``tfds.even_splits(split, n=process_count)[process_index]``. ``tensorflow_datasets`` is imported
only when a reader runs (``_tfds``), so importing this module stays light. The dataset must be
prepared already (nothing is downloaded); ``gs://`` data directories work. See docs/data.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

from ntng_jax.data.errors import DataError
from ntng_jax.data.pipeline import take_chunks

_VERSION = re.compile(r"^\d+(\.\d+)*$")
_PREPARE = (
  "prepare it with `tfds build` (or download_and_prepare) into that directory, or set "
  "data.tfds_data_dir / $TFDS_DATA_DIR (gs:// works) to where it is prepared"
)


def _tfds():
  """``tensorflow_datasets``, imported on use (a heavy optional package: imports TensorFlow)."""
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


def builder(name: str, data_dir: str | None):
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
  b = builder(name, data_dir)
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
  b = builder(name, data_dir)
  share = split if process_count == 1 else tfds.even_splits(split, n=process_count)[process_index]
  try:
    ds = b.as_dataset(split=share, shuffle_files=False)
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
  name, split = parse_tfds_spec(spec)
  docs = (d for d in iter_documents(name, split or "validation", data_dir, text_key) if d)
  return take_chunks(docs, tok.encode_batch, chunk_len, append_ids, max_chunks)
