"""Is the micro-batch scan worth skipping when a step has one micro-batch? A/B, interleaved.

  python benchmarks/single_micro_batch.py --models=bert:small:32:128 --rounds=7

Two jitted steps on the same model, optimizer and batch, state donated: (a) the accumulation
as `ntng_jax/train/step.py` does it (zero gradient buffers + `lax.scan` over the one
micro-batch), (b) the gradient of the micro-batch directly. Prints medians and the ratio b / a
and checks that the two give the same loss and parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import step_time  # noqa: E402

from ntng_jax.models import build_model  # noqa: E402
from ntng_jax.train import step as step_lib  # noqa: E402


def make(model, tx, scan: bool):
  grad_fn = jax.value_and_grad(step_lib.make_loss_fn(model, jnp.float32))

  def step(params, opt_state, batch):
    if scan:
      micro = jax.tree.map(lambda x: x[None], batch)

      def acc(carry, mb):
        loss, grads = grad_fn(params, mb, None)
        return (carry[0] + loss, jax.tree.map(jnp.add, carry[1], grads)), None

      zeros = jax.tree.map(jnp.zeros_like, params)
      (loss, grads), _ = jax.lax.scan(acc, (jnp.zeros((), jnp.float32), zeros), micro)
    else:
      loss, grads = grad_fn(params, batch, None)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="bert:small:32:128")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  for spec in args.models.split(","):
    family, size, batch, seq = spec.split(":")
    config = step_time.get_config(family, f"size={size}")
    config.data.seq_len = int(seq)
    model = build_model(config.model)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-4))
    b = {
      k: jnp.asarray(v)
      for k, v in step_time.synthetic_batch(config, int(batch), np.random.default_rng(0)).items()
      if k != "example_id"
    }
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), b))
    steps = {n: make(model, tx, n == "scan") for n in ("scan", "direct")}
    state = {n: (jax.tree.map(jnp.copy, params), tx.init(params)) for n in steps}
    times = {n: [] for n in steps}
    losses = {n: [] for n in steps}
    for r in range(args.rounds + 1):
      for n, fn in steps.items():
        t0 = time.perf_counter()
        p, o, loss = fn(*state[n], b)
        jax.block_until_ready(loss)
        state[n] = (p, o)
        losses[n].append(float(loss))
        if r:
          times[n].append(time.perf_counter() - t0)
    diff = max(
      float(jnp.abs(x - y).max())
      for x, y in zip(jax.tree.leaves(state["scan"][0]), jax.tree.leaves(state["direct"][0]))
    )
    res = dict(
      model=family,
      size=size,
      batch=int(batch),
      seq_len=int(seq),
      scan_s=float(np.median(times["scan"])),
      direct_s=float(np.median(times["direct"])),
      ratio=float(np.median(times["direct"]) / np.median(times["scan"])),
      round_ratios=[round(a / b, 3) for a, b in zip(times["direct"], times["scan"])],
      same_losses=losses["scan"] == losses["direct"],
      max_param_diff=diff,
      loadavg=os.getloadavg()[0],
    )
    print(json.dumps(res), flush=True)
    if args.out:
      with open(args.out, "a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
  main()
