"""What the RST meter, schedule, metrics records and progress line add to a step.

  python benchmarks/loop_overhead.py [--steps=300] [--repeats=3]

Per repeat, interleaved: (a) a bare loop — next batch from the data iterator, host→device, the
jitted train step — timed over `--steps` steps after a warm-up; (b) the real trainer
(`train_and_evaluate`, same config, evaluation and checkpoints pushed past the run) timed from
the `wall_seconds` of its metrics records between step 50 and the last step, so compilation and
start-up are excluded. Prints one JSON line with the per-step times and the median ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import get_config  # noqa: E402
from ntng_jax import data as data_lib  # noqa: E402
from ntng_jax import partitioning, rst
from ntng_jax.optim import build_optimizer  # noqa: E402
from ntng_jax.train import loop, programs  # noqa: E402

WARMUP = 50


def make_config(steps: int, workdir: str):
  config = get_config("bert", "size=tiny")
  config.data.num_lines = 8000
  config.train.eval_every_rst_minutes = 1e6
  config.train.checkpoint_every_rst_minutes = 1e6
  L, nm = config.model.num_layers, config.train.batch_size // config.train.micro_batch_size
  table = rst.RSTTable(
    name="bench",
    unit_sequences=config.train.micro_batch_size,
    train={n: 1.0 / nm for n in range(1, L + 1)},
    fingerprint=rst.step_shape_fingerprint(config),
  )
  config.rst.table = os.path.join(workdir, "table.json")
  rst.save_table(table, config.rst.table)
  config.train.budget_hours = steps / 3600.0  # one RST second per step
  return config


def bare_seconds_per_step(config, workdir: str, steps: int) -> float:
  mesh = partitioning.make_mesh(config.mesh)
  ds = data_lib.build_dataset(config.data, "bert", config.model.vocab_size, workdir)
  it = ds.train_iterator(config.train.batch_size, seed=config.seed)
  example = next(iter(ds.train_iterator(config.train.micro_batch_size, seed=0)))
  tx = build_optimizer(config.optim)
  built = programs.build_at_depth(config, config.model.num_layers, tx, mesh, example)
  state = programs.init_state(built, tx, mesh, example, config.seed)
  key = jax.random.PRNGKey(0)
  with partitioning.activate(mesh):
    for i in range(steps):
      if i == WARMUP:
        jax.block_until_ready(state)
        t0 = time.perf_counter()
      batch = partitioning.global_batch(mesh, next(it))
      state, metrics = built.train_step(
        state, batch, jax.random.fold_in(key, i), {"learning_rate": np.float32(1e-3)}
      )
    jax.block_until_ready(metrics)
  return (time.perf_counter() - t0) / (steps - WARMUP)


def trainer_seconds_per_step(config, workdir: str) -> float:
  import contextlib
  import io

  with contextlib.redirect_stdout(io.StringIO()):
    loop.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(l) for l in f if '"train_loss"' in l]
  first = next(r for r in records if r["step"] >= WARMUP)
  last = records[-1]
  return (last["wall_seconds"] - first["wall_seconds"]) / (last["step"] - first["step"])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  bare, trainer = [], []
  for r in range(args.repeats):
    with tempfile.TemporaryDirectory() as d:
      config = make_config(args.steps, d)
      bare.append(bare_seconds_per_step(config, d, args.steps))
      trainer.append(trainer_seconds_per_step(config, os.path.join(d, "run")))
  ratios = [t / b for t, b in zip(trainer, bare)]
  print(
    json.dumps(
      dict(
        benchmark="loop_overhead",
        model="bert-tiny",
        steps=args.steps,
        bare_step_s=[round(x, 5) for x in bare],
        trainer_step_s=[round(x, 5) for x in trainer],
        ratio_per_repeat=[round(x, 4) for x in ratios],
        median_ratio=float(np.median(ratios)),
        overhead_percent=100 * (float(np.median(ratios)) - 1),
        device=jax.devices()[0].platform,
        jax_version=jax.__version__,
      )
    )
  )


if __name__ == "__main__":
  main()
