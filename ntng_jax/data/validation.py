"""Named validation sets, the config side: ``data.validation = {name: source}``.

A source is ``'heldout'`` (the in-domain split of the training source), a text/jsonl path, a
shards directory or ``'tfds:NAME[:SPLIT]'`` (``resolver.py`` turns the others into chunks).
``'heldout'`` sources come first; without the field the sets are ``{'heldout': 'heldout'}``.
``--config.data.validation.NAME=SRC`` flags for new names are taken out of ``argv`` before absl
parses it (:func:`pop_validation_overrides`) and applied afterwards. Also: fixed batches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import ml_collections
import numpy as np

from ntng_jax.data.errors import DataError
from ntng_jax.data.pipeline import BatchIterator

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
