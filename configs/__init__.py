"""The shipped configs: `configs/<family>.py` each define `get_config(arg)`; this package finds them
for library users, benchmarks and tests (the launch scripts take `--config=configs/<family>.py:ARG`).
"""

import importlib
import os
import pathlib

import ml_collections

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def get_config(family: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of `configs/<family>.py` for `arg` ('size=tiny,method=...')."""
  return importlib.import_module(f"configs.{family}").get_config(arg)


def resolve_config_path(path: str) -> str:
  """A config file path as given if it exists, else the shipped config it names (so
  `configs/bert.py` works from any working directory)."""
  if os.path.exists(path) or os.path.isabs(path):
    return path
  parts = pathlib.PurePath(path).parts
  for candidate in (
    PACKAGE_DIR.parent / path,
    PACKAGE_DIR.joinpath(*parts[1:]) if parts and parts[0] == "configs" else None,
  ):
    if candidate is not None and candidate.is_file():
      return str(candidate)
  return path
