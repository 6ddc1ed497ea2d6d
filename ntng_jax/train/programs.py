"""The one place that jits programs: (model or loss, optimizer, mesh, example batch) -> an abstract
sharded state, a jitted init and the jitted steps of pre-training, calibration, IL extraction,
fine-tuning, decoding and the benchmarks.

Shardings come from `ntng_jax.partitioning`: a state or params tree by its logical axes (a
shape-only init, `jax.eval_shape`, gives the boxed tree), batches split along their leading axis
over data × fsdp, scalars and metrics replicated. Every program is jitted once per static shape;
a train step donates its state (argument 0). Also owns the persistent compilation cache.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from ntng_jax import param_paths, partitioning
from ntng_jax.errors import ConfigError
from ntng_jax.methods.base import Method
from ntng_jax.models import build_model
from ntng_jax.optim import optimizer_hook
from ntng_jax.train import state as state_lib
from ntng_jax.train import step as step_lib


@dataclasses.dataclass
class Built:
  """A model of one depth with its jitted programs and shardings."""

  model: Any
  shardings: Any  # of the unboxed TrainState
  abstract: Any  # ShapeDtypeStructs with shardings (restore target)
  train_step: Callable  # (state, batch, rng, controls) -> (state, metrics), state donated
  eval_step: Callable  # (params, batch) -> {'loss_sum', 'weight_sum', 'correct_sum'}
  select_step: Callable | None  # (state, mega, rng) -> (state, batch, metrics), or None
  num_micro: int = 0  # micro-batches the device runs per step (`device_micro_batches`)


def model_at_depth(config, depth: int):
  """`config.model` built with `depth` layers (stacking stages, checkpoints saved mid-growth)."""
  model_cfg = config.model.copy_and_resolve_references()
  model_cfg.num_layers = depth
  return build_model(model_cfg)


# -----------------------------------------------------------------------------------------------
# Shapes and shardings.


def abstract_state(make_boxed: Callable, mesh) -> tuple[Any, Any]:
  """`(shardings, abstract)` of the tree `make_boxed(rng)` returns (boxed leaves carry logical
  axes): a shape-only init, the logical shardings on `mesh`, and the unboxed tree as
  `ShapeDtypeStruct`s with those shardings (a restore target)."""
  with partitioning.rules_context():
    boxed = jax.eval_shape(make_boxed, jax.random.PRNGKey(0))
    shardings = partitioning.logical_shardings(mesh, boxed)
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings
  )
  return shardings, abstract


def example_batch(family: str) -> dict:
  """A one-row batch of `family`'s format, for shape-only inits (parameter shapes do not depend
  on its lengths)."""
  if family == "bert":
    return dict(input_ids=np.zeros((1, 8), np.int32), mlm_positions=np.zeros((1, 2), np.int32))
  if family == "gpt":
    return dict(input_ids=np.zeros((1, 8), np.int32))
  return dict(
    encoder_input_ids=np.zeros((1, 8), np.int32), decoder_input_ids=np.zeros((1, 4), np.int32)
  )


def param_shardings(model, mesh):
  """The logical shardings of `model`'s unboxed params on `mesh`."""
  return abstract_state(lambda rng: model.init(rng, example_batch(model.cfg.family)), mesh)[0]


def abstract_params(model, mesh=None):
  """ShapeDtypeStructs of `model`'s unboxed params, with their logical shardings on `mesh` (or
  on the default device when `mesh` is None)."""
  batch = example_batch(model.cfg.family)
  if mesh is not None:
    return abstract_state(lambda rng: model.init(rng, batch), mesh)[1]
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with partitioning.rules_context():
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), shapes)


# -----------------------------------------------------------------------------------------------
# Jitted programs with their shardings.


def jit_init(init, out_shardings, in_shardings=None):
  """`init(*args)` jitted to write its output straight into `out_shardings` (no host copy)."""
  if in_shardings is None:
    return jax.jit(init, out_shardings=out_shardings)
  return jax.jit(init, in_shardings=in_shardings, out_shardings=out_shardings)


def jit_train_step(train_step, state_shardings, mesh):
  """`(state, batch, rng, controls) -> (state, metrics)` with the state donated; the batch is
  split over data × fsdp, the rest replicated."""
  rep = partitioning.replicated(mesh)
  return jax.jit(
    train_step,
    in_shardings=(state_shardings, partitioning.batch_sharding(mesh), rep, rep),
    out_shardings=(state_shardings, rep),
    donate_argnums=(0,),
  )


def jit_eval_step(eval_step, param_shardings=None, mesh=None):
  """`(params, batch) -> replicated outputs`; without a mesh, jitted without shardings."""
  if mesh is None:
    return jax.jit(eval_step)
  return jax.jit(
    eval_step,
    in_shardings=(param_shardings, partitioning.batch_sharding(mesh)),
    out_shardings=partitioning.replicated(mesh),
  )


def score_program(model, compute_dtype: str, param_shardings=None, mesh=None):
  """The scoring pass `(params, batch) -> [B]` per-example mean token losses at full depth
  (selection, IL extraction, the RST meter's kind 'forward')."""
  return jit_eval_step(step_lib.make_score_step(model, compute_dtype), param_shardings, mesh)


def jit_select_step(select, state_shardings, mesh):
  """A method's `(state, mega_batch, rng) -> (state, batch, metrics)`, the state donated."""
  batch_sh, rep = partitioning.batch_sharding(mesh), partitioning.replicated(mesh)
  return jax.jit(
    select,
    in_shardings=(state_shardings, batch_sh, rep),
    out_shardings=(state_shardings, batch_sh, rep),
    donate_argnums=(0,),
  )


def jit_decode(decode, param_shardings, mesh):
  """`decode(params, ids, mask) -> tokens` with the inputs split over the batch axes."""
  batch_sh = partitioning.batch_sharding(mesh)
  return jax.jit(
    decode,
    in_shardings=(param_shardings, batch_sh, batch_sh),
    out_shardings=partitioning.replicated(mesh),
  )


def apply_program(module):
  """`(params, input_ids) -> module outputs`, params boxed or not (a full forward pass)."""
  return jax.jit(lambda p, ids: module.apply({"params": nn.unbox(p)}, ids))


# -----------------------------------------------------------------------------------------------
# Pre-training.


def _boxed_state(model, tx, method, example, rng):
  return state_lib.create(model.init(rng, example), tx, method.init_method_state())


def build_programs(config, model, tx, mesh, example_batch: dict, method=None) -> Built:
  """Shape-only init → logical shardings → jitted train/eval(/select) steps for this depth."""
  method = method or Method(None)
  shardings, abstract = abstract_state(
    lambda rng: _boxed_state(model, tx, method, example_batch, rng), mesh
  )
  t = config.train
  hook = optimizer_hook(config)
  reference = t.batch_size // t.micro_batch_size

  def make_step(num_micro):
    return step_lib.make_train_step(
      model, tx, num_micro, t.compute_dtype, mesh, hook, groups=reference // num_micro
    )

  def fits(num_micro):
    batch = {
      k: jax.ShapeDtypeStruct((t.batch_size, *np.shape(v)[1:]), np.asarray(v).dtype)
      for k, v in example_batch.items()
    }
    return compiles_within_memory(
      jit_train_step(make_step(num_micro), shardings, mesh),
      abstract,
      batch,
      jax.random.PRNGKey(0),
      {"learning_rate": np.float32(0.0)},
    )

  num_micro = device_micro_batches(config, method, fits)
  train_step = make_step(num_micro)
  select = method.make_select_step(model, t.compute_dtype)
  return Built(
    model=model,
    shardings=shardings,
    abstract=abstract,
    train_step=jit_train_step(method.wrap_train_step(train_step), shardings, mesh),
    eval_step=jit_eval_step(
      step_lib.make_eval_step(model, t.compute_dtype), shardings.params, mesh
    ),
    select_step=None if select is None else jit_select_step(select, shardings, mesh),
    num_micro=num_micro,
  )


def device_micro_batches(config, method, fits: Callable[[int], bool]) -> int:
  """Micro-batches the device runs per step. `train.device_micro_batch_size`: '' = the reference
  `train.micro_batch_size` (the RST table's unit, which the meter always charges); 'N' = that many
  sequences (whole reference micro-batches); 'auto' = the fewest micro-batches, each a whole
  number of reference micro-batches, for which `fits(num_micro)` holds (1, 2, 3, ... dividing the
  reference count; the reference split if none fits). Methods with a keep row per reference
  micro-batch (layer dropping) and optimizers that read extra micro-batches (Sophia-G) run the
  reference split."""
  t = config.train
  reference = int(t.batch_size) // int(t.micro_batch_size)
  size = str(t.device_micro_batch_size).strip()
  if not size:
    return reference
  pinned = method.plan(0.0, 0).keep is not None or optimizer_hook(config).aux_micro_batches > 0
  if size == "auto":
    divisors = [n for n in range(1, reference + 1) if reference % n == 0]
    return reference if pinned else next((n for n in divisors if fits(n)), reference)
  valid = size.isdigit() and int(size) and not t.batch_size % int(size)
  if not valid or int(size) % t.micro_batch_size:
    raise ConfigError(
      f"train.device_micro_batch_size ({size}) must divide train.batch_size ({t.batch_size}) and"
      f" be a multiple of train.micro_batch_size ({t.micro_batch_size}); or leave it empty (the"
      " reference) or set auto."
    )
  if pinned and int(size) != t.micro_batch_size:
    raise ConfigError(
      f"{config.method.name} with {config.optim.name} reads a keep row or extra data per reference"
      f" micro-batch, so train.device_micro_batch_size ({size}) must be empty, auto or"
      f" {t.micro_batch_size}."
    )
  return int(t.batch_size) // int(size)


def compiles_within_memory(jitted, *abstract_args) -> bool:
  """Whether `jitted` compiles for these arguments without running out of device memory
  (compile-time OOM, or a memory analysis above the device's limit where it reports one)."""
  try:
    compiled = jitted.lower(*abstract_args).compile()
  except Exception as e:  # noqa: BLE001 -- XLA raises its own runtime error type
    if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
      return False
    raise
  stats = jax.devices()[0].memory_stats() or {}
  analysis = compiled.memory_analysis()
  if "bytes_limit" not in stats or analysis is None:
    return True
  need = (
    analysis.temp_size_in_bytes
    + analysis.argument_size_in_bytes
    + analysis.output_size_in_bytes
    - analysis.alias_size_in_bytes
  )
  return need <= 0.95 * stats["bytes_limit"]


def build_at_depth(config, depth: int, tx, mesh, example_batch: dict, method=None) -> Built:
  return build_programs(config, model_at_depth(config, depth), tx, mesh, example_batch, method)


def init_state(built: Built, tx, mesh, example_batch: dict, seed: int, method=None):
  """Initialises the state directly into its shardings (no host copy of the full model)."""
  method = method or Method(None)

  def init(rng):
    return nn.unbox(_boxed_state(built.model, tx, method, example_batch, rng))

  with partitioning.activate(mesh):
    return jit_init(init, built.shardings)(jax.random.PRNGKey(seed))


def state_at_depth(deep_state, built: Built, tx):
  """A fresh state of `built`'s model (no deeper than `deep_state`'s) without compiling an init:
  copies of the params with the first layers of every stacked layer parameter, a new optimizer
  state. None if the shapes do not match (then use `init_state`)."""
  depth = int(built.model.cfg.num_layers)

  def first(path, x):
    return jnp.copy(x[:depth] if param_paths.is_layer_path(path) else x)

  params = jax.tree_util.tree_map_with_path(first, deep_state.params)
  signature = lambda t: (jax.tree.structure(t), [(x.shape, x.dtype) for x in jax.tree.leaves(t)])
  if signature(params) != signature(built.abstract.params):
    return None
  state = state_lib.create(params, tx, deep_state.method_state)
  return jax.device_put(state, built.shardings)


# -----------------------------------------------------------------------------------------------
# Persistent compilation cache.


def use_compilation_cache(path: str, workdir: str | None = None) -> str | None:
  """Points JAX's persistent compilation cache at `path` (relative: under `workdir`); '' leaves
  it off. Returns the directory used. Programs that took at least
  `jax_persistent_cache_min_compile_time_secs` to compile are written there and read back by
  later processes (a resumed run, the next run of a sweep)."""
  if not path:
    return None
  if not os.path.isabs(path) and workdir is not None:
    path = os.path.join(workdir, path)
  path = os.path.abspath(path)
  if jax.config.jax_compilation_cache_dir != path:
    os.makedirs(path, exist_ok=True)
    compilation_cache.reset_cache()
    compilation_cache.set_cache_dir(path)
  return path
