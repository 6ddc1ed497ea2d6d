"""The pre-training driver, top to bottom: mesh and compilation cache → data →
model/method/optimizer → RST table → programs and state (`train.programs`) → restore → loop →
final evaluation and summary.

The loop runs on the RST clock: each step the method plans (depth, keep), the meter prices what
that step will execute, the run stops before the step that would overrun the budget, and the
learning rate is the schedule at the step's budget fraction.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from ntng_jax import config as config_lib
from ntng_jax import data as data_lib
from ntng_jax import partitioning, rst, schedules
from ntng_jax.data.shards import nonfinite_loss_hint
from ntng_jax.methods.base import build_method
from ntng_jax.optim import build_optimizer, optimizer_hook
from ntng_jax.train import calibrate as calibrate_lib
from ntng_jax.train import checkpoint as ckpt_lib
from ntng_jax.train import metrics as metrics_lib
from ntng_jax.train import programs as programs_lib
from ntng_jax.train import rst_choice, run_identity, validation, workdir_lock

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
  pass


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
    print(
      "\nInterrupt received: saving a checkpoint and stopping (Ctrl-C again to abort).", flush=True
    )

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


def train_and_evaluate(config, workdir: str, restart: bool = False) -> dict:
  """Pre-trains `config` into `workdir` (resuming if it holds a checkpoint); returns the summary.

  One process per workdir (`run.lock`); a resume must keep the run's identity (`run.json`, see
  `run_identity`); `restart=True` first moves a previous run's files to `workdir/previous/`."""
  config_lib.validate(config)
  ckpt_lib.check_keep(config.train.keep_checkpoints)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise config_lib.ConfigError(
      f"cannot create the workdir {workdir} ({e.strerror}); pass a writable --workdir."
    ) from None
  lock = workdir_lock.WorkdirLock(workdir, enabled=jax.process_index() == 0)
  with lock:
    if lock.took_over:
      print(
        f"Took over {lock.path} from a run that is no longer running (pid"
        f" {lock.took_over.get('pid')} on {lock.took_over.get('host')}).",
        flush=True,
      )
    if restart:
      moved = run_identity.set_aside(workdir) if jax.process_index() == 0 else None
      ckpt_lib.sync_processes("ntng_restart")
      if moved:
        print(f"Restarting: the previous run's files are now in {moved}.", flush=True)
    elif run_identity.has_run(workdir):
      run_identity.check(workdir, config)
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir: str) -> dict:
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
  programs_lib.use_compilation_cache(t.compilation_cache_dir, workdir)
  divisor = partitioning.batch_divisor(mesh)
  if t.micro_batch_size % divisor:
    raise config_lib.ConfigError(
      f"train.micro_batch_size ({t.micro_batch_size}) must be a multiple of the data×fsdp mesh"
      f" size ({divisor}) so every device gets whole examples."
    )
  if divisor % jax.process_count():
    raise config_lib.ConfigError(
      f"the data×fsdp mesh size ({divisor}) must be a multiple of the process count"
      f" ({jax.process_count()}) so every process reads whole rows; set config.mesh so that"
      " data×fsdp spans every host."
    )

  # ---------------------------------------------------------------------------------------------
  # Method and data: this process's rows of every global (mega-)batch; fixed validation batches.
  method = build_method(config)
  dataset = data_lib.build_dataset(
    config.data, config.model.family, config.model.vocab_size, workdir
  )
  dataset = method.prepare_dataset(dataset)
  nproc, pidx = jax.process_count(), jax.process_index()
  train_iter = dataset.train_iterator(
    method.input_batch_size(t.batch_size), seed=config.seed, process_index=pidx, process_count=nproc
  )
  example_batch = next(iter(dataset.train_iterator(t.micro_batch_size, seed=0)))
  example_batch = {k: np.asarray(v) for k, v in example_batch.items()}
  val_sets = validation.validation_sets(
    dataset, t.micro_batch_size, t.validation_batches, nproc, pidx
  )
  tokens_per_step = t.batch_size * validation.tokens_per_sequence(example_batch)

  # ---------------------------------------------------------------------------------------------
  # RST table (calibrated at start-up if no built-in table matches).
  def calibrate():
    return calibrate_lib.calibrate(
      config,
      mesh,
      example_batch_fn=lambda: next(iter(dataset.train_iterator(t.batch_size, seed=0))),
    )

  table = rst_choice.resolve_rst_table(config, workdir, calibrate)
  if run_identity.has_run(workdir):
    run_identity.check(workdir, config, table)
  budget = t.budget_hours * 3600.0
  schedule = schedules.get(config.optim.schedule)

  # ---------------------------------------------------------------------------------------------
  # Optimizer, programs at the checkpoint's (or the method's first) depth, and the state.
  tx = build_optimizer(config.optim)
  opt_hook = optimizer_hook(config)  # extra data and RST charges of the optimizer
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=t.keep_checkpoints)
  built_at = {}

  def programs(depth):
    if depth not in built_at:
      built_at[depth] = programs_lib.build_at_depth(config, depth, tx, mesh, example_batch, method)
    return built_at[depth]

  # The newest usable checkpoint, restored at the depth saved with it; newer unusable ones are
  # moved to checkpoints/corrupt/; CheckpointError if some exist and none is usable.
  restored = checkpointer.restore_latest(
    lambda saved: programs(int(saved["depth"])).abstract, move_aside=True
  )
  if restored is None:
    depth = method.initial_depth()
    built = programs(depth)
    state = programs_lib.init_state(built, tx, mesh, example_batch, config.seed, method)
    loop = dict(
      step=0,
      rst_seconds=0.0,
      tokens=0,
      wall_seconds=0.0,
      depth=depth,
      data=train_iter.get_state(),
      method=method.host_state(),
    )
    if is_main:
      run_identity.record(workdir, config, table)
    print(f"Starting a new run in {workdir} (RST table: {table.name}).", flush=True)
  else:
    _, state, loop = restored
    depth = int(loop["depth"])
    built = programs(depth)
    if is_main and run_identity.TABLE_KEY not in (run_identity.recorded(workdir) or {}):
      run_identity.add_table(workdir, table)  # a workdir from before run.json
    train_iter.set_state(loop["data"])
    method.restore_host_state(loop["method"])
    print(f"Resuming from step {loop['step']} at RST {loop['rst_seconds']:.1f} s.", flush=True)

  logger = metrics_lib.MetricsLogger(
    workdir, resume_step=loop["step"] if restored else None, enabled=is_main
  )
  progress = metrics_lib.Progress(budget)
  base_rng = jax.random.PRNGKey(config.seed)
  eval_every = t.eval_every_rst_minutes * 60.0
  ckpt_every = t.checkpoint_every_rst_minutes * 60.0
  # Plain Python values for the per-step code (ConfigDict lookups are slow).
  batch_size, max_steps, log_every = int(t.batch_size), int(t.max_steps), int(t.log_every_steps)
  peak_lr = float(config.optim.learning_rate)
  step, rst_seconds, tokens = int(loop["step"]), float(loop["rst_seconds"]), int(loop["tokens"])
  wall_before = float(loop["wall_seconds"])
  next_eval = (math.floor(rst_seconds / eval_every) + 1) * eval_every
  next_ckpt = (math.floor(rst_seconds / ckpt_every) + 1) * ckpt_every
  pending = []  # (record without losses, device metrics) since the last host sync
  last = {
    "train_loss": float(loop.get("train_loss", float("nan"))),  # the saved run's, on resume
    "validation_loss": loop.get("validation_loss"),
  }
  stopped_because = None
  t_start = time.time()

  def wall():
    return wall_before + time.time() - t_start

  def sync(keep_last: int = 0):
    """Fetches pending step metrics, writes records, stops on a non-finite loss.

    `keep_last=1` leaves the newest step pending: the host then does not wait for the step it
    has just dispatched, so the device never idles on a log step."""
    nonlocal pending
    ready, pending = (pending[:-keep_last], pending[-keep_last:]) if keep_last else (pending, [])
    logged = None
    for (record, _), m in zip(ready, jax.device_get([m for _, m in ready])):
      record.update({k: float(v) for k, v in m.items()})
      if not math.isfinite(record["train_loss"]):
        pending = []
        kept = checkpointer.steps()
        raise NonFiniteLossError(
          f"the training loss became {record['train_loss']} at step {record['step']} (RST"
          f" {record['rst_seconds']:.1f} s); "
          + (
            f"the last good checkpoint (step {kept[-1]}) is kept"
            if kept
            else "no checkpoint had been saved yet"
          )
          + " — lower optim.learning_rate"
          + (" or use train.compute_dtype=float32" if t.compute_dtype != "float32" else "")
          + " and rerun with --restart (a changed config cannot resume this run)"
          + nonfinite_loss_hint(config.data, record["step"])
          + "."
        )
      last["train_loss"] = record["train_loss"]
      if record.pop("_log"):
        logger.write(record)
        logged = record
    if logged is not None and is_main:
      progress.update(
        logged["step"],
        logged["train_loss"],
        logged["rst_seconds"],
        logged["tokens"],
        extra=f" | lr {logged['learning_rate']:.2e}",
      )

  def save():
    checkpointer.save(
      step,
      state,
      dict(
        step=step,
        rst_seconds=rst_seconds,
        tokens=tokens,
        wall_seconds=wall(),
        depth=depth,
        data=train_iter.get_state(),
        method=method.host_state(),
        rst_table=table.name,
        train_loss=last["train_loss"],
        validation_loss=last["validation_loss"],
      ),
    )

  def validate():
    """Full-depth validation on every named set; `validation_loss` is the first (in-domain)."""
    record = dict(
      step=step,
      rst_seconds=rst_seconds,
      rst_budget_fraction=rst_seconds / budget,
      tokens=tokens,
      wall_seconds=wall(),
      epoch=data_lib.epochs_seen(train_iter),
    )
    for i, (name, batches) in enumerate(val_sets.items()):
      result = validation.evaluate(built, state.params, batches, mesh)
      record[f"validation_loss/{name}"] = result["validation_loss"]
      record[f"validation_accuracy/{name}"] = result["validation_accuracy"]
      if i == 0:
        record.update(result)
    last["validation_loss"] = record["validation_loss"]
    logger.write(record)
    return record

  def stop_requested() -> bool:
    """A signal stops every process at the same step: in a multi-process job the processes
    agree at log steps (a signal may reach only some hosts)."""
    if nproc == 1:
      return stop.reason is not None
    if step % log_every:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.int32(stop.reason is not None))))

  # ---------------------------------------------------------------------------------------------
  # The loop.
  with _StopFlag() as stop:
    try:
      while True:
        plan = method.plan(rst_seconds / budget, step)
        if plan.depth != depth:  # stacking: grow the state, recompile once for the new depth
          sync()
          state = method.grow(state, plan.depth, tx)
          logger.write(
            dict(
              step=step,
              rst_seconds=rst_seconds,
              event="grow",
              from_depth=depth,
              to_depth=plan.depth,
              rst_budget_fraction=rst_seconds / budget,
            )
          )
          print(
            f"Growing from {depth} to {plan.depth} layers at RST {rst_seconds:.1f} s.", flush=True
          )
          depth = plan.depth
          built = programs_lib.build_at_depth(config, depth, tx, mesh, example_batch, method)
          state = jax.device_put(state, built.shardings)
        charges = method.charges(plan, batch_size) + opt_hook.charges(
          table, step, batch_size, plan.depth
        )
        cost = rst.step_cost(table, charges)
        if stop_requested():
          stopped_because = "interrupt"
          break
        if step == 0:  # a budget that buys no step is a config error, not a run of 0 steps
          rst_choice.check_budget_buys_a_step(config, table, cost)
        if rst_seconds + cost > budget * (1 + 1e-12):  # tolerance: float rounding of the sum
          stopped_because = "budget"
          break
        if max_steps and step >= max_steps:
          stopped_because = "max_steps"
          break
        lr = peak_lr * schedule((rst_seconds + 0.5 * cost) / budget)
        controls = {"learning_rate": np.float32(lr)}
        if plan.keep is not None:
          controls["keep"] = np.asarray(plan.keep, bool)
        controls.update(method.controls(plan))
        aux = next(train_iter) if opt_hook.draws_fresh(step) else None  # before the step's batch
        batch = partitioning.global_batch(mesh, opt_hook.with_aux(next(train_iter), aux))
        rng = jax.random.fold_in(base_rng, step)
        with partitioning.activate(mesh):
          if built.select_step is not None:
            state, batch, select_metrics = built.select_step(
              state, batch, jax.random.fold_in(rng, 1)
            )
          state, step_metrics = built.train_step(state, batch, rng, controls)
        if built.select_step is not None:
          step_metrics = {**step_metrics, **select_metrics}
        step += 1
        rst_seconds += cost
        tokens += tokens_per_step
        record = dict(
          step=step,
          learning_rate=lr,
          tokens=tokens,
          rst_seconds=rst_seconds,
          rst_budget_fraction=rst_seconds / budget,
          wall_seconds=wall(),
          epoch=data_lib.epochs_seen(train_iter),
          _log=step % log_every == 0 or step == 1,
          **method.metrics(plan),
        )
        pending.append((record, step_metrics))
        if step % log_every == 0:
          sync(keep_last=1)
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
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  summary = dict(
    method=config.method.name,
    family=config.model.family,
    size=config.model.size,
    seed=config.seed,
    steps=step,
    tokens=tokens,
    rst_seconds=rst_seconds,
    rst_budget_seconds=budget,
    wall_seconds=wall(),
    stopped_because=stopped_because,
    final_train_loss=last["train_loss"],
    final_validation_loss=final["validation_loss"],
    final_validation_losses={
      k.split("/", 1)[1]: v for k, v in final.items() if k.startswith("validation_loss/")
    },
    final_validation_accuracy=final.get("validation_accuracy"),
    num_params=n_params,
    final_depth=depth,
    rst_table=table.name,
    unigram_entropy_nats=getattr(dataset, "unigram_entropy_nats", None),
    xla_flags=os.environ.get("XLA_FLAGS", ""),
  )
  if is_main:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
  logger.close()
  checkpointer.close()
  print(
    f"Finished: {stopped_because}; {step} steps, RST {rst_seconds:.1f} / {budget:.1f} s,"
    f" train loss {last['train_loss']:.4f}, validation loss {final['validation_loss']}.",
    flush=True,
  )
  return summary
