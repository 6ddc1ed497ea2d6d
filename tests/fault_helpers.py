"""Shared pieces of the fault-injection tests: a tiny run on a fixed RST table, a prepared data
template (so each workdir skips tokenizer training), simulated kills at a save phase, and
snapshots that compare runs bitwise (records and summary minus wall time, every state leaf)."""

import json
import os
import shutil
import warnings

import numpy as np
from conftest import fixed_table, tiny_config

STEP_SECONDS = 0.02  # RST seconds per full-depth step in the fixed table
STEPS = 12  # the tiny run's budget, in steps
CKPT_EVERY = 3  # a checkpoint every 3 steps (6, 9, 12 kept with keep_checkpoints=3)
WALL_FIELDS = ("wall_seconds",)


def make_config(table_dir, steps=STEPS, ckpt_every=CKPT_EVERY, **overrides):
  config = tiny_config(
    "bert",
    **{
      "data.num_lines": 2000,
      "train.log_every_steps": 1,
      "train.validation_batches": 1,
      **overrides,
    },
  )
  config.train.budget_hours = steps * STEP_SECONDS / 3600
  # Slightly under k steps so float sums never land a hair short of the boundary.
  config.train.checkpoint_every_rst_minutes = ckpt_every * STEP_SECONDS / 60 * 0.999
  config.train.eval_every_rst_minutes = 6 * STEP_SECONDS / 60 * 0.999
  config.rst.table = fixed_table(config, os.path.join(table_dir, "table.json"), STEP_SECONDS)
  return config


def seed_workdir(template: str, workdir: str) -> str:
  """A new workdir holding the template's tokenizer and data cache (nothing of a run)."""
  os.makedirs(workdir, exist_ok=True)
  for name in ("tokenizer", "data_cache"):
    if os.path.isdir(os.path.join(template, name)):
      shutil.copytree(os.path.join(template, name), os.path.join(workdir, name))
  return workdir


class SimulatedKill(BaseException):
  """Stands for SIGKILL inside a save: nothing after the phase runs (not even `except Exception`)."""


def kill_at(monkeypatch, phase: str, save_number: int = 1):
  """Makes the `save_number`-th save from now die at `phase` (begin, staged, manifested,
  committed, rotated); returns a list that receives the step of the killed save."""
  from ntng_jax.train import checkpoint as ckpt_lib

  seen = {"saves": 0}
  killed = []
  original = ckpt_lib.Checkpointer._phase

  def hooked(self, name):
    if name == "begin":
      seen["saves"] += 1
    if name == phase and seen["saves"] == save_number and not killed:
      killed.append(name)
      raise SimulatedKill(name)
    return original(self, name)

  monkeypatch.setattr(ckpt_lib.Checkpointer, "_phase", hooked)
  return killed


def records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(l).items() if k not in WALL_FIELDS} for l in f]


def summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return {k: v for k, v in json.load(f).items() if k not in WALL_FIELDS}


def newest_state_leaves(workdir) -> dict:
  """{path: numpy array} of every leaf of the newest checkpoint's state (params and optimizer)."""
  import jax
  import orbax.checkpoint as ocp

  ckpt = os.path.join(workdir, "checkpoints")
  step = max(int(n) for n in os.listdir(ckpt) if n.isdigit())
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tree = ocp.PyTreeCheckpointer().restore(os.path.join(ckpt, str(step), "state"))
  return {
    jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)
  }


def assert_bitwise_equal(workdir, reference):
  assert summary(workdir) == summary(reference)
  assert records(workdir) == records(reference)
  a, b = newest_state_leaves(workdir), newest_state_leaves(reference)
  assert a.keys() == b.keys()
  for key in a:
    assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def saved_dirs(workdir) -> set:
  """Every checkpoint directory anywhere in the workdir: committed, moved aside or set aside."""
  found = set()
  for root, dirs, _ in os.walk(workdir):
    for d in dirs:
      if d.split("-")[0].isdigit() and os.path.isdir(os.path.join(root, d, "state")):
        found.add(int(d.split("-")[0]))
  return found


def committed(workdir) -> list:
  ckpt = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if os.path.isdir(ckpt) else []
