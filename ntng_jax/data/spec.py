"""The data config, typed: ``DataSpec.from_config(config.data)`` reads it once.

The field defaults below are the defaults of ``config.data``: ``configs/common.py`` builds its
data section from :func:`config_defaults`, and a hand-built mapping that omits a field gets the
same value. ``seq_len`` has no default (each size sets it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ntng_jax.data.errors import DataError
from ntng_jax.data.objectives import MEAN_NOISE_SPAN_LENGTH, NOISE_DENSITY
from ntng_jax.data.validation import HELDOUT, validation_spec

SOURCES = ("synthetic", "text", "shards", "tfds")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSpec:
  """What the source builders receive; one attribute per ``config.data`` field."""

  source: str = "synthetic"  # synthetic | text | shards | tfds
  path: str = ""  # file or directory for source=text/shards, tfds name for source=tfds
  seq_len: int  # BERT sequence length / T5 encoder input length / GPT context (tokens)
  num_lines: int = 40_000  # size of the synthetic corpus (lines)
  corpus_seed: int = 0
  validation_fraction: float = 0.02  # held-out fraction of chunks for validation_loss
  unique_tokens: int = 0  # > 0: train on only this many tokens (a fixed prefix), repeated
  # {name: source}: 'heldout', a text/jsonl path, a shards dir or 'tfds:NAME[:SPLIT]'; add
  # sets from the command line with --config.data.validation.NAME=SOURCE.
  validation: dict = dataclasses.field(default_factory=lambda: {HELDOUT: HELDOUT})
  max_predictions: int = 0  # BERT masked positions per sequence (0 = round(0.15 * seq_len))
  noise_density: float = NOISE_DENSITY  # T5 span corruption
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
  tokenizer_dir: str = ""  # '' = train on the corpus and cache in the workdir
  tfds_data_dir: str = ""  # source=tfds: '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
  tfds_split: str = "train"
  tfds_text_key: str = "text"

  @classmethod
  def from_config(cls, cfg_data) -> DataSpec:
    """The spec of a ``config.data`` ConfigDict, a mapping or any object with those
    attributes (a spec is returned as is); missing or None fields take the defaults above."""
    if isinstance(cfg_data, cls):
      return cfg_data
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
      if f.name == "validation":
        continue
      value = _field(cfg_data, f.name)
      if value is not None:
        values[f.name] = _CAST[f.type](value)
    source = values.get("source", cls.source)
    if source not in SOURCES:
      raise DataError(f"data.source must be one of {', '.join(SOURCES)}, got {source!r}.")
    if "seq_len" not in values:
      raise DataError(
        "data.seq_len is missing; set it (the BERT sequence length / T5 encoder input length)."
      )
    return cls(validation=validation_spec(cfg_data), **values)

  @property
  def tfds_options(self) -> dict:
    """``data_dir`` and ``text_key`` keyword arguments for ``tfds_source`` readers."""
    return dict(data_dir=self.tfds_data_dir or None, text_key=self.tfds_text_key)


_CAST = {"int": int, "float": float, "str": str}  # by annotation (postponed: strings)


def _field(cfg, name: str):
  try:
    return cfg.get(name, None)
  except AttributeError:
    return getattr(cfg, name, None)


def config_defaults(seq_len: int, **overrides) -> dict:
  """``config.data`` as a plain dict in field order: the defaults above, ``seq_len`` and
  ``overrides`` (what ``configs/common.py`` wraps in a ConfigDict)."""
  out = {
    f.name: seq_len if f.name == "seq_len" else default(f.name)
    for f in dataclasses.fields(DataSpec)
  }
  unknown = set(overrides) - set(out)
  if unknown:
    raise DataError(f"config.data has no field(s) {', '.join(sorted(unknown))}; remove them.")
  out.update(overrides)
  return out


def default(name: str):
  """The default of ``config.data.<name>`` (for tools such as ``launch.prepare_data``)."""
  f = {f.name: f for f in dataclasses.fields(DataSpec)}[name]
  if f.default_factory is not dataclasses.MISSING:
    return f.default_factory()
  if f.default is dataclasses.MISSING:
    raise DataError(f"config.data.{name} has no default; set it.")
  return f.default


def as_spec(cfg_data) -> DataSpec:
  """``DataSpec.from_config(cfg_data)`` (public entry points accept either)."""
  return DataSpec.from_config(cfg_data)
