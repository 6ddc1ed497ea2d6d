"""Shared fixtures: paths to ../shared/data, and the tiny configs used across tests."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
  if not SHARED_DATA.exists():
    pytest.skip(f"{SHARED_DATA} is absent")
  return SHARED_DATA


def run_module(
  module: str, *args: str, env: dict | None = None, timeout: int = 600, check: bool = True, cwd=None
) -> subprocess.CompletedProcess:
  """Runs `python -m module args...` from the repo root (or `cwd`) and returns the completed
  process."""
  full_env = dict(os.environ)
  full_env.update(env or {})
  proc = subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=cwd or REPO,
    env=full_env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  if check and proc.returncode != 0:
    raise AssertionError(
      f"{module} {' '.join(args)} failed ({proc.returncode}):\n"
      f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
  return proc


def tiny_config(family: str = "bert", arg: str = "size=tiny", **overrides):
  """The tiny config with dotted-key overrides, e.g. tiny_config(**{'train.max_steps': 3})."""
  sys.path.insert(0, str(REPO))
  from configs import get_config

  config = get_config(family, arg)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def fixed_table(config, path, step_seconds: float) -> str:
  """Writes a deterministic RST table for `config` and returns its path: a full-depth train step of
  `train.batch_size` sequences costs `step_seconds`, proportionally less with fewer active layers,
  and scoring a micro-batch costs a third of training it. Runs priced by it take the same number
  of steps on any machine."""
  from ntng_jax import rst

  L, mb = config.model.num_layers, config.train.micro_batch_size
  per_micro = step_seconds / (config.train.batch_size // mb)
  table = rst.RSTTable(
    name="test-fixed",
    unit_sequences=mb,
    train={n: per_micro * n / L for n in range(1, L + 1)},
    forward={n: per_micro / 3 * n / L for n in range(1, L + 1)},
    fingerprint=rst.step_shape_fingerprint(config),
  )
  rst.save_table(table, str(path))
  return str(path)
