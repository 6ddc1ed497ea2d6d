"""What layer dropping and stacking save per train step on this machine: prints JSON lines.

  python benchmarks/layer_drop_stacking.py                      # BERT tiny and small, f32
  python benchmarks/layer_drop_stacking.py --sizes=small --repeats=9

Layer dropping ("bench": "layer_drop"): the project's jitted train step (`programs.build_programs`,
state from `programs.init_state`, donated) at full depth L without a keep vector, against the same
full-depth program given a keep vector with k of L layers kept (k = L, L/2, L/4; the dropped
layers run through `lax.cond`). `ratio` = median time with k kept / median full-depth time, to be
compared with the ideal k/L plus a fixed-cost allowance: `bound` = k/L + 0.15 (embeddings, MLM
head, loss and the optimizer update do not shrink with k).

Stacking ("bench": "stacking"): the programs of the stacking stages (depth L/4, L/2, L, as the
method builds them) with `time_ratio` = median step time / full-depth time vs `depth_ratio`.

Note: a dropped layer is not free in the train step. Under `jax.grad`, the `lax.cond` of a layer
is split into a forward cond that must return the union of both branches' residuals (so the
identity branch writes zero-filled activations, attention probabilities included, into the
scan's stacked residuals) and a backward cond whose identity branch writes zero parameter
gradients. `--remat` (model.remat=True) saves only each layer's input instead, which removes that
traffic at the price of recomputing the kept layers' forward pass.

All timings: a fixed synthetic batch of `--batch_size` sequences (default 32 = one micro-batch,
so that both sizes finish within about three minutes on two CPU cores; 0 = the config's
`train.batch_size`), `--warmup` untimed calls per program (the first compiles), then `--repeats`
rounds in which every program runs once (interleaved, so load drift hits all alike); medians.
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

from ntng_jax import partitioning  # noqa: E402
from ntng_jax.data import default_max_predictions  # noqa: E402
from ntng_jax.methods import stacking as st  # noqa: E402
from ntng_jax.optim import build_optimizer  # noqa: E402
from ntng_jax.train import programs  # noqa: E402


def bert_config(size: str, dtype: str, batch_size: int, remat: bool = False):
  from configs import bert

  config = bert.get_config(f"size={size}")
  config.train.compute_dtype = dtype
  config.model.remat = remat
  if batch_size:
    config.train.batch_size = batch_size
    config.train.micro_batch_size = min(config.train.micro_batch_size, batch_size)
  return config


def synthetic_batch(config, rng: np.random.Generator) -> dict:
  B, S, V = config.train.batch_size, config.data.seq_len, config.model.vocab_size
  P = int(config.data.max_predictions) or default_max_predictions(S)
  return dict(
    example_id=np.arange(B, dtype=np.int32),
    input_ids=rng.integers(7, V, (B, S)).astype(np.int32),
    mlm_positions=np.sort(rng.integers(0, S, (B, P)), 1).astype(np.int32),
    mlm_labels=rng.integers(7, V, (B, P)).astype(np.int32),
    mlm_weights=np.ones((B, P), np.float32),
  )


class Program:
  """One jitted train step of the trainer with its own (donated) state."""

  def __init__(self, config, depth, mesh, tx, batch):
    example = {k: v[: config.train.micro_batch_size] for k, v in batch.items()}
    self.built = programs.build_at_depth(config, depth, tx, mesh, example)
    self.state = programs.init_state(self.built, tx, mesh, example, config.seed)
    self.mesh = mesh
    self.batch = partitioning.global_batch(mesh, batch)
    self.rng = jax.random.PRNGKey(0)

  def step(self, keep=None) -> float:
    controls = {"learning_rate": np.float32(1e-4)}
    if keep is not None:
      controls["keep"] = keep
    t = time.perf_counter()
    with partitioning.activate(self.mesh):
      self.state, metrics = self.built.train_step(self.state, self.batch, self.rng, controls)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - t


def keep_vector(k: int, num_layers: int) -> np.ndarray:
  return np.arange(num_layers) < k


def bench_size(size: str, args) -> list[dict]:
  config = bert_config(size, args.dtype, args.batch_size, args.remat)
  L = config.model.num_layers
  mesh = partitioning.make_mesh(config.mesh)
  tx = build_optimizer(config.optim)
  batch = synthetic_batch(config, np.random.default_rng(0))
  ks = sorted({L, max(1, L // 2), max(1, L // 4)}, reverse=True)
  depths = sorted(set(st.stage_depths(st.auto_initial_layers(L), L, 2)))

  full = Program(config, L, mesh, tx, batch)  # baseline program, also stacking's last stage
  stages = {d: Program(config, d, mesh, tx, batch) for d in depths if d != L}
  # name -> one timed step. The keep variants run `full`'s jitted step with a keep vector in the
  # controls: one more compiled program (the lax.cond one), shared by every k.
  runs = {"full": lambda: full.step()}
  for k in ks:
    runs[f"keep{k}"] = lambda k=k: full.step(keep_vector(k, L))
  for d, prog in stages.items():
    runs[f"depth{d}"] = prog.step
  t0 = time.perf_counter()
  for _ in range(args.warmup):
    for fn in runs.values():
      fn()
  compile_and_warmup = time.perf_counter() - t0
  times = {name: [] for name in runs}
  for _ in range(args.repeats):
    for name, fn in runs.items():
      times[name].append(fn())
  med = {name: float(np.median(v)) for name, v in times.items()}

  common = dict(
    family="bert",
    size=size,
    dtype=args.dtype,
    remat=args.remat,
    num_layers=L,
    batch_size=config.train.batch_size,
    micro_batch_size=config.train.micro_batch_size,
    seq_len=config.data.seq_len,
    repeats=args.repeats,
    device=jax.devices()[0].device_kind,
  )
  out = []
  for k in ks:
    ratio = med[f"keep{k}"] / med["full"]
    bound = k / L + 0.15
    out.append(
      dict(
        bench="layer_drop",
        **common,
        kept=k,
        median_s_full=med["full"],
        median_s_kept=med[f"keep{k}"],
        ratio=round(ratio, 4),
        ideal=round(k / L, 4),
        bound=round(bound, 4),
        within_bound=ratio <= bound,
      )
    )
  for d in depths:
    t = med["full"] if d == L else med[f"depth{d}"]
    out.append(
      dict(
        bench="stacking",
        **common,
        depth=d,
        median_s=t,
        depth_ratio=round(d / L, 4),
        time_ratio=round(t / med["full"], 4),
      )
    )
  out.append(
    dict(
      bench="meta",
      size=size,
      compile_and_warmup_s=round(compile_and_warmup, 2),
      programs=list(runs),
    )
  )
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="tiny,small")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument(
    "--remat",
    action="store_true",
    help="model.remat=True (each layer recomputed in the backward pass)",
  )
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  if args.repeats < 1 or args.warmup < 1:
    parser.error("--warmup and --repeats must be at least 1 (the first call compiles).")
  t0 = time.perf_counter()
  for size in args.sizes.split(","):
    for record in bench_size(size.strip(), args):
      print(json.dumps(record), flush=True)
  print(json.dumps(dict(bench="meta", total_s=round(time.perf_counter() - t0, 1))), flush=True)


if __name__ == "__main__":
  main()
