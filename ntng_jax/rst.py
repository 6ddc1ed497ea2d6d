"""Reference System Time (RST): every executed step is charged what it costs on one reference machine.

A table maps a step *kind* to reference seconds per unit of `unit_sequences` sequences:

- `train[n]`: forward + backward with n active layers (T5: n blocks in each stack);
- `forward[n]`: forward-only scoring (batch selection's pre-pass);
- `extra[name]`: additional optimizer work charged per unit when that optimizer runs
  (e.g. the paper's T5 Lion/Sophia step times above AdamWScale).

The meter is pure: `charge(rst_seconds, charges)` returns the new clock. The loop tells it what ran
(a list of `Charge`), never what was planned, so a dropped layer or a scoring pass changes the bill.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
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
  unit_sequences: int                       # sequences per priced unit
  train: Mapping[int, float]                # active layers -> RST seconds per unit
  forward: Mapping[int, float] = dataclasses.field(default_factory=dict)
  extra: Mapping[str, float] = dataclasses.field(default_factory=dict)
  fingerprint: str | None = None            # config fingerprint (None: any config of `applies_to`)
  applies_to: Mapping[str, object] = dataclasses.field(default_factory=dict)
  meta: Mapping[str, object] = dataclasses.field(default_factory=dict)

  def seconds(self, charge: Charge) -> float:
    """RST seconds for one executed piece of work."""
    units = charge.sequences / self.unit_sequences
    if charge.kind == "extra":
      if charge.layers not in self.extra:
        raise RSTTableError(f"RST table '{self.name}' has no extra kind {charge.layers!r}; recalibrate"
                            " with `python -m launch.calibrate_rst` for this method.")
      return self.extra[charge.layers] * units
    prices = {"train": self.train, "forward": self.forward}.get(charge.kind)
    if prices is None:
      raise RSTTableError(f"unknown step kind {charge.kind!r}; use 'train', 'forward' or 'extra'.")
    if charge.layers in prices:
      return prices[charge.layers] * units
    if charge.kind == "forward" and len(prices) == 1:
      # The paper's BERT forward table has one value (16 layers) and ignores the depth.
      return next(iter(prices.values())) * units
    raise RSTTableError(f"RST table '{self.name}' has no {charge.kind} entry for {charge.layers}"
                        " active layers; recalibrate with `python -m launch.calibrate_rst`.")

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["train"] = {str(k): v for k, v in self.train.items()}
    d["forward"] = {str(k): v for k, v in self.forward.items()}
    return d

  @classmethod
  def from_json(cls, d: dict) -> "RSTTable":
    d = dict(d)
    d["train"] = {int(k): float(v) for k, v in d["train"].items()}
    d["forward"] = {int(k): float(v) for k, v in d.get("forward", {}).items()}
    return cls(**d)


def charge(rst_seconds: float, table: RSTTable, charges: Sequence[Charge]) -> float:
  """The meter: returns the clock after paying for `charges` (pure)."""
  return rst_seconds + step_cost(table, charges)


def step_cost(table: RSTTable, charges: Sequence[Charge]) -> float:
  return sum(table.seconds(c) for c in charges)


# ---------------------------------------------------------------------------------------------------
# Built-in tables: the paper's measurements (paper-facts §1.2-1.3).

# BERT, RTX 3090, seconds per 128-sequence micro-batch (seq 128), indexed by active layers 1..16.
# Correction: the paper's table lists 0.01052 s for 7 layers, a dropped digit (its neighbours are
# 0.09188 and 0.1186, and every step between adjacent depths is ~0.0133 s); we use 0.1052.
_BERT_3090_TRAIN = (0.02521, 0.03837, 0.05177, 0.06508, 0.07847, 0.09188, 0.1052, 0.1186,
                    0.1319, 0.1454, 0.1589, 0.1722, 0.1857, 0.1988, 0.212, 0.2253)
# T5, A100-SXM 80GB, seconds per 144-sequence optimizer step (512 in / 114 out), blocks 1..12.
_T5_A100_TRAIN = (0.129, 0.209, 0.291, 0.373, 0.455, 0.538, 0.619, 0.703, 0.783, 0.865, 0.947, 1.031)

PAPER_TABLES = {
    "bert": RSTTable(
        name="paper-bert-rtx3090",
        unit_sequences=128,
        train=dict(enumerate(_BERT_3090_TRAIN, start=1)),
        forward={16: 0.09285},
        applies_to=dict(family="bert", num_layers=16, hidden_size=768, seq_len=128),
        meta=dict(machine="NVIDIA RTX 3090", source="bert/rst/saved_rsts.py",
                  note="7-layer entry corrected from 0.01052 to 0.1052"),
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


def step_shape_fingerprint(config) -> str:
  """Hash of everything that sets the cost of one step: model, sequence shape, micro-batch, dtype.

  The method, optimizer hyper-parameters, budget and seed are excluded on purpose: every method of a
  sweep must be priced by the same table. So is `model.remat`: it trades memory for recomputation
  in how a step is run, not what the step computes (layer dropping turns it on).
  """
  model = {k: v for k, v in config.model.to_dict().items() if k != "remat"}
  key = dict(model=model, seq_len=config.data.seq_len,
             micro_batch_size=config.train.micro_batch_size,
             compute_dtype=config.train.compute_dtype)
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def paper_table_for(config) -> RSTTable | None:
  """The paper's table if the config is the paper's model and sequence shape, else None."""
  table = PAPER_TABLES.get(config.model.family)
  if table is None:
    return None
  want = table.applies_to
  have = dict(family=config.model.family, num_layers=config.model.num_layers,
              hidden_size=config.model.hidden_size, seq_len=config.data.seq_len)
  return table if have == want else None


def load_table(path: str, config=None) -> RSTTable:
  """Loads a JSON table; with `config`, checks its fingerprint matches the config's step shape."""
  if not os.path.exists(path):
    raise RSTTableError(f"RST table file {path!r} does not exist; create it with"
                        f" `python -m launch.calibrate_rst --config=... --output={path}`.")
  with open(path) as f:
    table = RSTTable.from_json(json.load(f))
  if config is not None and table.fingerprint is not None:
    want = step_shape_fingerprint(config)
    if table.fingerprint != want:
      raise RSTTableError(
          f"RST table {path!r} was calibrated for config fingerprint {table.fingerprint}, but this"
          f" config's is {want} (model, seq_len, micro_batch_size or compute_dtype differ);"
          " recalibrate with `python -m launch.calibrate_rst`.")
  return table


def save_table(table: RSTTable, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(table.to_json(), f, indent=1)
  os.replace(tmp, path)


def now_iso() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
