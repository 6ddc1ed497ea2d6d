"""The sweep driver: runs a grid (`grid.SweepSpec`) step by step, keeping ROOT/sweep_status.json
up to date. Re-running is safe: complete and diverged runs are skipped (unless their run.json
records other values for the fields the sweep sets: those fail in one sentence), interrupted or
failed ones started again (the trainer resumes). A failed run is recorded with its error line and the
grid goes on. Every run is priced by one RST table (calibrated once into ROOT/rst_table.json,
'paper', or a given file); with rho_loss in the grid the IL model is trained and its losses
extracted first. No jax here: the subprocesses own the accelerators.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sys
import time
from typing import TextIO

from ntng_jax.experiments.commands import (
  calibrate_command,
  extract_command,
  finetune_command,
  finetune_result,
  pretrain_command,
)
from ntng_jax.experiments.eta import Eta, fmt_seconds
from ntng_jax.experiments.grid import (
  STATUS_FILE,
  Run,
  SweepError,
  SweepSpec,
  default_il_path,
  il_run,
  plan,
  run_dir,
  table_path,
  validate,
)
from ntng_jax.experiments.run_files import (
  identity_mismatch,
  read_json,
  read_summary,
  run_state,
)
from ntng_jax.experiments.runner import (
  SweepInterrupted,
  error_line,
  now,
  run_logged,
  wrote_path,
)

# The driver's callers (launch.sweep, tests) also reach these through this module.
__all__ = ["Sweep", "SweepError", "SweepInterrupted", "SweepSpec", "run_dir"]


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
    self._own_runs: set[str] = set()  # the keys of the runs this sweep planned
    self.eta = Eta()

  # -- bookkeeping -------------------------------------------------------------------------------
  def say(self, message: str) -> None:
    print(message, file=self.out, flush=True)

  def save_status(self) -> None:
    """Writes the status under a lock on ROOT, merged with what another sweep on the same root
    (a disjoint part of its grid) wrote since: its runs' entries are kept, this sweep's are ours."""
    self.status["updated"] = now()
    os.makedirs(self.spec.root, exist_ok=True)
    root_fd = os.open(self.spec.root, os.O_RDONLY)
    try:
      fcntl.flock(root_fd, fcntl.LOCK_EX)
      on_disk = (read_json(self.status_path) or {}).get("runs", {})
      ours = self.status["runs"]
      self.status["runs"] = {**on_disk, **{k: ours[k] for k in ours if k in self._own_runs}}
      tmp = self.status_path + ".tmp"
      with open(tmp, "w") as f:
        json.dump(self.status, f, indent=1, sort_keys=True)
      os.replace(tmp, self.status_path)
    finally:
      os.close(root_fd)  # releases the lock

  def _entry(self, run: Run) -> dict:
    self._own_runs.add(run.key)
    entry = self.status["runs"].setdefault(run.key, {})
    entry.update(
      method=run.method, budget_hours=run.budget_hours, seed=run.seed, workdir=run.workdir
    )
    return entry

  def _log_path(self, name: str) -> str:
    return os.path.join(self.spec.root, "logs", name.replace("/", "-") + ".log")

  def execute(self, cmd: list[str], log_name: str) -> tuple[int, float, str, str]:
    """Runs `cmd` (see `runner.run_logged`) with its output in ROOT/logs/<log_name>.log; returns
    (exit code, wall seconds, this execution's output, log path)."""
    log_path = self._log_path(log_name)
    echo = self.out if self.verbose else None
    rc, seconds, text = run_logged(cmd, log_path, log_name, echo, self.say)
    return rc, seconds, text, log_path

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
    self.say(f"  calibrated in {fmt_seconds(seconds)}.")
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
      self.say(f"  trained in {fmt_seconds(seconds)}.")
    self.say(f"Extracting IL losses from {run.workdir} ...")
    rc, seconds, text, log = self.execute(extract_command(spec, self.python), "extract_il")
    if rc != 0:
      reason = f"extracting the IL losses failed (exit {rc}): {error_line(text)}"
      il.update(status="failed", returncode=rc, error=error_line(text), log=log)
      self.save_status()
      self.say(f"  {reason}")
      return None, reason
    wrote = wrote_path(text)
    il_path = wrote if wrote and os.path.exists(wrote) else default_il_path(spec)
    il.update(status="done", il_path=il_path, log=log)
    il.pop("error", None)
    self.save_status()
    self.say(f"  IL losses: {il_path}")
    return il_path, None

  def run_one(self, run: Run, il_path: str | None, il_error: str | None) -> str:
    """Pre-trains one run unless complete; returns its status: done, diverged, failed. A
    finished run whose run.json records other values for the fields the command sets is failed
    with one sentence, not skipped as if it were this sweep's."""
    entry = self._entry(run)
    state = run_state(run.workdir)
    cmd = pretrain_command(self.spec, run, il_path, self.python)
    changed = identity_mismatch(run.workdir, cmd) if state in ("complete", "diverged") else []
    if changed:
      error = (
        f"{run.workdir} finished with other settings ({'; '.join(changed)}), so it is not this"
        " sweep's run; move it aside or use another --root to run it with these settings"
      )
      entry.update(status="failed", returncode=None, error=error)
      self.save_status()
      self.say(f"  not started: {error}.")
      return "failed"
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
    self.say(f"  {'resuming' if state == 'partial' else 'starting'}: {shlex.join(cmd[1:])}")
    entry.update(status="running", command=shlex.join(cmd), started=now())
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
      finished=now(),
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
        self.say(f"    {suite}: done in {fmt_seconds(seconds)}.")
      else:
        results[suite] = dict(status="failed", returncode=rc, error=error_line(text), log=log)
        self.say(f"    {suite}: FAILED (exit {rc}): {error_line(text)}")
      self.save_status()

  def run(self) -> dict:
    """Runs the whole grid; returns the status dict (also in ROOT/sweep_status.json)."""
    spec = self.spec
    runs = plan(spec)
    self.status.update(
      root=spec.root,
      config=spec.config,
      methods=list(spec.methods),
      budgets=list(spec.budgets),
      seeds=list(spec.seeds),
      extra=list(spec.extra),
      finetune=list(spec.finetune),
      finetune_args=list(spec.finetune_args),
      started=now(),
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
          f"  {status} ({entry.get('stopped_because')}) in {fmt_seconds(entry['wall_seconds'])}."
        )
      eta = self.eta.remaining(
        [r.budget_hours for r in todo], [s for r in todo for s in spec.finetune]
      )
      self.say(
        f"  progress: {counts['done']} done, {counts['diverged']} diverged,"
        f" {counts['failed']} failed, {len(runs) - i} to go | elapsed"
        f" {fmt_seconds(time.time() - start)} | ETA {fmt_seconds(eta)}"
      )
    ft_failed = sum(
      1
      for r in runs
      for v in self.status["runs"][r.key].get("finetune", {}).values()
      if v.get("status") == "failed"
    )
    self.status.update(finished=now(), counts=counts, finetune_failed=ft_failed)
    self.save_status()
    self.say(
      f"Sweep finished: {counts['done']} done, {counts['diverged']} diverged,"
      f" {counts['failed']} failed"
      + (f", {ft_failed} fine-tunings failed" if ft_failed else "")
      + f". Status: {self.status_path}; report: python -m launch.report --root={spec.root}"
    )
    return self.status
