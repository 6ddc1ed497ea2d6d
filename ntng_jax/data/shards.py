"""Reading a shards directory (``data.source='shards'``): the manifest, the memory-mapped
chunks (``ShardedChunks``, ``RowView``), checks against the model and the run, checksums.

The format is in ``shard_format.py``; the writer, ``prepare_shards``, in ``shard_writer.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ntng_jax.data.errors import DataError
from ntng_jax.data.layout import chunk_layout
from ntng_jax.data.shard_format import FORMAT, MANIFEST, PREPARE_HINT
from ntng_jax.data.sources import file_digest
from ntng_jax.data.spec import as_spec
from ntng_jax.data.tokenizers import META_FILE, Tokenizer


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


def read_manifest(directory: str | os.PathLike) -> dict:
  """The manifest of a shards directory; one-sentence errors when it is missing or broken."""
  d = Path(directory).expanduser()
  if not str(directory) or not d.exists():
    raise FileNotFoundError(
      f"Shards directory '{directory}' does not exist; build it with {PREPARE_HINT}."
    )
  if not (d / MANIFEST).is_file():
    raise DataError(
      f"'{directory}' has no {MANIFEST} (not a prepare_data output, or its "
      f"preparation did not finish); rebuild it with {PREPARE_HINT}."
    )
  try:
    m = json.loads((d / MANIFEST).read_text())
  except json.JSONDecodeError as e:
    raise DataError(f"{d / MANIFEST} is not valid JSON ({e}); rebuild the shards.") from None
  if m.get("format") != FORMAT:
    raise DataError(
      f"{d / MANIFEST} has format {m.get('format')!r}, this code reads "
      f"{FORMAT!r}; rebuild the shards with {PREPARE_HINT}."
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
      f"an older version); rebuild the shards with {PREPARE_HINT} to be able "
      f"to verify them."
    )
  for s in m["shards"]:
    digest = file_digest(d / s["file"])
    if digest["sha256"] != s["sha256"]:
      raise DataError(
        f"Shard file '{d / s['file']}' does not match the checksum in the "
        f"manifest (its bytes were changed after preparation); rebuild the "
        f"shards with {PREPARE_HINT}."
      )
    log(f"  {s['file']}: {s['num_chunks']:,} chunks, {digest['bytes']:,} bytes, sha256 ok")
  log(f"All {len(m['shards'])} shard file(s) in {d} match their manifest.")
  return m


def nonfinite_loss_hint(cfg_data, step: int, first_steps: int = 20) -> str:
  """What to suspect besides the optimizer when the loss turns non-finite at `step` (a clause
  for the trainer's message; '' if nothing): damaged shards early in a run from shards."""
  spec = as_spec(cfg_data)
  if step > first_steps or spec.source != "shards":
    return ""
  return (
    f"; a non-finite loss this early can also mean damaged data: check the shards with "
    f"`python -m launch.prepare_data --verify={spec.path}`"
  )


def check_compatible(
  manifest: dict,
  directory,
  family: str,
  seq_len: int,
  model_vocab: int,
  noise_density: float,
  mean_noise_span_length: float,
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


def install_tokenizer(tok: Tokenizer, workdir: str | os.PathLike, source: str) -> None:
  """Copy the run's tokenizer into ``workdir/tokenizer`` (so it travels with checkpoints);
  refuse if the workdir already holds a different one (a resumed run changed its data)."""
  d = Path(workdir) / "tokenizer"
  meta = d / META_FILE
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
  "FORMAT",
  "MANIFEST",
  "RowView",
  "ShardedChunks",
  "check_compatible",
  "copy_manifest",
  "install_tokenizer",
  "nonfinite_loss_hint",
  "open_shards",
  "read_manifest",
  "verify_shards",
]
