"""The pre-training driver, top to bottom: mesh → data → model/method/optimizer → RST table →
state (shape-only init, shardings, jitted init) → restore → loop → final evaluation and summary.

The loop runs on the RST clock: each step the method plans (depth, keep), the meter prices what
that step will execute, the run stops before the step that would overrun the budget, and the
learning rate is the schedule at the step's budget fraction.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ntng_jax import config as config_lib
from ntng_jax import data as data_lib
from ntng_jax import partitioning, rst, schedules
from ntng_jax.methods.base import build_method
from ntng_jax.models import build_model
from ntng_jax.optim import build_optimizer
from ntng_jax.train import checkpoint as ckpt_lib
from ntng_jax.train import metrics as metrics_lib
from ntng_jax.train import state as state_lib
from ntng_jax.train import step as step_lib

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
  pass


@dataclasses.dataclass
class Built:
  """A model of one depth with its jitted programs and shardings."""
  model: object
  shardings: object        # of the unboxed TrainState
  abstract: object         # ShapeDtypeStructs with shardings (restore target)
  train_step: object
  eval_step: object


def model_at_depth(config, depth: int):
  model_cfg = config.model.copy_and_resolve_references()
  model_cfg.num_layers = depth
  return build_model(model_cfg)


def build_programs(config, model, tx, mesh, example_batch: dict) -> Built:
  """Shape-only init → logical shardings → jitted train/eval steps for this model's depth."""
  def init_boxed(rng):
    return state_lib.create(model.init(rng, example_batch), tx)

  with partitioning.rules_context():
    abstract_boxed = jax.eval_shape(init_boxed, jax.random.PRNGKey(0))
    shardings = partitioning.logical_shardings(mesh, abstract_boxed)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.unbox(abstract_boxed), shardings)
  t = config.train
  train_step = step_lib.make_train_step(model, tx, t.batch_size // t.micro_batch_size,
                                        t.compute_dtype, mesh)
  eval_step = step_lib.make_eval_step(model, t.compute_dtype)
  return Built(model=model, shardings=shardings, abstract=abstract,
               train_step=step_lib.jit_train_step(train_step, shardings, mesh),
               eval_step=step_lib.jit_eval_step(eval_step, shardings.params, mesh))


def init_state(built: Built, tx, mesh, example_batch: dict, seed: int):
  """Initialises parameters directly into their shardings (no host copy of the full model)."""
  def init(rng):
    return nn.unbox(state_lib.create(built.model.init(rng, example_batch), tx))
  with partitioning.activate(mesh):
    return jax.jit(init, out_shardings=built.shardings)(jax.random.PRNGKey(seed))


def resolve_rst_table(config, workdir: str, calibrate_fn) -> rst.RSTTable:
  """`rst.table`: 'paper' (must match), a JSON path, or 'auto' (paper if it matches, else a table
  calibrated on this machine and cached as `workdir/rst_table.json`)."""
  choice = config.rst.table
  if choice == "paper":
    table = rst.paper_table_for(config)
    if table is None:
      raise config_lib.ConfigError(
          "rst.table='paper' only prices the paper's base models at their sequence length;"
          " use rst.table=auto to calibrate a table for this config.")
    return table
  if choice != "auto":
    return rst.load_table(choice, config)
  table = rst.paper_table_for(config)
  if table is not None:
    return table
  cached = os.path.join(workdir, "rst_table.json")
  if os.path.exists(cached):
    return rst.load_table(cached, config)
  log.info("No built-in RST table matches this config; calibrating on this machine.")
  table = calibrate_fn()
  if jax.process_index() == 0:
    rst.save_table(table, cached)
  return table


def _tokens_per_sequence(batch: dict) -> int:
  if "input_ids" in batch:
    return int(batch["input_ids"].shape[1])
  return int(batch["encoder_input_ids"].shape[1] + batch["targets"].shape[1])


def evaluate(built: Built, params, batches: list[dict], mesh) -> dict:
  """Full-depth validation loss (token-weighted mean) and token accuracy over fixed batches."""
  totals = None
  with partitioning.activate(mesh):
    for batch in batches:
      out = built.eval_step(params, partitioning.global_batch(mesh, batch))
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  weight = max(float(totals["weight_sum"]), 1.0)
  return {"validation_loss": float(totals["loss_sum"]) / weight,
          "validation_accuracy": float(totals["correct_sum"]) / weight}


class _StopFlag:
  """First SIGINT/SIGTERM asks the loop to checkpoint and exit; a second SIGINT aborts at once."""

  def __init__(self):
    self.reason = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not in the main thread
        pass
    return self

  def _handle(self, signum, frame):
    if self.reason is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.reason = "interrupt"
    print("\nInterrupt received: saving a checkpoint and stopping (Ctrl-C again to abort).",
          flush=True)

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


def train_and_evaluate(config, workdir: str) -> dict:
  """Pre-trains `config` into `workdir` (resuming if it holds a checkpoint); returns the summary."""
  config_lib.validate(config)
  t = config.train
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1, sort_keys=True))

  # ---------------------------------------------------------------------------------------------
  # Mesh.
  mesh = partitioning.make_mesh(config.mesh)
  divisor = partitioning.batch_divisor(mesh)
  if t.micro_batch_size % divisor:
    raise config_lib.ConfigError(
        f"train.micro_batch_size ({t.micro_batch_size}) must be a multiple of the data×fsdp mesh"
        f" size ({divisor}) so every device gets whole examples.")

  # ---------------------------------------------------------------------------------------------
  # Data: this process's rows of every global batch; validation batches with fixed masks.
  dataset = data_lib.build_dataset(config.data, config.model.family, config.model.vocab_size,
                                   workdir)
  nproc, pidx = jax.process_count(), jax.process_index()
  train_iter = dataset.train_iterator(t.batch_size, seed=config.seed, process_index=pidx,
                                      process_count=nproc)
  example_batch = next(iter(dataset.train_iterator(t.micro_batch_size, seed=0)))
  example_batch = {k: np.asarray(v) for k, v in example_batch.items()}
  val_batches = [
      {k: np.asarray(v)[pidx * (len(v) // nproc):(pidx + 1) * (len(v) // nproc)]
       for k, v in b.items()}
      for b in dataset.validation_batches(t.micro_batch_size, seed=0,
                                          max_batches=t.validation_batches)]
  tokens_per_step = t.batch_size * _tokens_per_sequence(example_batch)

  # ---------------------------------------------------------------------------------------------
  # Method, optimizer and the model at the method's first depth.
  method = build_method(config)
  tx = build_optimizer(config.optim)
  depth = method.initial_depth()
  built = build_programs(config, model_at_depth(config, depth), tx, mesh, example_batch)

  # ---------------------------------------------------------------------------------------------
  # RST table (calibrated at start-up if no built-in table matches).
  def calibrate():
    from ntng_jax.train import calibrate as calibrate_lib
    return calibrate_lib.calibrate(config, mesh, example_batch_fn=lambda: next(iter(
        dataset.train_iterator(t.batch_size, seed=0))))
  table = resolve_rst_table(config, workdir, calibrate)
  budget = t.budget_hours * 3600.0
  schedule = schedules.get(config.optim.schedule)

  # ---------------------------------------------------------------------------------------------
  # State: restore the newest intact checkpoint, else initialise.
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=t.keep_checkpoints)
  restored = checkpointer.restore_latest(built.abstract)
  if restored is None:
    state = init_state(built, tx, mesh, example_batch, config.seed)
    loop = dict(step=0, rst_seconds=0.0, tokens=0, wall_seconds=0.0,
                data=train_iter.get_state(), method=method.host_state())
    print(f"Starting a new run in {workdir} (RST table: {table.name}).", flush=True)
  else:
    _, state, loop = restored
    train_iter.set_state(loop["data"])
    method.restore_host_state(loop["method"])
    print(f"Resuming from step {loop['step']} at RST {loop['rst_seconds']:.1f} s.", flush=True)

  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  logger = metrics_lib.MetricsLogger(workdir, resume_step=loop["step"] if restored else None,
                                     enabled=is_main)
  progress = metrics_lib.Progress(budget)
  base_rng = jax.random.PRNGKey(config.seed)
  eval_every = t.eval_every_rst_minutes * 60.0
  ckpt_every = t.checkpoint_every_rst_minutes * 60.0
  step, rst_seconds, tokens = int(loop["step"]), float(loop["rst_seconds"]), int(loop["tokens"])
  wall_before = float(loop["wall_seconds"])
  next_eval = (math.floor(rst_seconds / eval_every) + 1) * eval_every
  next_ckpt = (math.floor(rst_seconds / ckpt_every) + 1) * ckpt_every
  pending = []          # (record without losses, device metrics) since the last host sync
  last = {"train_loss": float("nan"), "validation_loss": None}
  stopped_because = None
  t_start = time.time()

  def wall():
    return wall_before + time.time() - t_start

  def sync():
    """Fetches pending step metrics, writes records, stops on a non-finite loss."""
    nonlocal pending
    fetched = jax.device_get([m for _, m in pending])
    for (record, _), m in zip(pending, fetched):
      record.update({k: float(v) for k, v in m.items()})
      if not math.isfinite(record["train_loss"]):
        pending = []
        raise NonFiniteLossError(
            f"the training loss became {record['train_loss']} at step {record['step']} (RST"
            f" {record['rst_seconds']:.1f} s); the last good checkpoint is kept — lower"
            " optim.learning_rate or use train.compute_dtype=float32 and rerun.")
      last["train_loss"] = record["train_loss"]
      if record.pop("_log"):
        logger.write(record)
    if pending and is_main:
      r = pending[-1][0]
      progress.update(r["step"], r["train_loss"], r["rst_seconds"], r["tokens"],
                      extra=f" | lr {r['learning_rate']:.2e}")
    pending = []

  def save():
    checkpointer.save(step, state, dict(step=step, rst_seconds=rst_seconds, tokens=tokens,
                                         wall_seconds=wall(), data=train_iter.get_state(),
                                         method=method.host_state(),
                                         rst_table=table.name))

  def validate():
    result = evaluate(built, state.params, val_batches, mesh)
    last["validation_loss"] = result["validation_loss"]
    logger.write(dict(step=step, rst_seconds=rst_seconds, rst_budget_fraction=rst_seconds / budget,
                      tokens=tokens, wall_seconds=wall(), **result))
    return result

  # ---------------------------------------------------------------------------------------------
  # The loop.
  with _StopFlag() as stop:
    try:
      while True:
        plan = method.plan(rst_seconds / budget, step)
        if plan.depth != depth:
          raise NotImplementedError("changing depth needs the stacking method's grow hook.")
        cost = rst.step_cost(table, method.charges(plan, t.batch_size))
        if stop.reason:
          stopped_because = stop.reason
          break
        if rst_seconds + cost > budget * (1 + 1e-12):  # tolerance: float rounding of the sum
          stopped_because = "budget"
          break
        if t.max_steps and step >= t.max_steps:
          stopped_because = "max_steps"
          break
        lr = config.optim.learning_rate * schedule((rst_seconds + 0.5 * cost) / budget)
        controls = {"learning_rate": np.float32(lr)}
        if plan.keep is not None:
          controls["keep"] = np.asarray(plan.keep, bool)
        batch = partitioning.global_batch(mesh, next(train_iter))
        with partitioning.activate(mesh):
          state, step_metrics = built.train_step(state, batch, jax.random.fold_in(base_rng, step),
                                                 controls)
        step += 1
        rst_seconds += cost
        tokens += tokens_per_step
        record = dict(step=step, learning_rate=lr, tokens=tokens, rst_seconds=rst_seconds,
                      rst_budget_fraction=rst_seconds / budget, wall_seconds=wall(),
                      _log=step % t.log_every_steps == 0 or step == 1, **method.metrics(plan))
        pending.append((record, step_metrics))
        if step % t.log_every_steps == 0:
          sync()
        if rst_seconds >= next_eval:
          sync()
          validate()
          next_eval = (math.floor(rst_seconds / eval_every) + 1) * eval_every
        if rst_seconds >= next_ckpt:
          sync()
          save()
          next_ckpt = (math.floor(rst_seconds / ckpt_every) + 1) * ckpt_every
      if pending:
        pending[-1][0]["_log"] = True  # the last step is always recorded
      sync()
    except NonFiniteLossError as e:
      stopped_because = "nan"
      print(f"error: {e}", flush=True)

    # -------------------------------------------------------------------------------------------
    # Final evaluation, checkpoint and summary.
    if stopped_because != "nan":
      final = validate()
      if not checkpointer.steps() or checkpointer.steps()[-1] != step:
        save()
    else:
      final = {"validation_loss": last["validation_loss"]}
  summary = dict(
      method=config.method.name, family=config.model.family, size=config.model.size,
      seed=config.seed, steps=step, tokens=tokens, rst_seconds=rst_seconds,
      rst_budget_seconds=budget, wall_seconds=wall(), stopped_because=stopped_because,
      final_train_loss=last["train_loss"], final_validation_loss=final["validation_loss"],
      final_validation_accuracy=final.get("validation_accuracy"), num_params=n_params,
      rst_table=table.name, unigram_entropy_nats=getattr(dataset, "unigram_entropy_nats", None))
  if is_main:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
  logger.close()
  checkpointer.close()
  print(f"Finished: {stopped_because}; {step} steps, RST {rst_seconds:.1f} / {budget:.1f} s,"
        f" train loss {last['train_loss']:.4f}, validation loss {final['validation_loss']}.",
        flush=True)
  return summary
