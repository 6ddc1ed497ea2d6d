"""Reference System Time (RST): every executed step is charged what it costs on one reference machine.

A table maps a step *kind* to reference seconds per unit of `unit_sequences` sequences:

- `train[n]`: forward + backward with n active layers (T5: n blocks in each stack);
- `forward[n]`: forward-only scoring (batch selection's pre-pass);
- `extra[name]`: additional optimizer work charged per unit when that optimizer runs
  (e.g. the paper's T5 Lion/Sophia step times above AdamWScale).

`step_cost(table, charges)` is what a step costs; the trainer adds it to the clock after telling
it what ran (a list of `Charge`), never what was planned, so a dropped layer or a scoring pass
changes the bill.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
from typing import Mapping, NamedTuple, Sequence

from ntng_jax.errors import UserError


class Charge(NamedTuple):
  """One executed piece of work: `kind` in {'train', 'forward', 'extra'}; `layers` active layers
  (or the extra's name for kind 'extra'); `sequences` sequences processed."""

  kind: str
  layers: int | str
  sequences: int


class RSTTableError(UserError, ValueError):
  """A table cannot price a step (missing kind, wrong config); the message says what to do."""


@dataclasses.dataclass(frozen=True)
class RSTTable:
  name: str
  unit_sequences: int  # sequences per priced unit
  train: Mapping[int, float]  # active layers -> RST seconds per unit
  forward: Mapping[int, float] = dataclasses.field(default_factory=dict)
  extra: Mapping[str, float] = dataclasses.field(default_factory=dict)
  fingerprint: str | None = None  # config fingerprint (None: any config of `applies_to`)
  applies_to: Mapping[str, object] = dataclasses.field(default_factory=dict)
  meta: Mapping[str, object] = dataclasses.field(default_factory=dict)

  def seconds(self, charge: Charge) -> float:
    """RST seconds for one executed piece of work."""
    units = charge.sequences / self.unit_sequences
    if charge.kind == "extra":
      if charge.layers not in self.extra:
        raise RSTTableError(
          f"RST table '{self.name}' has no extra kind {charge.layers!r}; recalibrate"
          " with `python -m launch.calibrate_rst` for this method."
        )
      return self.extra[charge.layers] * units
    prices = {"train": self.train, "forward": self.forward}.get(charge.kind)
    if prices is None:
      raise RSTTableError(f"unknown step kind {charge.kind!r}; use 'train', 'forward' or 'extra'.")
    if charge.layers in prices:
      return prices[charge.layers] * units
    if charge.kind == "forward" and len(prices) == 1:
      # The paper's BERT forward table has one value (16 layers) and ignores the depth.
      return next(iter(prices.values())) * units
    raise RSTTableError(
      f"RST table '{self.name}' has no {charge.kind} entry for {charge.layers}"
      " active layers; recalibrate with `python -m launch.calibrate_rst`."
    )

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["train"] = {str(k): v for k, v in self.train.items()}
    d["forward"] = {str(k): v for k, v in self.forward.items()}
    return d

  @classmethod
  def from_json(cls, d: dict, source: str = "RST table") -> "RSTTable":
    """The table of a JSON object; a malformed one raises RSTTableError naming `source` and the
    field. Every cost must be a positive number (an `extra` may be 0)."""

    def fail(what: str) -> RSTTableError:
      return RSTTableError(
        f"{source} {what}; recalibrate it with `python -m launch.calibrate_rst"
        " --config=... --output=FILE` or restore the file."
      )

    if not isinstance(d, dict):
      raise fail(
        f"holds a JSON {type(d).__name__}, not an object with 'name', 'unit_sequences' and 'train'"
      )
    fields = {f.name for f in dataclasses.fields(cls)}
    missing = [k for k in ("name", "unit_sequences", "train") if k not in d]
    if missing:
      raise fail(f"has no field {', '.join(repr(k) for k in missing)}")
    unknown = sorted(set(d) - fields)
    if unknown:
      raise fail(
        f"has unknown field(s) {', '.join(map(repr, unknown))} (known: {', '.join(sorted(fields))})"
      )
    d = dict(d)
    units = d["unit_sequences"]
    if isinstance(units, bool) or not isinstance(units, int) or units <= 0:
      raise fail(f"field 'unit_sequences' is {units!r}, not a positive integer")

    def prices(name: str, keys_are_layers: bool, allow_zero: bool = False) -> dict:
      value = d.get(name, {})
      if not isinstance(value, dict):
        raise fail(f"field {name!r} is {type(value).__name__}, not an object of costs")
      out = {}
      for k, v in value.items():
        if keys_are_layers:
          try:
            key = int(k)
          except (TypeError, ValueError):
            raise fail(f"field {name}[{k!r}] is not indexed by a layer count") from None
        else:
          key = k
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
          raise fail(f"field {name}[{k!r}] is {v!r}, not a number of seconds")
        if v < 0 or (v == 0 and not allow_zero):
          raise fail(
            f"field {name}[{k!r}] is {v!r}; every cost must be positive (a zero or"
            " negative price would let a run train forever)"
          )
        out[key] = float(v)
      return out

    d["train"] = prices("train", True)
    if not d["train"]:
      raise fail("field 'train' is empty")
    d["forward"] = prices("forward", True)
    d["extra"] = prices("extra", False, allow_zero=True)
    for name in ("applies_to", "meta"):
      if not isinstance(d.get(name, {}), dict):
        raise fail(f"field {name!r} is not an object")
    if d.get("fingerprint") is not None and not isinstance(d["fingerprint"], str):
      raise fail(f"field 'fingerprint' is {d['fingerprint']!r}, not a string")
    return cls(**d)

  def check(self, source: str | None = None) -> "RSTTable":
    """Returns self if every cost is a positive number; else RSTTableError naming the field."""
    return RSTTable.from_json(
      json.loads(json.dumps(self.to_json())), source or f"RST table {self.name!r}"
    )


def step_cost(table: RSTTable, charges: Sequence[Charge]) -> float:
  return sum(table.seconds(c) for c in charges)


# ---------------------------------------------------------------------------------------------------
# Built-in tables: the paper's measurements (docs/paper.md §1.2-1.3).

# BERT, RTX 3090, seconds per 128-sequence micro-batch (seq 128), indexed by active layers 1..16.
# Correction: the paper's table lists 0.01052 s for 7 layers, a dropped digit (its neighbours are
# 0.09188 and 0.1186, and every step between adjacent depths is ~0.0133 s); we use 0.1052.
_BERT_3090_TRAIN = (
  0.02521,
  0.03837,
  0.05177,
  0.06508,
  0.07847,
  0.09188,
  0.1052,
  0.1186,
  0.1319,
  0.1454,
  0.1589,
  0.1722,
  0.1857,
  0.1988,
  0.212,
  0.2253,
)
# T5, A100-SXM 80GB, seconds per 144-sequence optimizer step (512 in / 114 out), blocks 1..12.
_T5_A100_TRAIN = (
  0.129,
  0.209,
  0.291,
  0.373,
  0.455,
  0.538,
  0.619,
  0.703,
  0.783,
  0.865,
  0.947,
  1.031,
)

PAPER_TABLES = {
  "bert": RSTTable(
    name="paper-bert-rtx3090",
    unit_sequences=128,
    train=dict(enumerate(_BERT_3090_TRAIN, start=1)),
    forward={16: 0.09285},
    applies_to=dict(family="bert", num_layers=16, hidden_size=768, seq_len=128),
    meta=dict(
      machine="NVIDIA RTX 3090",
      source="bert/rst/saved_rsts.py",
      note="7-layer entry corrected from 0.01052 to 0.1052",
    ),
  ),
  "t5": RSTTable(
    name="paper-t5-a100",
    unit_sequences=144,
    train=dict(enumerate(_T5_A100_TRAIN, start=1)),
    # Optimizer-specific full-depth step times minus AdamWScale's 1.031 s, charged per step.
    extra={"lion": 1.043 - 1.031, "sophia": 1.156 - 1.031},
    applies_to=dict(family="t5", num_layers=12, hidden_size=768, seq_len=512),
    meta=dict(machine="NVIDIA A100-SXM 80GB", source="t5/t5/utils/train.py"),
  ),
}


# The model fields that set what one step computes (and so its cost). Everything else is left out
# of the step-shape fingerprint: how a step is run (`remat`, `attention_impl`, `layer_loop`, any
# implementation switch added later), initialisation constants, and the config's size name.
_STEP_SHAPE_FIELDS = (
  "family",
  "num_layers",
  "hidden_size",
  "num_heads",
  "head_dim",
  "intermediate_size",
  "vocab_size",
  "max_length",
  "relative_attention_num_buckets",
  "relative_attention_max_distance",
)
# Fields that add work only away from their neutral value (a dropout rate of 0 adds none).
_NEUTRAL_MODEL_FIELDS = {"dropout_rate": 0.0, "attention_dropout_rate": 0.0}


def step_shape_fingerprint(config) -> str:
  """Hash of everything that sets the cost of one step: the model's shape, the sequence shape,
  the micro-batch and the compute dtype.

  The method, optimizer hyper-parameters, budget and seed are excluded on purpose: every method of
  a sweep must be priced by the same table. So are the model's implementation switches (`remat`,
  which layer dropping turns on, `attention_impl`, `layer_loop`): they change how a step is run,
  not what it computes. Dropout rates enter only when non-zero.
  """
  model = config.model.to_dict()
  shape = {k: model[k] for k in _STEP_SHAPE_FIELDS if k in model}
  shape.update(
    {
      k: model[k]
      for k, neutral in _NEUTRAL_MODEL_FIELDS.items()
      if k in model and model[k] != neutral
    }
  )
  key = dict(
    model=shape,
    seq_len=config.data.seq_len,
    micro_batch_size=config.train.micro_batch_size,
    compute_dtype=config.train.compute_dtype,
  )
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def paper_table_for(config) -> RSTTable | None:
  """The paper's table if the config is the paper's model and sequence shape, else None."""
  table = PAPER_TABLES.get(config.model.family)
  if table is None:
    return None
  want = table.applies_to
  have = dict(
    family=config.model.family,
    num_layers=config.model.num_layers,
    hidden_size=config.model.hidden_size,
    seq_len=config.data.seq_len,
  )
  return table if have == want else None


def load_table(path: str, config=None) -> RSTTable:
  """Loads a JSON table; with `config`, checks its fingerprint matches the config's step shape.

  A missing, unreadable or malformed file, or a non-positive cost, raises RSTTableError naming the
  file and the field."""
  if not os.path.exists(path):
    raise RSTTableError(
      f"RST table file {path!r} does not exist; create it with"
      f" `python -m launch.calibrate_rst --config=... --output={path}`."
    )
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except json.JSONDecodeError as e:
    raise RSTTableError(
      f"RST table {path!r} is not valid JSON ({e.msg} at line {e.lineno},"
      f" column {e.colno}; truncated?); recalibrate it with `python -m"
      f" launch.calibrate_rst --config=... --output={path}` or restore the"
      " file."
    ) from None
  except (OSError, UnicodeDecodeError) as e:
    raise RSTTableError(
      f"RST table {path!r} cannot be read ({e.__class__.__name__}:"
      f" {getattr(e, 'strerror', None) or e}); pass a readable JSON table"
      " file."
    ) from None
  table = RSTTable.from_json(raw, source=f"RST table {path!r}")
  if config is not None and table.fingerprint is not None:
    want = step_shape_fingerprint(config)
    if table.fingerprint != want:
      raise RSTTableError(
        f"RST table {path!r} was calibrated for config fingerprint {table.fingerprint}, but this"
        f" config's is {want} (model, seq_len, micro_batch_size or compute_dtype differ);"
        " recalibrate with `python -m launch.calibrate_rst`."
      )
  return table


# -------------------------------------------------------------------------------------------------
# Built-in reference tables of the shipped configs (package data `ntng_jax/rst_tables/*.json`),
# measured once with `launch.calibrate_rst` (machine, date, jax version and method in each `meta`).
# A table applies to exactly the configs with its step-shape fingerprint, so a run of a shipped
# config takes the same steps on any machine, on any day.

BUILTIN_TABLE_DIR = "rst_tables"


def builtin_tables() -> dict[str, RSTTable]:
  """{file name: table} of the package's reference tables."""
  from importlib import resources

  out = {}
  root = resources.files("ntng_jax").joinpath(BUILTIN_TABLE_DIR)
  if not root.is_dir():
    return out
  for entry in sorted(root.iterdir(), key=lambda e: e.name):
    if entry.name.endswith(".json"):
      source = f"built-in RST table 'ntng_jax/{BUILTIN_TABLE_DIR}/{entry.name}'"
      try:
        raw = json.loads(entry.read_text(encoding="utf-8"))
      except ValueError as e:
        raise RSTTableError(f"{source} is not valid JSON ({e}); reinstall ntng_jax.") from None
      out[entry.name] = RSTTable.from_json(raw, source=source)
  return out


def builtin_table_for(config) -> RSTTable | None:
  """The built-in reference table whose fingerprint is this config's step shape, else None."""
  want = step_shape_fingerprint(config)
  for table in builtin_tables().values():
    if table.fingerprint == want:
      return table
  return None


def reference_table_for(config) -> RSTTable | None:
  """The paper's table for the paper's shapes, else the built-in table of a shipped shape, else
  None."""
  return paper_table_for(config) or builtin_table_for(config)


def save_table(table: RSTTable, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(table.to_json(), f, indent=1)
  os.replace(tmp, path)


def now_iso() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
