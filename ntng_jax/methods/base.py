"""The method hook protocol: what the trainer asks a method each step.

A method is a small object of hooks with the baseline's behaviour as defaults. Host-side hooks
decide from the RST clock; device-side work (growth, selection) is pure and jitted.

- `prepare_dataset(dataset)`: the dataset this method trains on (the IL model swaps splits; RHO
  checks its irreducible-loss table against it);
- `initial_depth()`: layers of the first compiled program (stacking starts shallow);
- `plan(rst_fraction, step) -> Plan`: the depth (static: a change recompiles once) and the keep
  array (dynamic: layer dropping, bool [num_micro, L], a row per micro-batch; never recompiles)
  of the next step, from the RST clock;
- `grow(state, new_depth, tx) -> state`: parameter/optimizer-state surgery when the depth
  changes (`tx` is the optax transformation, for `optax.tree_utils.tree_map_params`);
- `input_batch_size(batch_size)`: sequences drawn from the data per optimizer step (a mega-batch
  for batch selection);
- `init_method_state()` and `make_select_step(model, compute_dtype)`: the device-side method
  state (e.g. a loss-history buffer, part of `TrainState`) and a pure
  `select(state, mega_batch, rng) -> (state, batch, metrics)` that picks the training batch;
- `wrap_train_step(train_step)`: the pure train step the trainer jits (layer dropping masks the
  dropped layers' updates);
- `controls(plan)`: extra entries of the step's `controls` dict (host decisions the wrapped
  train step reads, e.g. a freeze flag);
- `charges(plan, batch_size)`: what the step executed, for the RST meter;
- `host_state()` / `restore_host_state(d)`: a JSON-able dict saved in every checkpoint;
- `metrics(plan)`: extra fields of each metrics record.

Methods never read wall-clock time or the step count for schedules: only the RST fraction.
"""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np

from ntng_jax import registry
from ntng_jax.errors import ConfigError
from ntng_jax.rst import Charge


@dataclasses.dataclass(frozen=True)
class Plan:
  depth: int  # layers in the compiled program
  keep: np.ndarray | None = None  # bool [depth] or [num_micro, depth]; None = every layer runs

  @property
  def active_layers(self) -> int | float:
    """Layers run: an int, or with a keep row per micro-batch their mean over micro-batches."""
    if self.keep is None:
      return self.depth
    keep = np.asarray(self.keep, bool)
    if keep.ndim == 1:
      return int(keep.sum())
    total = int(keep.sum())
    return total // keep.shape[0] if total % keep.shape[0] == 0 else total / keep.shape[0]


class Method:
  """The baseline: full depth, every layer, one forward+backward per sequence."""

  name = "baseline"

  def __init__(self, config):
    self.config = config
    self.num_layers = int(config.model.num_layers) if config is not None else 0

  def prepare_dataset(self, dataset):
    return dataset

  def initial_depth(self) -> int:
    return self.num_layers

  def plan(self, rst_fraction: float, step: int) -> Plan:
    del rst_fraction, step
    return Plan(depth=self.num_layers)

  def grow(self, state, new_depth: int, tx):
    raise NotImplementedError(f"method {self.name!r} does not change depth.")

  def input_batch_size(self, batch_size: int) -> int:
    return batch_size

  def init_method_state(self):
    return {}

  def make_select_step(self, model, compute_dtype: str):
    """None, or a pure `select(state, mega_batch, rng) -> (state, batch, metrics)`."""
    del model, compute_dtype
    return None

  def wrap_train_step(self, train_step):
    """The pure `train_step(state, batch, rng, controls)` to jit, changed or as is."""
    return train_step

  def controls(self, plan: Plan) -> dict:
    """Extra `controls` entries of the next step (arrays of a fixed shape and dtype every step,
    so the step compiles once), read by the method's `wrap_train_step`."""
    del plan
    return {}

  def charges(self, plan: Plan, batch_size: int) -> list[Charge]:
    return [Charge("train", plan.active_layers, batch_size)]

  def host_state(self) -> dict:
    return {}

  def restore_host_state(self, state: dict) -> None:
    del state

  def metrics(self, plan: Plan) -> dict:
    return {"active_layers": plan.active_layers}


REGISTRY = registry.METHODS  # method name -> "module:Class"; modules are imported on use


def method_class(name: str):
  """The Method subclass named by a registry name or a user's import path 'pkg.module:Class'
  (imported from sys.path: the working directory of `python -m launch...`, or PYTHONPATH); a
  ConfigError (one sentence) if a user's class cannot be imported or is not a `Method`."""
  if registry.is_import_path(name):
    cls = registry.import_named(name, "method.name", "attribute", "class")
    if not (isinstance(cls, type) and issubclass(cls, Method)):
      raise ConfigError(
        f"method.name {name!r} is not a subclass of ntng_jax.methods.base.Method;"
        " derive your method from it."
      )
    return cls
  if name not in REGISTRY:
    raise ConfigError(f"method.name must be one of {', '.join(REGISTRY)}; got {name!r}.")
  module_name, _, cls = REGISTRY[name].partition(":")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name == module_name:
      raise NotImplementedError(f"method {name!r} is not available in this build.") from None
    raise
  return getattr(module, cls)


def settings(config, defaults: dict) -> dict:
  """A method's fields: `defaults` (the method's one statement of them, which its
  `default_config` also puts into the config) overridden by the non-None `config.method` values."""
  given = {} if config is None else {k: v for k, v in config.method.items() if v is not None}
  return {**defaults, **given}


def build_method(config) -> Method:
  """The method named by `config.method.name`."""
  return method_class(config.method.name)(config)


def method_defaults(name: str, family: str, size: str) -> dict:
  """Config overrides a method brings (`{'method': {...}, 'optim': {...}, ...}`), from the
  method class's optional `default_config(family, size)`."""
  try:
    cls = method_class(name)
  except NotImplementedError:
    return {}
  fn = getattr(cls, "default_config", None)
  return fn(family, size) if fn else {}
