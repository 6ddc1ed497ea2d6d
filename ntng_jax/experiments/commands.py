"""The command lines of a sweep: each step is a subprocess of a launch script, so a sweep needs
nothing but those scripts and `--dry_run` can print them for cluster dispatch.

A run is `python -m launch.pretrain --config=FILE:ARGS,method=M,seed=S
--config.train.budget_hours=B --config.rst.table=TABLE --workdir=ROOT/<method>/budget-<B>/seed-<S>`;
rho_loss runs also get `--config.method.il_path=IL_PATH`.
"""

from __future__ import annotations

import os
import shlex
import sys

from ntng_jax.experiments.finetune_results import result_path
from ntng_jax.experiments.grid import (
  Run,
  SweepSpec,
  default_il_path,
  format_budget,
  il_run,
  needs_il,
  plan,
  table_path,
)


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
  return result_path(run.workdir, suite)


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
