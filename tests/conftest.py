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


def run_module(module: str, *args: str, env: dict | None = None, timeout: int = 600,
               check: bool = True) -> subprocess.CompletedProcess:
  """Runs `python -m module args...` from the repo root and returns the completed process."""
  full_env = dict(os.environ)
  full_env.update(env or {})
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc


def tiny_config(family: str = "bert", arg: str = "size=tiny", **overrides):
  """The tiny config with dotted-key overrides, e.g. tiny_config(**{'train.max_steps': 3})."""
  sys.path.insert(0, str(REPO))
  from ntng_jax.config import get_config
  config = get_config(family, arg)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config
