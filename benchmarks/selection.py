"""Batch-selection costs, as JSON lines.

  python -m benchmarks.selection [--sizes=tiny,small] [--repeats=5]

1. `scoring_cost`: for BERT tiny/small on this machine, seconds per example of the scoring pass
   (the select step's chunked forward over a 2× mega-batch, and the whole select step with the
   selection itself) against seconds per example of the configured train step (forward +
   backward + optimizer update), and their ratio (target ≤ 0.40; the paper's RTX 3090 table
   gives 0.09285 / 0.2253 = 0.41).
2. `rst_per_step`: RST charged per optimizer step under the paper's BERT table for the baseline,
   RHO-loss / selective backprop with a 2× mega-batch (1536 of 3072), and with free scoring.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _median_seconds(fn, warmup: int, repeats: int) -> float:
  import jax

  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def scoring_cost(size: str, repeats: int, warmup: int = 2) -> dict:
  import jax

  from configs import bert as bert_configs
  from ntng_jax import data as data_lib
  from ntng_jax import partitioning
  from ntng_jax.methods.base import build_method
  from ntng_jax.optim import build_optimizer
  from ntng_jax.train import programs

  config = bert_configs.get_config(f"size={size},method=selective_backprop")
  config.data.num_lines = 4000
  t = config.train
  mesh = partitioning.make_mesh(config.mesh)
  method = build_method(config)
  ds = data_lib.build_dataset(config.data, "bert", config.model.vocab_size, None)
  mega_np = next(iter(ds.train_iterator(method.input_batch_size(t.batch_size), seed=0)))
  micro_np = {k: v[: t.micro_batch_size] for k, v in mega_np.items()}
  tx = build_optimizer(config.optim)
  built = programs.build_at_depth(config, config.model.num_layers, tx, mesh, micro_np, method)
  state = programs.init_state(built, tx, mesh, micro_np, config.seed, method)
  mega = partitioning.global_batch(mesh, mega_np)
  batch = partitioning.global_batch(mesh, {k: v[: t.batch_size] for k, v in mega_np.items()})
  scorer = programs.jit_eval_step(
    method.scorer(built.model, t.compute_dtype), built.shardings.params, mesh
  )
  controls = {"learning_rate": np.float32(1e-4)}
  holder = {"state": state}

  def train():
    holder["state"], m = built.train_step(holder["state"], batch, jax.random.PRNGKey(0), controls)
    return m

  def select():
    holder["state"], out, m = built.select_step(holder["state"], mega, jax.random.PRNGKey(1))
    return out

  with partitioning.activate(mesh):
    score_s = _median_seconds(lambda: scorer(holder["state"].params, mega), warmup, repeats)
    select_s = _median_seconds(select, warmup, repeats)
    train_s = _median_seconds(train, warmup, repeats)
  m, b = int(mega["example_id"].shape[0]), int(t.batch_size)
  per = dict(score=score_s / m, select=select_s / m, train=train_s / b)
  return dict(
    benchmark="scoring_cost",
    family="bert",
    size=size,
    device=str(jax.devices()[0]),
    mega_batch=m,
    batch_size=b,
    micro_batch_size=int(t.micro_batch_size),
    seq_len=int(config.data.seq_len),
    repeats=repeats,
    score_seconds_per_example=per["score"],
    select_seconds_per_example=per["select"],
    train_seconds_per_example=per["train"],
    score_over_train=per["score"] / per["train"],
    select_over_train=per["select"] / per["train"],
    target_ratio=0.40,
    step_cost_ratio_here=(select_s + train_s) / train_s,
  )


def rst_per_step() -> list[dict]:
  import ml_collections

  from ntng_jax import rst
  from ntng_jax.methods import selection
  from ntng_jax.methods.base import Method, Plan

  table = rst.PAPER_TABLES["bert"]
  b = 1536

  def config(**method):
    return ml_collections.ConfigDict(
      dict(
        model=dict(num_layers=16),
        train=dict(batch_size=b, micro_batch_size=128),
        method=dict(mega_batch_factor=2, **method),
      )
    )

  plan = Plan(depth=16)
  base = rst.step_cost(table, Method(config()).charges(plan, b))
  rows = [
    dict(
      benchmark="rst_per_step",
      table=table.name,
      method="baseline",
      batch_size=b,
      scored=0,
      rst_seconds_per_step=base,
      ratio_to_baseline=1.0,
    )
  ]
  variants = [
    ("rho_loss", selection.RhoLoss(config(), il_losses=np.zeros(1, np.float32), il_meta={}), False),
    ("selective_backprop", selection.SelectiveBackprop(config()), False),
    (
      "rho_loss(free_scoring)",
      selection.RhoLoss(config(free_scoring=True), il_losses=np.zeros(1, np.float32), il_meta={}),
      True,
    ),
  ]
  for name, method, _ in variants:
    cost = rst.step_cost(table, method.charges(plan, b))
    rows.append(
      dict(
        benchmark="rst_per_step",
        table=table.name,
        method=name,
        batch_size=b,
        scored=0 if method.free_scoring else method.input_batch_size(b),
        rst_seconds_per_step=cost,
        ratio_to_baseline=cost / base,
        steps_in_24h=int(24 * 3600 / cost),
      )
    )
  rows[0]["steps_in_24h"] = int(24 * 3600 / base)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="tiny,small")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  for row in rst_per_step():
    print(json.dumps(row), flush=True)
  for size in filter(None, args.sizes.split(",")):
    print(json.dumps(scoring_cost(size, args.repeats)), flush=True)


if __name__ == "__main__":
  main()
