"""Calibrates an RST table on the present machine: the time of every step kind a run can execute.

For each number of active layers n: `train[n]`, the whole optimizer step of the plain n-layer
program (no keep vector; what a stacking stage of depth n runs, and what layer dropping with n
kept layers is charged, as in the paper) divided by its reference micro-batches, and
`forward[n]`, the scoring pass of one micro-batch. Units: RST seconds per micro-batch of
`train.micro_batch_size` sequences; each entry the median of `rst.repeats` interleaved runs after
`rst.warmup` untimed ones, compilation excluded. Why not the keep-vector program: BENCHMARKS.md
(its `lax.cond` overhead would overcharge the baseline and stacking).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import time

import jax
import numpy as np

from ntng_jax import partitioning, rst
from ntng_jax.optim import build_optimizer
from ntng_jax.train import programs


def interleaved_medians(fns: dict, warmup: int, repeats: int) -> dict:
  """Median seconds of each zero-argument fn, timed in interleaved rounds so that machine noise
  (other processes, frequency changes) hits every entry alike."""
  for fn in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  times = {key: [] for key in fns}
  for _ in range(repeats):
    for key, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[key].append(time.perf_counter() - t0)
  return {key: float(np.median(v)) for key, v in times.items()}


def calibrate(
  config, mesh, example_batch_fn, depths=None, one_at_a_time: bool = False, log=lambda message: None
) -> rst.RSTTable:
  """Times `train[n]` and `forward[n]` for each n in `depths` (default 1..num_layers);
  `example_batch_fn()` returns one global batch (numpy dict of `train.batch_size` rows) in the
  run's format. All depths are timed in interleaved rounds, or with `one_at_a_time` each depth is
  built, timed and freed in turn (base models on a small-memory host).

  Compiles only what it times (the train step and scoring pass of each depth) plus one init at
  the deepest depth: shallower states take its first layers (`programs.state_at_depth`)."""
  t = config.train
  depths = list(depths or range(1, int(config.model.num_layers) + 1))
  num_micro = t.batch_size // t.micro_batch_size
  tx = build_optimizer(config.optim)
  batch_np = example_batch_fn()
  micro_np = {k: v[: t.micro_batch_size] for k, v in batch_np.items()}
  batch = partitioning.global_batch(mesh, batch_np)
  micro = partitioning.global_batch(mesh, micro_np)
  rng = jax.random.PRNGKey(0)
  controls = {"learning_rate": np.float32(0.0)}  # a zero learning rate keeps the state fixed
  train, forward = {}, {}
  deepest = programs.build_at_depth(config, max(depths), tx, mesh, micro_np)
  source = programs.init_state(deepest, tx, mesh, micro_np, seed=0)

  def timed(n):
    built = deepest if n == max(depths) else programs.build_at_depth(config, n, tx, mesh, micro_np)
    state = programs.state_at_depth(source, built, tx)
    if state is None:  # a model whose layers are not stacked: its own init
      state = programs.init_state(built, tx, mesh, micro_np, seed=0)
    box = {"state": state}
    score = programs.score_program(built.model, t.compute_dtype, built.shardings.params, mesh)

    def train_fn():
      box["state"], metrics = built.train_step(box["state"], batch, rng, controls)
      return metrics

    return {("train", n): train_fn, ("forward", n): lambda: score(box["state"].params, micro)}

  for group in [[n] for n in depths] if one_at_a_time else [depths]:
    fns = {}
    for n in group:
      fns.update(timed(n))
    with partitioning.activate(mesh):
      seconds = interleaved_medians(fns, int(config.rst.warmup), int(config.rst.repeats))
    for n in group:
      train[n], forward[n] = seconds[("train", n)] / num_micro, seconds[("forward", n)]
      log(f"depth {n}: train {train[n]:.4f} s/unit, forward {forward[n]:.4f} s/unit")
    fns.clear()
    gc.collect()
  return table_from_timings(
    config,
    train,
    forward,
    warmup=int(config.rst.warmup),
    depths=depths,
    statistic="median of interleaved timings, compile excluded"
    + ("; one depth at a time" if one_at_a_time else ""),
  )


def _load_average() -> float | None:
  """The machine's 1-minute load average when the table was measured (other jobs slow it)."""
  try:
    return round(os.getloadavg()[0], 2)
  except (AttributeError, OSError):
    return None


def combine_runs(tables: list[rst.RSTTable], name: str | None = None) -> rst.RSTTable:
  """One table from several calibrations of one config: each entry the minimum over the runs
  that timed it (load from other processes only ever adds time, so the least disturbed run is
  the best estimate of the machine's own speed). Runs may time different depths."""
  first = tables[0]
  if len(tables) == 1:
    return dataclasses.replace(first, name=name or first.name)
  if any(
    t.fingerprint != first.fingerprint or t.unit_sequences != first.unit_sequences for t in tables
  ):
    raise ValueError(
      "combine_runs needs calibrations of one config (their fingerprints or units differ)."
    )

  def pick(kind):
    keys = sorted({k for t in tables for k in getattr(t, kind)})
    return {k: min(getattr(t, kind)[k] for t in tables if k in getattr(t, kind)) for k in keys}

  meta = dict(
    first.meta,
    runs=len(tables),
    statistic=f"minimum over {len(tables)} runs of: "
    + str(first.meta.get("statistic", "the median")),
    run_dates=[t.meta.get("date") for t in tables],
    run_load_averages=[t.meta.get("load_average") for t in tables],
  )
  return dataclasses.replace(
    first, name=name or first.name, train=pick("train"), forward=pick("forward"), meta=meta
  )


def table_from_timings(config, train: dict, forward: dict, **meta) -> rst.RSTTable:
  """A calibrated table of this machine for `config`'s step shape, with its provenance."""
  device = jax.devices()[0]
  return rst.RSTTable(
    name=f"calibrated-{device.platform}-{config.model.family}-{config.model.size}",
    unit_sequences=int(config.train.micro_batch_size),
    train=train,
    forward=forward,
    fingerprint=rst.step_shape_fingerprint(config),
    meta=dict(
      machine=platform.node(),
      processor=platform.processor() or platform.machine(),
      device=f"{device.platform}:{getattr(device, 'device_kind', '')}",
      num_devices=jax.device_count(),
      date=rst.now_iso(),
      jax_version=jax.__version__,
      repeats=int(config.rst.repeats),
      load_average=_load_average(),
      **meta,
    ),
  )
