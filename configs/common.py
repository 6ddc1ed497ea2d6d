"""Defaults shared by every family's config (`bert.py`, `t5.py`, `gpt.py`): the fields every run
has, and the run shape per size that each family's `PER_SIZE` extends and overrides.

Sizes scale the run: `tiny` is a CPU smoke run of about a minute on 2 cores (tests, the default
job), `small` a longer CPU/GPU run, `base` the paper's setting (docs/paper.md §3).
"""

import ml_collections

from ntng_jax import registry
from ntng_jax.config import ConfigError, check_method_name, parse_arg
from ntng_jax.data import spec as data_spec
from ntng_jax.methods.base import method_defaults
from ntng_jax.models.sizes import model_config
from ntng_jax.optim.build import PAPER_RECIPES

SIZE_DEFAULTS = {
  "tiny": dict(
    seq_len=64,
    batch_size=32,
    micro_batch_size=32,
    budget_hours=0.02,
    eval_every_rst_minutes=0.3,
    checkpoint_every_rst_minutes=0.3,
  ),
  "small": dict(
    budget_hours=0.25,
    eval_every_rst_minutes=3.0,
    checkpoint_every_rst_minutes=3.0,
    log_every_steps=20,
  ),
  # base: 24 RST hours like the paper's budgets.
  "base": dict(
    budget_hours=24.0,
    eval_every_rst_minutes=360.0,
    checkpoint_every_rst_minutes=60.0,
    log_every_steps=50,
    validation_batches=80,
  ),
}


def size_settings(per_size: dict, size: str) -> dict:
  """The run shape of `size`: `SIZE_DEFAULTS[size]` overridden by the family's `per_size[size]`."""
  return {**SIZE_DEFAULTS.get(size, {}), **per_size[size]}


def base_config(family: str, arg: str | None, per_size: dict) -> ml_collections.ConfigDict:
  """Builds the config for `family` from `arg` ('size=tiny,method=baseline,seed=0')."""
  args = parse_arg(arg, size="tiny", method="baseline", seed=0)
  if args.size not in per_size:
    raise ConfigError(
      f"config argument size must be one of {', '.join(per_size)}; got {args.size!r}."
    )
  check_method_name(args.method, "config argument method")
  s = size_settings(per_size, args.size)
  try:
    model = model_config(family, args.size)
  except ValueError as e:
    raise ConfigError(str(e)) from None

  c = ml_collections.ConfigDict()
  c.model = model
  c.seed = args.seed

  # The data fields and their defaults are those of ntng_jax.data.DataSpec (one table).
  c.data = ml_collections.ConfigDict(data_spec.config_defaults(seq_len=s["seq_len"]))

  c.train = ml_collections.ConfigDict(
    dict(
      budget_hours=s["budget_hours"],  # RST hours
      batch_size=s["batch_size"],  # sequences per optimizer step
      micro_batch_size=s["micro_batch_size"],  # the RST table's unit (sequences)
      device_micro_batch_size="",  # sequences a device micro-batch: '' = micro_batch_size | N | auto
      compute_dtype=s.get("compute_dtype", "float32"),  # float32 | bfloat16 (params stay float32)
      log_every_steps=s.get("log_every_steps", 10),
      eval_every_rst_minutes=s["eval_every_rst_minutes"],
      checkpoint_every_rst_minutes=s["checkpoint_every_rst_minutes"],
      keep_checkpoints=3,
      validation_batches=s.get("validation_batches", 8),
      max_steps=0,  # 0 = run until the RST budget is spent
      compilation_cache_dir="",  # persistent XLA cache; relative = under the workdir; '' = off
    )
  )

  c.method = ml_collections.ConfigDict(dict(name=args.method))

  c.rst = ml_collections.ConfigDict(
    dict(
      table="auto",  # auto | paper | PATH.json (auto: the paper's table if it matches, else calibrate)
      repeats=5,  # timed repeats per kind when calibrating (median)
      warmup=2,
    )
  )

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: all remaining devices
  return c


def finalize(c: ml_collections.ConfigDict, per_size: dict) -> ml_collections.ConfigDict:
  """Applies what the chosen method brings: the paper's optimizer recipe for `lion`/`sophia`
  (peak LR per size from `per_size[size]['lr_<method>']` where the paper's is for base), and the
  method class's own `default_config(family, size)` overrides (stacking stages, drop schedule...)."""
  family, size, name = c.model.family, c.model.size, c.method.name
  if name in registry.OPTIMIZER_METHODS:
    recipe = dict(PAPER_RECIPES[family][name])
    recipe["learning_rate"] = per_size[size].get(f"lr_{name}", recipe["learning_rate"])
    recipe["schedule"] = c.optim.schedule
    if name == "sophia" and family == "bert":
      # The paper's `bs` is its batch in tokens (1536 x 128 = 196,608); it scales the Hessian in
      # the update's denominator, so it follows this run's batch (a reference: flags that change
      # the batch or sequence length after this point change it too).
      recipe["batch_tokens"] = c.train.get_ref("batch_size") * c.data.get_ref("seq_len")
    c.optim = recipe
  return apply_method_defaults(c)


def apply_method_defaults(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Merges the chosen method class's `default_config(family, size)` overrides into `c`."""
  for section, values in method_defaults(c.method.name, c.model.family, c.model.size).items():
    c[section].update(values)
  return c
