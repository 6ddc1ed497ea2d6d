"""Shared plumbing for entry points: default paths, multi-host start-up, one-sentence errors."""

import importlib.util
import logging
import os
import sys

from absl import app

from configs import resolve_config_path
from ntng_jax import xla_policy
from ntng_jax.config import check_overrides, workdir_problem
from ntng_jax.errors import UserError


def _shipped_config(name: str) -> str:
  """Absolute path of a shipped config (`configs/<name>`), found from any working directory."""
  import configs

  return os.path.join(os.path.dirname(os.path.abspath(configs.__file__)), name)


# The default `--config` of the entry points (absolute: absl parses flag defaults at import).
DEFAULT_CONFIG = _shipped_config("bert.py")

# Errors a user can fix from the command line, printed as one sentence without a traceback: the
# `UserError` family, and a missing input file.
USER_ERRORS = (UserError, FileNotFoundError)


# `--config.data.validation.NAME=SOURCE` flags, taken out of argv before absl parses it (a locked
# config cannot gain keys from flags) and applied by `parsed_config`.
_VALIDATION_OVERRIDES: dict[str, str] = {}


def parsed_config(config_flag):
  """The config of a `config_flags.DEFINE_config_file` flag, with the validation-set flags."""
  from ntng_jax.data.validation import apply_validation_overrides

  config = config_flag.value
  apply_validation_overrides(config, _VALIDATION_OVERRIDES)
  return config


def default_workdir(config) -> str:
  return os.path.join(
    "runs", f"{config.model.family}-{config.model.size}-{config.method.name}-seed{config.seed}"
  )


def apply_xla_policy() -> None:
  """Sets the width-keyed XLA flags (`ntng_jax.xla_policy`) of the entry point's `--config`
  before JAX starts its backend; entry points without a config flag are left as they are."""
  from absl import flags

  config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
  if config is not None and "model" in config:
    xla_policy.apply(int(config.model.hidden_size))


def maybe_initialize_distributed() -> None:
  """Starts `jax.distributed` when the environment describes a multi-process job.

  TPU VM pods and SLURM/OpenMPI GPU clusters are detected by JAX itself; a manual cluster sets
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; NTNG_DISTRIBUTED=auto (set by
  launch/tpu_vm/run.sh) leaves the discovery to JAX in any environment.
  """
  import jax

  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
      coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
      num_processes=int(env["JAX_NUM_PROCESSES"]),
      process_id=int(env["JAX_PROCESS_ID"]),
    )
  elif (
    env.get("NTNG_DISTRIBUTED") == "auto"
    or env.get("TPU_WORKER_HOSTNAMES", "").count(",")
    or env.get("SLURM_NTASKS", "1") != "1"
    or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
  ):
    jax.distributed.initialize()


def run_cleanly(fn):
  """Runs fn(); a user-fixable error ends the program with one sentence and exit code 2."""
  try:
    return fn()
  except Exception as e:  # noqa: BLE001
    if isinstance(e, USER_ERRORS):
      _fail(str(e))
    if isinstance(e, OSError) and e.filename:
      problem = workdir_problem(str(e.filename), e)
      if problem:
        _fail(problem)
    raise


def preflight_config(argv: list[str], default: str = DEFAULT_CONFIG) -> list[str]:
  """Builds the `--config=FILE[:ARGS]` config once before absl does, so that a bad file, argument
  or `--config.X=...` field ends in one sentence (ml_collections would print a traceback inside a
  flag-parsing error). Returns argv with the config file resolved relative to the installed
  `configs` package when it is not found from the working directory, and made explicit when
  absent (so the default config works from any directory)."""
  argv = list(argv)
  value, where = default, None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      value, where = arg.split("=", 1)[1], (i, "=")
    elif arg == "--config" and i + 1 < len(argv):
      value, where = argv[i + 1], (i + 1, " ")
  path, colon, config_arg = value.partition(":")
  resolved = resolve_config_path(path)
  if not os.path.exists(resolved):
    _fail(f"config file {path!r} does not exist; pass --config=configs/bert.py or configs/t5.py.")
  spec = importlib.util.spec_from_file_location("_preflight_config", resolved)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    config = module.get_config(config_arg or None)
    check_overrides(config, argv)
  except Exception as e:  # noqa: BLE001
    if isinstance(e, USER_ERRORS):
      _fail(str(e))
    raise
  new_value = resolved + colon + config_arg
  if where is None:  # before any --config.X override (absl requires the file first)
    argv.insert(0, f"--config={new_value}")
  elif where[1] == "=":
    argv[where[0]] = f"--config={new_value}"
  else:
    argv[where[0]] = new_value
  return argv


_PREFLIGHT_DONE = []


def _preflight_argv() -> None:
  """Takes the validation-set flags out of sys.argv and preflights the config (once)."""
  if _PREFLIGHT_DONE:
    return
  from ntng_jax.data.validation import pop_validation_overrides

  sys.argv, found = pop_validation_overrides(sys.argv)
  _VALIDATION_OVERRIDES.update(found)
  sys.argv[1:] = preflight_config(sys.argv[1:])
  _PREFLIGHT_DONE.append(True)


def define_config_flag():
  """`--config=FILE[:ARGS]` (a locked config file flag), defined after the command line has been
  preflighted: absl parses a config flag's default and overrides at definition, so a bad file or
  field would otherwise end in a traceback before `main` runs. Call at import of an entry point."""
  from ml_collections import config_flags

  _preflight_argv()
  return config_flags.DEFINE_config_file(
    "config",
    DEFAULT_CONFIG,
    "Config file[:args] (a shipped config is found from any directory).",
    lock_config=True,
  )


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def main(fn, check_config: bool = True):
  """absl.app.run with quiet logging and distributed start-up; config errors as one sentence."""
  if check_config:
    _preflight_argv()
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

  def wrapped(argv):
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    apply_xla_policy()
    maybe_initialize_distributed()
    return fn(argv)

  app.run(wrapped)
