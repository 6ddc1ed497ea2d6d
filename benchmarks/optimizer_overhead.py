"""Step-time overhead of Lion and Sophia-G over AdamW (the paper's T5 table: Lion 1.043/1.031,
Sophia 1.156/1.031). Prints one JSON line per model.

  python benchmarks/optimizer_overhead.py                         # tiny and small BERT, CPU f32
  python benchmarks/optimizer_overhead.py --models=bert:base:128 --dtype=bfloat16   # a GPU

Each optimizer's jitted train step runs on the same batch; rounds of `update_interval` (k = 10)
consecutive steps are timed per optimizer, interleaved, so Sophia's average includes exactly one
Hessian refresh per round (its sampled-label forward + backward). Reported: median seconds per
step over rounds and the ratios to AdamW from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import get_config  # noqa: E402
from ntng_jax import partitioning  # noqa: E402
from ntng_jax.optim import build_optimizer  # noqa: E402
from ntng_jax.train import programs  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_time import synthetic_batch  # noqa: E402

K = 10


def make_runner(family: str, size: str, batch_size: int, method: str, dtype: str):
  config = get_config(family, f"size={size},method={method}")
  config.train.batch_size = config.train.micro_batch_size = batch_size
  config.train.compute_dtype = dtype
  mesh = partitioning.make_mesh(config.mesh)
  tx = build_optimizer(config.optim)
  batch_np = synthetic_batch(config, batch_size, np.random.default_rng(0))
  built = programs.build_at_depth(config, config.model.num_layers, tx, mesh, batch_np)
  state = programs.init_state(built, tx, mesh, batch_np, seed=0)
  batch = partitioning.global_batch(mesh, batch_np)
  controls = {"learning_rate": np.float32(1e-5)}
  holder = {"state": state, "i": 0}

  def round_seconds() -> float:
    t0 = time.perf_counter()
    with partitioning.activate(mesh):
      for _ in range(K):
        holder["state"], metrics = built.train_step(
          holder["state"], batch, jax.random.PRNGKey(holder["i"]), controls
        )
        holder["i"] += 1
      jax.block_until_ready(metrics)
    return (time.perf_counter() - t0) / K

  return round_seconds


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--models", default="bert:tiny:32,bert:small:32")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  for spec in args.models.split(","):
    family, size, batch = spec.split(":")
    runners = {
      m: make_runner(family, size, int(batch), m, args.dtype)
      for m in ("baseline", "lion", "sophia")
    }
    for fn in runners.values():
      fn()  # compile and warm up
    times = {m: [] for m in runners}
    for _ in range(args.rounds):
      for m, fn in runners.items():
        times[m].append(fn())
    med = {m: float(np.median(v)) for m, v in times.items()}
    print(
      json.dumps(
        dict(
          benchmark="optimizer_overhead",
          model=family,
          size=size,
          batch=int(batch),
          dtype=args.dtype,
          update_interval=K,
          step_s={"adamw": med["baseline"], "lion": med["lion"], "sophia": med["sophia"]},
          lion_vs_adamw=med["lion"] / med["baseline"],
          sophia_vs_adamw=med["sophia"] / med["baseline"],
          paper_t5=dict(lion_vs_adamw=1.043 / 1.031, sophia_vs_adamw=1.156 / 1.031),
          device=f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
          jax_version=jax.__version__,
        )
      ),
      flush=True,
    )


if __name__ == "__main__":
  main()
