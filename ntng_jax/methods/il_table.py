"""The IL table: irreducible losses indexed by example id, and the metadata that pins its data.

Files: `il_losses.npy` (float32 [num_chunks], NaN outside the IL model's scored training split)
and `il_losses.json` (format `ntng-il-losses/1`, the config and dataset signatures, stats),
written atomically by `launch/extract_il.py` and checked by RHO-loss against its own data.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np

from ntng_jax.errors import UserError

IL_FORMAT = "ntng-il-losses/1"
IL_FILENAME = "il_losses.npy"
IL_META_FILENAME = "il_losses.json"
SPLIT_SEED = 0  # the `holdout_split` seed `data.build_dataset` uses


class ILTableError(UserError, ValueError):
  """The IL table is unreadable, corrupt or made from other data."""


class ILTableMissingError(ILTableError, FileNotFoundError):
  """A file of the IL table does not exist."""


_CONFIG_FIELDS = (
  "source",
  "num_lines",
  "corpus_seed",
  "seq_len",
  "validation_fraction",
  "max_predictions",
  "noise_density",
  "mean_noise_span_length",
)


def config_signature(config) -> dict:
  """What the config alone says about the training split (checked when the table is loaded)."""
  d = config.data
  sig = {"family": config.model.family, "vocab_size": int(config.model.vocab_size)}
  for key in _CONFIG_FIELDS:
    if key in ("noise_density", "mean_noise_span_length") and config.model.family != "t5":
      continue
    if key in ("num_lines", "corpus_seed") and d.get("source") != "synthetic":
      continue
    value = d.get(key)
    sig[f"data.{key}"] = float(value) if isinstance(value, float) else value
  return sig


def _sha(array) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def dataset_signature(dataset) -> dict:
  """What pins the training split of a built dataset: tokenizer, chunk counts, the split itself
  (hash of the training ids) and the content of up to 1024 evenly spaced training chunks."""
  ids = np.asarray(dataset.train_ids, np.int64)
  rows = np.unique(np.linspace(0, len(ids) - 1, min(len(ids), 1024)).astype(np.int64))
  meta = dataset.meta
  return {
    "family": dataset.family,
    "tokenizer_fingerprint": meta.get("tokenizer_fingerprint"),
    "num_chunks": int(meta.get("num_chunks", -1)),
    "num_train": int(len(ids)),
    "chunk_len": int(meta.get("chunk_len", dataset.train_chunks.shape[1])),
    "train_ids_sha256": _sha(ids),
    "train_chunks_sample_sha256": _sha(np.asarray(dataset.train_chunks[rows], np.int32)),
  }


def check_il_metadata(meta: dict, signature: dict, path: str) -> None:
  """Raises a one-sentence ILTableError naming the first field where the table and data differ."""
  if meta.get("format") != IL_FORMAT:
    raise ILTableError(
      f"{path} is not an IL table of format {IL_FORMAT} (found"
      f" {meta.get('format')!r}); re-run `python -m launch.extract_il`."
    )
  recorded = meta.get("signature", {})
  for key, want in signature.items():
    have = recorded.get(key, "(absent)")
    if isinstance(want, float) and isinstance(have, (int, float)):
      same = abs(float(have) - want) <= 1e-9 * max(1.0, abs(want))
    else:
      same = have == want
    if not same:
      raise ILTableError(
        f"the IL table {path} does not match this run's data: {key} is {have!r} in"
        f" the table but {want!r} here; re-run `python -m launch.extract_il` on an"
        " il_model run with this data config."
      )


def il_table_paths(path: str) -> tuple[str, str]:
  """(losses .npy, metadata .json) for a table directory, its .npy file, or the IL run's workdir
  (whose `il_losses/` subdirectory holds the table)."""
  if path.endswith(".npy"):
    return path, os.path.join(os.path.dirname(path), IL_META_FILENAME)
  if not os.path.exists(os.path.join(path, IL_FILENAME)) and os.path.exists(
    os.path.join(path, "il_losses", IL_FILENAME)
  ):
    path = os.path.join(path, "il_losses")
  return os.path.join(path, IL_FILENAME), os.path.join(path, IL_META_FILENAME)


def write_il_table(directory: str, losses: np.ndarray, meta: dict) -> tuple[str, str]:
  """Writes `losses` (float32 [num_chunks], NaN where not scored) and `meta` atomically."""
  os.makedirs(directory, exist_ok=True)
  npy, js = il_table_paths(directory)
  losses = np.asarray(losses, np.float32)
  meta = dict(meta, format=IL_FORMAT, num_entries=int(losses.shape[0]), losses_sha256=_sha(losses))
  for path, write in (
    (npy, lambda f: np.save(f, losses)),
    (js, lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True).encode())),
  ):
    with open(path + ".tmp", "wb") as f:
      write(f)
    os.replace(path + ".tmp", path)
  return npy, js


def read_il_table(path: str) -> tuple[np.ndarray, dict]:
  npy, js = il_table_paths(path)
  for p in (npy, js):
    if not os.path.exists(p):
      raise ILTableMissingError(
        f"IL table file {p} does not exist; create it with `python -m"
        " launch.extract_il --workdir=IL_RUN` and pass method.il_path."
      )
  fix = "re-run `python -m launch.extract_il --workdir=IL_RUN` to write it again."
  try:
    with open(js) as f:
      meta = json.load(f)
  except (ValueError, OSError) as e:
    raise ILTableError(
      f"IL table metadata {js} is unreadable or not valid JSON ({e}); {fix}"
    ) from None
  if not isinstance(meta, dict):
    raise ILTableError(f"IL table metadata {js} is not a JSON object; {fix}")
  try:
    losses = np.load(npy, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise ILTableError(f"IL table {npy} is truncated or not a .npy array ({e}); {fix}") from None
  if losses.dtype != np.float32 or losses.ndim != 1 or meta.get("losses_sha256") != _sha(losses):
    raise ILTableError(
      f"IL table {npy} is corrupt or does not belong to {js}; re-run `python -m launch.extract_il`."
    )
  return losses, meta


def score_chunks(
  score_fn, params, chunks: np.ndarray, objective, batch_size: int, mask_seed: int = 0, put=None
) -> np.ndarray:
  """Each chunk's loss under one fixed mask (BERT) / span corruption (T5): batch b of
  `batch_size` rows is corrupted with `default_rng((mask_seed, 2, b))`; the last batch is padded
  by repeating rows so every call has one shape. `put` maps a numpy batch onto devices.
  Returns float32 [len(chunks)]."""
  n = len(chunks)
  out = np.empty(n, np.float32)
  for b, start in enumerate(range(0, n, batch_size)):
    rows = np.arange(start, min(start + batch_size, n))
    padded = np.resize(rows, batch_size)  # repeats rows to fill the last batch
    batch = objective(np.random.default_rng((mask_seed, 2, b)), np.asarray(chunks[padded]))
    batch["example_id"] = padded.astype(np.int32)
    if put is not None:
      batch = put(batch)
    out[rows] = np.asarray(jax.device_get(score_fn(params, batch)))[: len(rows)]
  return out


def il_table_from_losses(config, dataset, train_losses: np.ndarray, extra: dict | None = None):
  """(table float32 [num_chunks] with NaN outside the training split, metadata) from the losses
  of `dataset.train_chunks` in order; refuses non-finite losses."""
  train_losses = np.asarray(train_losses, np.float32)
  bad = int(np.sum(~np.isfinite(train_losses)))
  if bad:
    raise ILTableError(
      f"the IL model gives non-finite losses on {bad} training chunks; retrain it"
      " (e.g. with a lower optim.learning_rate) before extracting."
    )
  table = np.full(int(dataset.meta["num_chunks"]), np.nan, np.float32)
  table[np.asarray(dataset.train_ids)] = train_losses
  meta = dict(
    extra or {},
    signature={**config_signature(config), **dataset_signature(dataset)},
    split_seed=SPLIT_SEED,
    validation_fraction=float(config.data.validation_fraction),
    data_meta=dict(dataset.meta),
    num_scored=int(len(train_losses)),
    stats=dict(
      mean=float(np.mean(train_losses)),
      std=float(np.std(train_losses)),
      min=float(np.min(train_losses)),
      max=float(np.max(train_losses)),
    ),
  )
  return table, meta
