"""How far RST tables transfer across machines: step-kind ratios and what they imply per method.

Each table is normalised to its own full-depth training step (`train[L]` = 1, per sequence), so
units cancel; ratios are against the first table (the reference), and an entry's drift is its
largest |log ratio| over the others. Methods are priced with their own `charges` and schedules
(optimizers with `optim.optimizer_hook(config).charges`), as RST per optimizer step relative to the
baseline; depths a partial table lacks are linearly interpolated. Formulas: docs/architecture.md,
"RST transfer".
"""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np

from configs import get_config
from ntng_jax import rst
from ntng_jax.errors import ConfigError
from ntng_jax.methods.base import Plan, build_method, method_defaults
from ntng_jax.methods.layer_drop import LayerDrop
from ntng_jax.methods.selection import RhoLoss, SelectiveBackprop
from ntng_jax.methods.stacking import Stacking
from ntng_jax.optim import optimizer_hook

_METHODS = (
  "baseline",
  "stacking",
  "layer_drop",
  "selective_backprop",
  "rho_loss",
  "lion",
  "sophia",
)


class CompareError(ConfigError):
  """A table spec or set of tables that cannot be compared; the message says what to do."""


# -------------------------------------------------------------------------------------------------
# Loading.


def load(spec: str) -> tuple[str, rst.RSTTable]:
  """(label, table) for 'paper:bert', 'paper:t5' or a JSON path written by launch.calibrate_rst."""
  if spec.startswith("paper:"):
    family = spec.split(":", 1)[1]
    if family not in rst.PAPER_TABLES:
      raise CompareError(
        f"unknown built-in table {spec!r}; use one of "
        f"{', '.join('paper:' + f for f in rst.PAPER_TABLES)} or a JSON path."
      )
    return spec, rst.PAPER_TABLES[family]
  table = rst.load_table(spec)
  return os.path.splitext(os.path.basename(spec))[0], table


def family_of(table: rst.RSTTable) -> str:
  """'bert' or 't5' (or any model family) from `applies_to` or a 'calibrated-<dev>-<family>-…' name."""
  family = dict(table.applies_to).get("family")
  if family:
    return str(family)
  m = re.match(r"calibrated-[^-]+-([a-z0-9]+)-", table.name)
  if m:
    return m.group(1)
  for fam in rst.PAPER_TABLES:
    if fam in table.name.split("-"):
      return fam
  raise CompareError(
    f"cannot tell the model family of RST table {table.name!r}; name it"
    " 'calibrated-<device>-<family>-<size>' or set applies_to.family."
  )


def size_of(table: rst.RSTTable) -> str:
  """The config size whose schedules and batch shape price the methods (default 'base')."""
  size = dict(table.applies_to).get("size")
  if size:
    return str(size)
  m = re.match(r"calibrated-[^-]+-[a-z0-9]+-([a-z0-9]+)", table.name)
  return m.group(1) if m else "base"


def depth_of(table: rst.RSTTable) -> int:
  return max(table.train)


# -------------------------------------------------------------------------------------------------
# Normalised step kinds.


def normalised(table: rst.RSTTable) -> dict:
  """{'train': {n: train[n]/train[L]}, 'forward': {n: forward[n]/train[L]}} (per sequence)."""
  full = table.train[depth_of(table)]
  return {
    "train": {int(n): float(v) / full for n, v in sorted(table.train.items())},
    "forward": {int(n): float(v) / full for n, v in sorted(table.forward.items())},
  }


def _entries(norm: dict) -> dict:
  return {(kind, n): v for kind in ("train", "forward") for n, v in norm[kind].items()}


# -------------------------------------------------------------------------------------------------
# Method implications.


def method_config(family: str, size: str, method: str, num_layers: int):
  """The config of `method` for `family`/`size`, at `num_layers` layers (schedules, recipes)."""
  c = get_config(family, f"size={size},method={method}")
  if int(c.model.num_layers) != num_layers:
    c.model.num_layers = num_layers
    for section, values in method_defaults(method, family, size).items():
      if section == "method" and "initial_layers" in values:
        c.method.initial_layers = 0  # automatic choice for the table's depth
  return c


def _seconds(table: rst.RSTTable, charge: rst.Charge) -> float:
  """`table.seconds(charge)`, with a (possibly fractional) depth missing from a partial table
  (`rst_depthwise --depths`) linearly interpolated between the nearest depths it has."""
  prices = {"train": table.train, "forward": table.forward}.get(charge.kind)
  layers = charge.layers
  if prices is None or layers in prices or len(prices) < 2:
    return table.seconds(
      charge._replace(layers=int(layers))
      if prices is not None and float(layers).is_integer()
      else charge
    )
  xs = sorted(prices)
  per_unit = float(np.interp(float(layers), xs, [prices[x] for x in xs]))
  return per_unit * charge.sequences / table.unit_sequences


def _cost(table: rst.RSTTable, charges) -> float:
  return sum(_seconds(table, c) for c in charges)


def mean_active_layers(method, points: int = 10_001) -> float:
  """RST-fraction average of the expected active layers L − D(f)·(L+1)/2 (drop prob D·i/L)."""
  L = method.num_layers
  f = np.linspace(0.0, 1.0, points)
  level = np.array([method.drop_level(x) for x in f])
  return float(np.trapezoid(L - level * (L + 1) / 2, f))


def method_costs(table: rst.RSTTable, family: str, size: str) -> dict:
  """{method: {'relative': RST per optimizer step / baseline's, ...details}} under `table`."""
  L = depth_of(table)
  out = {}
  base_cfg = method_config(family, size, "baseline", L)
  B = int(base_cfg.train.batch_size)
  baseline = _cost(table, build_method(base_cfg).charges(Plan(depth=L), B))
  out["baseline"] = {"relative": 1.0}

  stacking = Stacking(method_config(family, size, "stacking", L))
  stage_rel = [_cost(table, stacking.charges(Plan(depth=d), B)) / baseline for d in stacking.depths]
  bounds = [0.0, *stacking.fractions, 1.0]
  shares = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
  steps_per_baseline_step = sum(s / r for s, r in zip(shares, stage_rel))
  out["stacking"] = {
    "relative": 1.0 / steps_per_baseline_step,
    "depths": stacking.depths,
    "stage_fractions": shares,
    "stage_relative": stage_rel,
    "steps_vs_baseline": steps_per_baseline_step,
  }

  drop = LayerDrop(method_config(family, size, "layer_drop", L))
  mean_layers = mean_active_layers(drop)
  out["layer_drop"] = {
    "relative": _cost(table, [rst.Charge("train", mean_layers, B)]) / baseline,
    "mean_active_layers": mean_layers,
  }

  for name, cls, kwargs in (
    ("selective_backprop", SelectiveBackprop, {}),
    ("rho_loss", RhoLoss, {"il_losses": np.zeros(1, np.float32)}),
  ):
    m = cls(method_config(family, size, name, L), **kwargs)
    charges = m.charges(Plan(depth=L), B)
    out[name] = {"mega_batch_factor": m.mega_batch_factor}
    try:
      out[name]["relative"] = _cost(table, charges) / baseline
    except rst.RSTTableError as e:  # e.g. the paper's T5 table has no forward-only entries
      out[name].update(relative=None, unpriced=str(e))

  for name in ("lion", "sophia"):
    cfg = method_config(family, size, name, L)
    k = int(cfg.optim.get("update_interval", 1) or 1)
    steps = range(10 * k)
    hook = optimizer_hook(cfg)
    extra = sum(_cost(table, hook.charges(table, s, B, L)) for s in steps)
    entry = {"relative": 1.0 + extra / len(steps) / baseline}
    if name == "sophia":
      entry["update_interval"] = k
    out[name] = entry
  return out


# -------------------------------------------------------------------------------------------------
# The comparison.


def compare(specs: list[str]) -> dict:
  """The report of tables `specs` (first = reference); JSON-able."""
  if len(specs) < 2:
    raise CompareError("compare_rst needs at least two tables (JSON paths or paper:bert/paper:t5).")
  loaded = [load(s) for s in specs]
  families = {family_of(t) for _, t in loaded}
  if len(families) != 1:
    raise CompareError(
      f"tables are of different model families ({', '.join(sorted(families))});"
      " compare tables of one family at a time."
    )
  family = families.pop()
  depths = {depth_of(t) for _, t in loaded}
  if len(depths) != 1:
    raise CompareError(
      f"tables have different full depths ({sorted(depths)}); compare tables of"
      " the same model depth."
    )
  labels = _unique([label for label, _ in loaded])
  tables = []
  for label, (spec, table) in zip(labels, loaded):
    norm = normalised(table)
    tables.append(
      dict(
        label=label,
        spec=spec,
        name=table.name,
        machine=str(dict(table.meta).get("device") or dict(table.meta).get("machine", "")),
        unit_sequences=table.unit_sequences,
        normalised=norm,
        methods=method_costs(table, family, size_of(table)),
      )
    )
  ref = _entries(tables[0]["normalised"])
  ratios, drift = {}, None
  for t in tables[1:]:
    entries = _entries(t["normalised"])
    rs = {
      f"{kind}[{n}]": entries[(kind, n)] / ref[(kind, n)]
      for (kind, n) in sorted(ref)
      if (kind, n) in entries
    }
    ratios[t["label"]] = rs
    for key, r in rs.items():
      if drift is None or abs(math.log(r)) > abs(math.log(drift["ratio"])):
        drift = dict(entry=key, table=t["label"], ratio=r)
  return dict(
    family=family,
    num_layers=depths.pop(),
    reference=tables[0]["label"],
    tables=tables,
    ratios=ratios,
    largest_drift=drift,
  )


def _unique(labels):
  seen, out = {}, []
  for label in labels:
    seen[label] = seen.get(label, 0) + 1
    out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
  return out


# -------------------------------------------------------------------------------------------------
# Output.


def markdown(report: dict) -> str:
  tables = report["tables"]
  labels = [t["label"] for t in tables]
  L = report["num_layers"]
  lines = [f"# RST transfer: {report['family']} ({L} layers), reference {report['reference']}", ""]
  lines += ["| table | name | device | unit (sequences) |", "|---|---|---|---|"]
  lines += [
    f"| {t['label']} | {t['name']} | {t['machine']} | {t['unit_sequences']} |" for t in tables
  ]
  lines += ["", "## Step kinds, normalised to each table's full-depth training step", ""]
  lines += [
    "| kind | "
    + " | ".join(labels)
    + " | "
    + " | ".join(f"{l} / {labels[0]}" for l in labels[1:])
    + " |",
    "|---" * (1 + 2 * len(labels) - 1) + "|",
  ]
  keys = sorted(
    {k for t in tables for k in _entries(t["normalised"])}, key=lambda k: (k[0] != "train", k[1])
  )
  for kind, n in keys:
    vals = [t["normalised"][kind].get(n) for t in tables]
    rats = [report["ratios"][l].get(f"{kind}[{n}]") for l in labels[1:]]
    lines.append(
      f"| {kind}[{n}] | "
      + " | ".join(_fmt(v) for v in vals)
      + " | "
      + " | ".join(_fmt(r, "×") for r in rats)
      + " |"
    )
  d = report["largest_drift"]
  if d:
    lines += [
      "",
      f"Largest drift: {d['entry']} of {d['table']} is {d['ratio']:.2f}× the"
      f" reference's ({report['reference']}).",
    ]
  lines += ["", "## RST per optimizer step relative to the baseline, under each table", ""]
  lines += ["| method | " + " | ".join(labels) + " |", "|---" * (1 + len(labels)) + "|"]
  for m in _METHODS:
    lines.append(
      f"| {m} | " + " | ".join(_fmt(t["methods"][m]["relative"], "×") for t in tables) + " |"
    )
  st = tables[0]["methods"]["stacking"]
  ld = [t["methods"]["layer_drop"]["mean_active_layers"] for t in tables]
  lines += [
    "",
    f"Stacking: stages {st['depths']} for RST fractions "
    f"{[round(s, 3) for s in st['stage_fractions']]}, cost per step averaged over the"
    f" budget. Layer dropping: {ld[0]:.2f} mean active layers of {L}. Selection: forward"
    f" pass over a {tables[0]['methods']['rho_loss']['mega_batch_factor']}× mega-batch."
    f" Sophia: Hessian refresh every {tables[0]['methods']['sophia']['update_interval']}"
    " steps (or the table's per-step optimizer extra).",
  ]
  unpriced = sorted({m for t in tables for m in _METHODS if t["methods"][m]["relative"] is None})
  if unpriced:
    lines += [
      "",
      f"— : not priceable under that table ({', '.join(unpriced)}; e.g. no forward-only entries).",
    ]
  return "\n".join(lines) + "\n"


def _fmt(v, suffix=""):
  return "—" if v is None else f"{v:.3f}{suffix}"


def write(report: dict, output_dir: str) -> dict:
  """Writes compare_rst.json, compare_rst.md and (with matplotlib) compare_rst.png under
  `output_dir`; returns {kind: path} of what was written."""
  os.makedirs(output_dir, exist_ok=True)
  paths = {k: os.path.join(output_dir, f"compare_rst.{k}") for k in ("json", "md", "png")}
  with open(paths["json"], "w") as f:
    json.dump(_jsonable(report), f, indent=1)
  with open(paths["md"], "w") as f:
    f.write(markdown(report))
  try:
    figure(report, paths["png"])
  except ImportError:  # matplotlib is the optional `plots` extra
    print("No figure: matplotlib is not installed (pip install -e '.[plots]').")
    del paths["png"]
  return paths


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  return x


def figure(report: dict, path: str) -> None:
  """Left: normalised train/forward cost by depth per table; right: method cost per table."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
  for i, t in enumerate(report["tables"]):
    color = f"C{i}"
    for kind, style in (("train", "-"), ("forward", "--")):
      pts = sorted(t["normalised"][kind].items())
      if pts:
        xs, ys = zip(*pts)
        ax.plot(
          xs,
          ys,
          style,
          marker="o" if len(xs) == 1 else ".",
          color=color,
          label=f"{t['label']} {kind}",
        )
  ax.set_xlabel("active layers")
  ax.set_ylabel("cost / full-depth training step")
  ax.set_title(f"{report['family']}: step kinds per sequence")
  ax.legend(fontsize=7)
  width = 0.8 / len(report["tables"])
  x = np.arange(len(_METHODS))
  for i, t in enumerate(report["tables"]):
    bx.bar(
      x + i * width,
      [t["methods"][m]["relative"] or np.nan for m in _METHODS],
      width,
      label=t["label"],
      color=f"C{i}",
    )
  bx.axhline(1.0, color="k", lw=0.8)
  bx.set_xticks(x + width * (len(report["tables"]) - 1) / 2)
  bx.set_xticklabels(_METHODS, rotation=30, ha="right", fontsize=8)
  bx.set_ylabel("RST per optimizer step / baseline")
  bx.set_title("method cost per step")
  bx.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
