"""Sweeps: a grid of pre-training runs (methods × RST budgets × seeds), all priced by one RST table.

Layout under the sweep root `ROOT`:

  ROOT/rst_table.json                       the one table every run is charged by (calibrated once)
  ROOT/<method>/budget-<B>/seed-<S>/        one run's workdir (metrics.jsonl, summary.json, ...)
  ROOT/il_model/budget-<B>/seed-0/          the irreducible-loss model, if rho_loss is in the grid
  ROOT/logs/<method>-budget-<B>-seed-<S>.log  each subprocess's console output
  ROOT/sweep_status.json                    what happened to every run (written after each change)

Each run is a subprocess `python -m launch.pretrain --config=FILE:ARGS,method=M,seed=S
--config.train.budget_hours=B --config.rst.table=ROOT/rst_table.json --workdir=...`, so a sweep
needs nothing but the launch scripts and can be re-run at any time: a run whose summary.json says
`stopped_because` budget or max_steps is complete and skipped, one that diverged (nan) is a result
and skipped too, an interrupted or failed one is simply started again (the trainer resumes from its
last checkpoint). A run that exits non-zero is recorded as failed (with the last error line of its
log) and the grid goes on; methods that are not available in this build therefore show up as
failed runs, never as silently missing ones.

Fairness: every run of a sweep must be priced by the same RST table (a per-run calibration would
give every method its own clock). `rst_table='calibrate'` (default) times the config once with
`python -m launch.calibrate_rst` into ROOT/rst_table.json; 'paper' uses the paper's table (base
models); any other value is the path of an existing table.

RHO-loss needs an irreducible-loss model: when `rho_loss` is among the methods (and no `il_path`
is given) the sweep first trains `method=il_model` (seed 0, the largest budget unless `il_budget`),
then runs `python -m launch.extract_il --workdir=IL_RUN`, and passes
`--config.method.il_path=IL_PATH` to every rho_loss run. IL_PATH is the last path extract_il
reports on a line `Wrote PATH.` (the house convention of the launch scripts), otherwise its default
output IL_RUN/il_losses (also what `--dry_run` prints).

This module does not import jax: the subprocesses own the accelerators.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Callable, Sequence, TextIO

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


class SweepInterrupted(RuntimeError):
  """The user interrupted the sweep (Ctrl-C / SIGTERM); the running run saved a checkpoint."""


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
  from ntng_jax.config import METHODS  # no jax: the config module only knows the names

  return tuple(METHODS)


def validate(spec: SweepSpec) -> None:
  path, _, args = spec.config.partition(":")
  if not path:
    raise SweepError("--config must name a config file, e.g. configs/bert.py:size=tiny.")
  from ntng_jax.config import resolve_config_path

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
      from ntng_jax.config import ConfigError, check_method_name

      try:
        check_method_name(m)
      except ConfigError as e:
        raise SweepError(f"--methods: {str(e).rstrip('.')} (nothing was started).") from None
  unknown = [m for m in spec.methods if m not in methods and ":" not in m]
  if unknown:
    import difflib

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
# Planning: runs and their commands.


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


def _config_flag(spec: SweepSpec, method: str | None, seed: int | None) -> str:
  path, _, args = spec.config.partition(":")
  items = [a for a in args.split(",") if a]
  if method is not None:
    items += [f"method={method}", f"seed={seed}"]
  return f"--config={path}" + (f":{','.join(items)}" if items else "")


def calibrate_command(spec: SweepSpec, python: str = sys.executable) -> list[str]:
  return [
    python,
    "-m",
    "launch.calibrate_rst",
    _config_flag(spec, None, None),
    f"--output={table_path(spec)}",
    f"--workdir={os.path.join(spec.root, 'calibration')}",
    *spec.extra,
  ]


def pretrain_command(
  spec: SweepSpec, run: Run, il_path: str | None = None, python: str = sys.executable
) -> list[str]:
  cmd = [
    python,
    "-m",
    "launch.pretrain",
    _config_flag(spec, run.method, run.seed),
    f"--config.train.budget_hours={format_budget(run.budget_hours)}",
    f"--config.rst.table={table_path(spec)}",
    f"--workdir={run.workdir}",
    *spec.extra,
  ]
  if run.method == "rho_loss":
    cmd.append(f"--config.method.il_path={il_path or spec.il_path or default_il_path(spec)}")
  return cmd


def extract_command(spec: SweepSpec, python: str = sys.executable) -> list[str]:
  return [python, "-m", "launch.extract_il", f"--workdir={il_run(spec).workdir}"]


def finetune_command(
  spec: SweepSpec, run: Run, suite: str, python: str = sys.executable
) -> list[str]:
  return [
    python,
    "-m",
    "launch.finetune",
    f"--pretrained={run.workdir}",
    f"--suite={suite}",
    *spec.finetune_args,
  ]


def finetune_result(run: Run, suite: str) -> str:
  return os.path.join(run.workdir, "finetune", f"{suite}.json")


def dry_run_lines(spec: SweepSpec, python: str = "python") -> list[str]:
  """Shell lines for cluster dispatch: comments, then the preparatory commands (run them first,
  in order), then one line per run (pre-training `&&` its fine-tuning)."""
  q = shlex.join
  lines = [
    f"# sweep {spec.root}: {len(spec.methods)} methods x {len(spec.budgets)} budgets x"
    f" {len(spec.seeds)} seeds = {len(plan(spec))} runs"
  ]
  if spec.rst_table == "calibrate":
    lines.append("# 1. the one RST table of the sweep (run first; skip if it exists)")
    lines.append(q(calibrate_command(spec, python)))
  if needs_il(spec):
    lines.append("# 2. the irreducible-loss model for rho_loss, then its losses (before rho_loss)")
    lines.append(
      q(pretrain_command(spec, il_run(spec), python=python))
      + " && "
      + q(extract_command(spec, python))
    )
  lines.append("# runs (independent of each other; each resumes if restarted)")
  for run in plan(spec):
    parts = [q(pretrain_command(spec, run, python=python))]
    parts += [q(finetune_command(spec, run, s, python)) for s in spec.finetune]
    lines.append(" && ".join(parts))
  return lines


# -------------------------------------------------------------------------------------------------
# Run state on disk.


def read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def read_summary(workdir: str) -> dict | None:
  return read_json(os.path.join(workdir, "summary.json"))


def run_state(workdir: str) -> str:
  """'complete', 'diverged', 'partial' (a workdir without a final summary) or 'new'."""
  summary = read_summary(workdir)
  if summary is not None:
    if summary.get("stopped_because") in COMPLETE:
      return "complete"
    if summary.get("stopped_because") == DIVERGED:
      return "diverged"
  return "partial" if os.path.isdir(workdir) else "new"


_ERROR_LINE = re.compile(r"^(error:|[A-Za-z_.]*(Error|Exception|Interrupt)\b)")


def error_line(log_text: str) -> str:
  """The most telling line of a failed run's output: the last 'error: ...' or 'XError: ...' line,
  else the last non-empty one."""
  lines = [l.strip() for l in log_text.splitlines() if l.strip()]
  for line in reversed(lines):
    if _ERROR_LINE.match(line):
      return line[:400]
  return lines[-1][:400] if lines else "(no output)"


def _wrote_path(log_text: str) -> str | None:
  for line in reversed(log_text.splitlines()):
    m = re.match(r"^\s*Wrote\s+(\S+?)\.?\s*$", line)
    if m:
      return m.group(1)
  return None


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _fmt_seconds(s: float | None) -> str:
  if s is None or not math.isfinite(s):
    return "?"
  return str(datetime.timedelta(seconds=int(round(s))))


class Eta:
  """Wall seconds still needed, from the runs executed so far: a least-squares line
  `seconds = a + b * budget_hours` once two budgets have been seen (start-up costs are the
  intercept), else seconds proportional to the budget."""

  def __init__(self):
    self.samples: list[tuple[float, float]] = []
    self.extra: dict[str, list[float]] = {}  # other steps (fine-tuning) by name

  def add(self, budget_hours: float, seconds: float) -> None:
    self.samples.append((budget_hours, seconds))

  def add_extra(self, name: str, seconds: float) -> None:
    self.extra.setdefault(name, []).append(seconds)

  def predict(self, budget_hours: float) -> float | None:
    if not self.samples:
      return None
    xs = [b for b, _ in self.samples]
    ys = [s for _, s in self.samples]
    if len(set(xs)) >= 2:
      mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
      slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
      slope = max(slope, 0.0)
      return max(my + slope * (budget_hours - mx), 0.0)
    return sum(ys) / len(ys) * budget_hours / xs[0]

  def remaining(self, budgets: Sequence[float], extras: Sequence[str] = ()) -> float | None:
    total = 0.0
    for b in budgets:
      p = self.predict(b)
      if p is None:
        return None
      total += p
    for name in extras:
      if name in self.extra:
        total += sum(self.extra[name]) / len(self.extra[name])
    return total


# -------------------------------------------------------------------------------------------------
# Execution.


class Sweep:
  """Runs a `SweepSpec` and keeps ROOT/sweep_status.json up to date.

  `python` is the interpreter of the subprocesses (tests substitute a stub); `verbose` echoes
  every subprocess's output to `out` as well as to its log.
  """

  def __init__(
    self,
    spec: SweepSpec,
    out: TextIO = sys.stdout,
    python: str = sys.executable,
    verbose: bool = False,
  ):
    validate(spec)
    self.spec, self.out, self.python, self.verbose = spec, out, python, verbose
    self.status_path = os.path.join(spec.root, STATUS_FILE)
    self.status = read_json(self.status_path) or {}
    self.status.setdefault("runs", {})
    self.eta = Eta()

  # -- bookkeeping -------------------------------------------------------------------------------
  def say(self, message: str) -> None:
    print(message, file=self.out, flush=True)

  def save_status(self) -> None:
    self.status["updated"] = _now()
    os.makedirs(self.spec.root, exist_ok=True)
    tmp = self.status_path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.status, f, indent=1, sort_keys=True)
    os.replace(tmp, self.status_path)

  def _entry(self, run: Run) -> dict:
    entry = self.status["runs"].setdefault(run.key, {})
    entry.update(
      method=run.method, budget_hours=run.budget_hours, seed=run.seed, workdir=run.workdir
    )
    return entry

  def _log_path(self, name: str) -> str:
    return os.path.join(self.spec.root, "logs", name.replace("/", "-") + ".log")

  def execute(self, cmd: list[str], log_name: str) -> tuple[int, float, str, str]:
    """Runs `cmd`, appending its output to ROOT/logs/<log_name>.log; returns (exit code, wall
    seconds, this execution's output, log path). Ctrl-C reaches the child too (same process group)
    and SIGTERM is forwarded to it; the trainer then checkpoints and exits, and SweepInterrupted
    is raised."""
    log_path = self._log_path(log_name)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.time()
    chunks = []
    with open(log_path, "a") as log:
      log.write(f"\n=== {_now()} $ {shlex.join(cmd)}\n")
      log.flush()
      procs, interrupted = [], False

      def forward(signum, frame):  # SIGTERM to the sweep: the run checkpoints and exits, as on ^C
        nonlocal interrupted
        del frame
        interrupted = True
        for p in procs:
          if p.poll() is None:
            p.send_signal(signum)

      try:
        old_handler = signal.signal(signal.SIGTERM, forward)
      except ValueError:  # not the main thread
        old_handler = None
      proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
      )
      procs.append(proc)
      if interrupted:  # a SIGTERM arrived before the child existed
        proc.send_signal(signal.SIGTERM)
      try:
        while True:
          try:
            for line in proc.stdout:
              chunks.append(line)
              log.write(line)
              if self.verbose:
                self.out.write("    | " + line)
            break
          except KeyboardInterrupt:
            if interrupted:  # second Ctrl-C: stop waiting for the child's checkpoint
              proc.kill()
              raise
            interrupted = True
            self.say(
              "  Interrupted: waiting for the run to save a checkpoint (Ctrl-C again to abort)."
            )
        proc.wait()
      finally:
        if old_handler is not None:
          signal.signal(signal.SIGTERM, old_handler)
        if proc.poll() is None:
          proc.kill()
          proc.wait()
    if interrupted:
      raise SweepInterrupted(log_name)
    return proc.returncode, time.time() - start, "".join(chunks), log_path

  # -- the steps of a sweep ----------------------------------------------------------------------
  def prepare_table(self) -> str | None:
    """Calibrates ROOT/rst_table.json once (an existing one is reused); returns the table path."""
    spec = self.spec
    self.status["rst_table"] = spec.rst_table if spec.rst_table != "calibrate" else table_path(spec)
    if spec.rst_table != "calibrate":
      self.say(f"RST table: {spec.rst_table} (shared by every run).")
      return spec.rst_table
    path = table_path(spec)
    if os.path.exists(path):
      self.say(f"RST table: {path} (calibrated earlier; shared by every run).")
      return path
    self.say(f"Calibrating the sweep's RST table into {path} ...")
    rc, seconds, text, log = self.execute(calibrate_command(spec, self.python), "calibrate_rst")
    if rc != 0 or not os.path.exists(path):
      self.status["calibration"] = dict(
        status="failed", returncode=rc, error=error_line(text), log=log
      )
      self.save_status()
      raise SweepError(
        f"calibrating the RST table failed (exit {rc}): {error_line(text)}"
        f" (log: {log}); every run needs it, so the sweep stops."
      )
    self.status["calibration"] = dict(status="done", seconds=round(seconds, 1), log=log)
    self.say(f"  calibrated in {_fmt_seconds(seconds)}.")
    return path

  def prepare_il(self) -> tuple[str | None, str | None]:
    """Trains the IL model and extracts its losses; returns (il_path, None) or (None, reason)."""
    spec = self.spec
    if spec.il_path:
      return spec.il_path, None
    run = il_run(spec)
    il = self.status.setdefault("il_model", {})
    il.update(workdir=run.workdir, budget_hours=run.budget_hours)
    if (
      il.get("status") == "done"
      and il.get("il_path")
      and os.path.exists(il["il_path"])
      and run_state(run.workdir) == "complete"
    ):
      self.say(f"IL model: {il['il_path']} (extracted earlier).")
      return il["il_path"], None
    if run_state(run.workdir) != "complete":
      self.say(f"Training the irreducible-loss model for rho_loss ({run.label}) ...")
      rc, seconds, text, log = self.execute(
        pretrain_command(spec, run, python=self.python), run.key
      )
      if rc != 0 or run_state(run.workdir) != "complete":
        reason = f"the IL model run failed (exit {rc}): {error_line(text)}"
        il.update(status="failed", returncode=rc, error=error_line(text), log=log)
        self.save_status()
        self.say(f"  {reason}")
        return None, reason
      self.say(f"  trained in {_fmt_seconds(seconds)}.")
    self.say(f"Extracting IL losses from {run.workdir} ...")
    rc, seconds, text, log = self.execute(extract_command(spec, self.python), "extract_il")
    if rc != 0:
      reason = f"extracting the IL losses failed (exit {rc}): {error_line(text)}"
      il.update(status="failed", returncode=rc, error=error_line(text), log=log)
      self.save_status()
      self.say(f"  {reason}")
      return None, reason
    wrote = _wrote_path(text)
    il_path = wrote if wrote and os.path.exists(wrote) else default_il_path(spec)
    il.update(status="done", il_path=il_path, log=log)
    il.pop("error", None)
    self.save_status()
    self.say(f"  IL losses: {il_path}")
    return il_path, None

  def run_one(self, run: Run, il_path: str | None, il_error: str | None) -> str:
    """Pre-trains one run unless complete; returns its status: done, diverged, failed."""
    entry = self._entry(run)
    state = run_state(run.workdir)
    if state in ("complete", "diverged"):
      summary = read_summary(run.workdir) or {}
      entry.update(
        status="done" if state == "complete" else "diverged",
        stopped_because=summary.get("stopped_because"),
      )
      if state == "complete":
        entry.pop("error", None)
      self.say(f"  {'complete' if state == 'complete' else 'diverged (nan)'} earlier: skipped.")
      return entry["status"]
    if run.method == "rho_loss" and il_error:
      entry.update(status="failed", returncode=None, error=f"not started: {il_error}")
      self.save_status()
      self.say(f"  not started: {il_error}")
      return "failed"
    cmd = pretrain_command(self.spec, run, il_path, self.python)
    self.say(f"  {'resuming' if state == 'partial' else 'starting'}: {shlex.join(cmd[1:])}")
    entry.update(status="running", command=shlex.join(cmd), started=_now())
    self.save_status()
    try:
      rc, seconds, text, log = self.execute(cmd, run.key)
    except SweepInterrupted:
      entry.update(status="interrupted")
      self.save_status()
      raise
    summary = read_summary(run.workdir) or {}
    entry.update(
      returncode=rc,
      wall_seconds=round(seconds, 1),
      log=log,
      stopped_because=summary.get("stopped_because"),
      finished=_now(),
    )
    state = run_state(run.workdir)
    if rc == 0 and state == "complete":
      entry["status"] = "done"
      entry.pop("error", None)
      self.eta.add(run.budget_hours, seconds)
    elif state == "diverged":
      entry.update(status="diverged", error=error_line(text))
      self.eta.add(run.budget_hours, seconds)
    elif rc == 0 and summary.get("stopped_because") == "interrupt":
      entry["status"] = "interrupted"
      self.save_status()
      raise SweepInterrupted(run.key)
    else:
      entry.update(status="failed", error=error_line(text))
    self.save_status()
    return entry["status"]

  def finetune_one(self, run: Run) -> None:
    entry = self._entry(run)
    results = entry.setdefault("finetune", {})
    for suite in self.spec.finetune:
      path = finetune_result(run, suite)
      if os.path.exists(path):
        results[suite] = dict(status="done", path=path)
        continue
      self.say(f"    fine-tuning on {suite} ...")
      rc, seconds, text, log = self.execute(
        finetune_command(self.spec, run, suite, self.python), f"{run.key}/finetune-{suite}"
      )
      if rc == 0 and os.path.exists(path):
        results[suite] = dict(status="done", path=path, wall_seconds=round(seconds, 1), log=log)
        self.eta.add_extra(suite, seconds)
        self.say(f"    {suite}: done in {_fmt_seconds(seconds)}.")
      else:
        results[suite] = dict(status="failed", returncode=rc, error=error_line(text), log=log)
        self.say(f"    {suite}: FAILED (exit {rc}): {error_line(text)}")
      self.save_status()

  def run(self) -> dict:
    """Runs the whole grid; returns the status dict (also in ROOT/sweep_status.json)."""
    spec = self.spec
    runs = plan(spec)
    self.status.update(
      config=spec.config,
      methods=list(spec.methods),
      budgets=list(spec.budgets),
      seeds=list(spec.seeds),
      extra=list(spec.extra),
      finetune=list(spec.finetune),
      finetune_args=list(spec.finetune_args),
      started=_now(),
    )
    for run in runs:  # every planned run is listed from the start, as pending until it is run
      entry = self._entry(run)
      entry.setdefault("status", "pending")
      if entry["status"] in ("done", "diverged") and entry.get("wall_seconds"):
        self.eta.add(run.budget_hours, float(entry["wall_seconds"]))  # timings of earlier sweeps
    self.save_status()
    self.say(
      f"Sweep {spec.root}: {len(spec.methods)} methods x {len(spec.budgets)} budgets x"
      f" {len(spec.seeds)} seeds = {len(runs)} runs."
    )
    self.prepare_table()
    il_path = il_error = None
    if "rho_loss" in spec.methods:
      il_path, il_error = self.prepare_il()
    counts = dict(done=0, diverged=0, failed=0)
    todo = [r for r in runs if run_state(r.workdir) not in ("complete", "diverged")]
    start = time.time()
    for i, run in enumerate(runs, 1):
      self.say(f"[{i}/{len(runs)}] {run.label}")
      status = self.run_one(run, il_path, il_error)
      if status == "done" and spec.finetune:
        self.finetune_one(run)
      counts[status] = counts.get(status, 0) + 1
      if run in todo:
        todo.remove(run)
      entry = self.status["runs"][run.key]
      if status == "failed" and entry.get("returncode") is not None:
        self.say(
          f"  FAILED (exit {entry['returncode']}): {entry.get('error')}"
          f" (log: {entry.get('log', '-')})"
        )
      elif "wall_seconds" in entry and entry.get("finished", "") >= self.status["started"]:
        self.say(
          f"  {status} ({entry.get('stopped_because')}) in {_fmt_seconds(entry['wall_seconds'])}."
        )
      eta = self.eta.remaining(
        [r.budget_hours for r in todo], [s for r in todo for s in spec.finetune]
      )
      self.say(
        f"  progress: {counts['done']} done, {counts['diverged']} diverged,"
        f" {counts['failed']} failed, {len(runs) - i} to go | elapsed"
        f" {_fmt_seconds(time.time() - start)} | ETA {_fmt_seconds(eta)}"
      )
    ft_failed = sum(
      1
      for r in runs
      for v in self.status["runs"][r.key].get("finetune", {}).values()
      if v.get("status") == "failed"
    )
    self.status.update(finished=_now(), counts=counts, finetune_failed=ft_failed)
    self.save_status()
    self.say(
      f"Sweep finished: {counts['done']} done, {counts['diverged']} diverged,"
      f" {counts['failed']} failed"
      + (f", {ft_failed} fine-tunings failed" if ft_failed else "")
      + f". Status: {self.status_path}; report: python -m launch.report --root={spec.root}"
    )
    return self.status
