"""The grid of a sweep: what to run (`SweepSpec`, validated before anything starts), its runs in
order and where each lives on disk.

Layout under the sweep root ROOT: ROOT/rst_table.json (the one table every run is charged by),
ROOT/<method>/budget-<B>/seed-<S>/ (one run's workdir), ROOT/il_model/budget-<B>/seed-0/ (the
irreducible-loss model, if rho_loss is in the grid), ROOT/logs/ and ROOT/sweep_status.json.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import shlex
from typing import Callable, Sequence

from configs import resolve_config_path
from ntng_jax.config import METHODS, ConfigError, check_method_name
from ntng_jax.errors import UserError

STATUS_FILE = "sweep_status.json"
TABLE_FILE = "rst_table.json"
COMPLETE = ("budget", "max_steps")  # stopped_because values of a finished run
DIVERGED = "nan"
IL_METHOD = "il_model"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_]+)?$")
# Flags the sweep sets itself; passing them through --extra would break the grid.
_RESERVED = (
  "--config.train.budget_hours",
  "--config.rst.table",
  "--config.method.name",
  "--config.seed",
  "--workdir",
  "--config=",
  "--config.method.il_path",
)


class SweepError(UserError, ValueError):
  """The sweep cannot be planned or cannot go on; the message says what to change."""


def format_budget(hours: float) -> str:
  """A budget as it appears in directory names and flags: 0.005 -> '0.005', 24.0 -> '24'."""
  return f"{float(hours):.10g}"


def run_dir(root: str, method: str, budget_hours: float, seed: int) -> str:
  return os.path.join(root, method, f"budget-{format_budget(budget_hours)}", f"seed-{seed}")


_RUN_DIR = re.compile(r"(?:^|/)([^/]+)/budget-([0-9.eE+-]+)/seed-(-?\d+)/?$")


def parse_run_dir(path: str) -> tuple[str, float, int] | None:
  """(method, budget_hours, seed) of a path laid out by `run_dir`, else None."""
  m = _RUN_DIR.search(path.replace(os.sep, "/"))
  if not m:
    return None
  try:
    return m.group(1), float(m.group(2)), int(m.group(3))
  except ValueError:
    return None


@dataclasses.dataclass(frozen=True)
class Run:
  method: str
  budget_hours: float
  seed: int
  workdir: str

  @property
  def key(self) -> str:
    return f"{self.method}/budget-{format_budget(self.budget_hours)}/seed-{self.seed}"

  @property
  def label(self) -> str:
    return f"{self.method} budget={format_budget(self.budget_hours)}h seed={self.seed}"


@dataclasses.dataclass
class SweepSpec:
  """What to run. `config` is 'FILE[:ARGS]' without method/seed (the sweep adds them)."""

  config: str
  methods: Sequence[str]
  budgets: Sequence[float]
  seeds: Sequence[int]
  root: str
  extra: Sequence[str] = ()  # flags for every pretrain (and the calibration, IL run)
  finetune: Sequence[str] = ()  # suites to fine-tune every complete run on, e.g. ('glue',)
  finetune_args: Sequence[str] = ()  # flags for every `launch.finetune`
  rst_table: str = "calibrate"  # calibrate | paper | PATH
  il_path: str = ""  # existing IL losses for rho_loss ('' = train them here)
  il_budget: float = 0.0  # RST hours of the IL model (0 = the largest budget)

  def __post_init__(self):
    self.methods = tuple(self.methods)
    self.budgets = tuple(float(b) for b in self.budgets)
    self.seeds = tuple(int(s) for s in self.seeds)
    self.extra = tuple(self.extra)
    self.finetune = tuple(self.finetune)
    self.finetune_args = tuple(self.finetune_args)


def parse_list(text: str, kind: Callable = str, what: str = "value") -> list:
  """'a,b, c' -> [kind('a'), ...]; an empty entry or a bad number is a SweepError."""
  items = [s.strip() for s in (text or "").split(",")]
  if not text or not all(items):
    raise SweepError(f"--{what} needs a comma-separated list without empty entries; got {text!r}.")
  try:
    return [kind(s) for s in items]
  except ValueError:
    raise SweepError(f"--{what}: every entry must be a {kind.__name__}; got {text!r}.") from None


def split_flags(values: Sequence[str]) -> list[str]:
  """--extra / --finetune_args values: each may hold several shell-quoted flags."""
  out = []
  for v in values:
    out.extend(shlex.split(v))
  return out


def known_methods() -> tuple[str, ...]:
  """The method names a run accepts (checked for every method before a sweep starts anything)."""
  return tuple(METHODS)


def validate(spec: SweepSpec) -> None:
  path, _, args = spec.config.partition(":")
  if not path:
    raise SweepError("--config must name a config file, e.g. configs/bert.py:size=tiny.")
  if not os.path.exists(resolve_config_path(path)):
    raise SweepError(
      f"config file {path!r} does not exist; pass --config=configs/bert.py or"
      " configs/t5.py (shipped configs are found from any directory)."
    )
  for item in filter(None, args.split(",")):
    key = item.partition("=")[0].strip()
    if key in ("method", "seed"):
      raise SweepError(
        f"--config must not set {key}= (got {spec.config!r}); the sweep sets it"
        " from --methods/--seeds."
      )
  if not spec.methods:
    raise SweepError("--methods is empty; name at least one method, e.g. --methods=baseline.")
  for m in spec.methods:
    if not _NAME.match(m):
      raise SweepError(
        f"method name {m!r} has characters other than letters, digits, '_', '.'"
        " and '-' (and one ':' in a 'module:Class' import path)."
      )
  methods = known_methods()
  for m in spec.methods:  # a user's 'module:Class': imported now, so a bad one starts nothing
    if ":" in m:
      try:
        check_method_name(m)
      except ConfigError as e:
        raise SweepError(f"--methods: {str(e).rstrip('.')} (nothing was started).") from None
  unknown = [m for m in spec.methods if m not in methods and ":" not in m]
  if unknown:
    close = difflib.get_close_matches(unknown[0], methods, n=1)
    raise SweepError(
      f"--methods names unknown method(s) {', '.join(unknown)} (nothing was"
      f" started); {'did you mean ' + close[0] + '? ' if close else ''}the methods"
      f" are {', '.join(m for m in methods if m != IL_METHOD)}."
    )
  if len(set(spec.methods)) != len(spec.methods):
    raise SweepError(f"--methods lists a method twice: {','.join(spec.methods)}.")
  if IL_METHOD in spec.methods:
    raise SweepError(
      f"{IL_METHOD} is not a method to compare; the sweep trains it itself when"
      " rho_loss is requested."
    )
  if not spec.budgets or any(not (b > 0 and math.isfinite(b)) for b in spec.budgets):
    raise SweepError(f"--budgets must be positive RST hours; got {spec.budgets}.")
  if len({format_budget(b) for b in spec.budgets}) != len(spec.budgets):
    raise SweepError(f"--budgets lists a budget twice: {spec.budgets}.")
  if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
    raise SweepError(f"--seeds must be distinct integers; got {spec.seeds}.")
  for flag in spec.extra:
    for reserved in _RESERVED:
      if flag == reserved or flag.startswith(reserved.rstrip("=") + "="):
        raise SweepError(
          f"--extra={flag} is set by the sweep itself; use --budgets, --methods,"
          " --seeds, --root, --rst_table or --il_path instead."
        )
  if spec.rst_table not in ("calibrate", "paper") and not os.path.exists(spec.rst_table):
    raise SweepError(
      f"--rst_table={spec.rst_table!r} is neither 'calibrate', 'paper' nor an existing table file."
    )
  if spec.il_budget < 0:
    raise SweepError(
      f"--il_budget must be positive RST hours (0 = the largest budget); got {spec.il_budget}."
    )


# -------------------------------------------------------------------------------------------------
# Planning: the runs in order.


def plan(spec: SweepSpec) -> list[Run]:
  """Runs in execution order: seed-major, then budget, then method, so a first complete picture
  (every method at every budget) exists after the first seed."""
  return [
    Run(m, b, s, run_dir(spec.root, m, b, s))
    for s in spec.seeds
    for b in spec.budgets
    for m in spec.methods
  ]


def il_run(spec: SweepSpec) -> Run:
  budget = spec.il_budget or max(spec.budgets)
  return Run(IL_METHOD, budget, 0, run_dir(spec.root, IL_METHOD, budget, 0))


def default_il_path(spec: SweepSpec) -> str:
  """Where `launch.extract_il --workdir=IL_RUN` writes by default (IL_RUN/il_losses)."""
  return os.path.join(il_run(spec).workdir, "il_losses")


def needs_il(spec: SweepSpec) -> bool:
  return "rho_loss" in spec.methods and not spec.il_path


def table_path(spec: SweepSpec) -> str:
  if spec.rst_table == "calibrate":
    return os.path.join(spec.root, TABLE_FILE)
  return spec.rst_table
