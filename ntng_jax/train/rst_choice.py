"""Which RST table prices a run (`rst.table`), and whether its budget buys a step at all.

`rst.table`:
- 'auto' (default): the table this workdir's run started with (`WORKDIR/rst_table.json`), else
  the paper's table for the paper's shapes, else the built-in reference table of a shipped config
  (`ntng_jax/rst_tables/`, matched by step-shape fingerprint), else a table calibrated on this
  machine at start-up — said on the console, since its step counts then depend on the machine
  and its load;
- 'paper': the paper's table (the config must be the paper's model and sequence length);
- a path: a JSON table (e.g. written by `python -m launch.calibrate_rst`), checked against the
  config's fingerprint.

The chosen table is written to `WORKDIR/rst_table.json`, so a run keeps its clock when resumed.
In a multi-process job every process takes part in a calibration (its programs are collective)
and then uses process 0's table, so all processes run on one clock.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from ntng_jax import rst
from ntng_jax.errors import ConfigError

TABLE_FILE = "rst_table.json"


def resolve_rst_table(config, workdir: str, calibrate_fn) -> rst.RSTTable:
  """The table of `config.rst.table` (see the module docstring); `calibrate_fn()` measures one."""
  choice = config.rst.table
  cached = os.path.join(workdir, TABLE_FILE)
  if choice == "paper":
    table = rst.paper_table_for(config)
    if table is None:
      raise ConfigError(
        "rst.table='paper' only prices the paper's base models at their sequence length;"
        " use rst.table=auto (a built-in or calibrated table) or a table file for this config."
      )
  elif choice != "auto":
    table = rst.load_table(choice, config)
  else:
    table = _auto_table(config, cached, calibrate_fn)
  if jax.process_index() == 0 and not _same_table_on_disk(table, cached):
    rst.save_table(table, cached)
  return table


def _auto_table(config, cached: str, calibrate_fn) -> rst.RSTTable:
  have_cache = os.path.exists(cached)
  if jax.process_count() > 1:  # calibration is collective: all processes calibrate, or none
    have_cache = bool(np.all(multihost_utils.process_allgather(np.int32(have_cache))))
  if have_cache:  # the clock this run started with
    return rst.load_table(cached, config)
  table = rst.reference_table_for(config)
  if table is not None:
    return table
  print(
    f"No reference RST table matches this config (step-shape fingerprint"
    f" {rst.step_shape_fingerprint(config)}); calibrating one on this machine, so the number"
    " of steps depends on this machine and its load. To compare runs, calibrate once with"
    " `python -m launch.calibrate_rst --config=... --output=TABLE.json` and pass"
    " --config.rst.table=TABLE.json to every run.",
    flush=True,
  )
  return _table_of_process_zero(calibrate_fn())


def _same_table_on_disk(table: rst.RSTTable, path: str) -> bool:
  try:
    with open(path) as f:
      return rst.RSTTable.from_json(json.load(f)) == table
  except (OSError, ValueError, rst.RSTTableError):
    return False


def _table_of_process_zero(table: rst.RSTTable) -> rst.RSTTable:
  """Process 0's table on every process (identity in a one-process run)."""
  if jax.process_count() == 1:
    return table
  payload = json.dumps(table.to_json()).encode() if jax.process_index() == 0 else b""
  buffer = np.zeros(1 << 16, np.uint8)
  buffer[: len(payload)] = np.frombuffer(payload, np.uint8)
  buffer = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
  return rst.RSTTable.from_json(json.loads(bytes(buffer).rstrip(b"\0")))


def check_budget_buys_a_step(config, table: rst.RSTTable, first_step_cost: float) -> None:
  """A ConfigError if the RST budget cannot pay for the run's first step (a run of 0 steps)."""
  budget = float(config.train.budget_hours) * 3600.0
  if first_step_cost > budget * (1 + 1e-12):
    raise ConfigError(
      f"train.budget_hours={config.train.budget_hours} ({budget:.4g} RST s) buys no step: the"
      f" first step costs {first_step_cost:.4g} RST s under RST table {table.name!r}; raise"
      f" train.budget_hours to at least {first_step_cost / 3600.0:.3g}."
    )
