"""One process of the scale-out check in tests/test_multihost.py (run as a subprocess).

  python tests/multihost_worker.py --workdir=W --table=T.json --devices=8
  python tests/multihost_worker.py --workdir=W --table=T.json --devices=4 \
      --num_processes=2 --process_id=0 --port=12345          # and process_id=1 alongside

Simulates `--devices` CPU devices in this process (XLA_FLAGS=--xla_force_host_platform_device_count)
and, with --num_processes > 1, joins a jax.distributed job on localhost:PORT. Then it runs the real
trainer, `ntng_jax.train.loop.train_and_evaluate`, on the tiny BERT config of `make_config` over a
('data', 'fsdp', 'tensor') = (2, 2, 2) mesh of all global devices: each process reads only its half of
every global batch (the loop's `process_index`/`process_count` data sharding), only process 0 writes
metrics.jsonl and summary.json, and both processes take part in every orbax checkpoint save and
restore. The last stdout line is a JSON object: process index/count, device counts, the summary.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def make_config(table: str, max_steps: int = 0):
  """The tiny BERT config both the one-process and the two-process runs use.

  RST: a fixed table (`write_table`) so that no process calibrates on its own; 10 steps fit the
  budget, with a validation and a checkpoint every 3 steps (so both happen mid-run, collectively).
  """
  sys.path.insert(0, REPO)
  from configs import bert

  c = bert.get_config("size=tiny")
  c.data.num_lines = 1500
  c.train.batch_size = 32
  c.train.micro_batch_size = 16  # 2 micro-batches: exercises gradient accumulation
  c.train.budget_hours = 1.0 / 3600.0  # 1 RST second = 10 steps of 0.1 s
  c.train.eval_every_rst_minutes = 0.3 / 60.0
  c.train.checkpoint_every_rst_minutes = 0.3 / 60.0
  c.train.log_every_steps = 1
  c.train.validation_batches = 2
  c.train.max_steps = max_steps
  c.rst.table = table
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  return c


def write_table(path: str) -> None:
  """A fixed RST table (0.05 s per 16-sequence micro-batch at any depth) for `make_config`."""
  sys.path.insert(0, REPO)
  from ntng_jax import rst

  config = make_config(path)
  layers = range(1, int(config.model.num_layers) + 1)
  rst.save_table(
    rst.RSTTable(
      name="fixed-multihost-test",
      unit_sequences=16,
      train={n: 0.05 for n in layers},
      forward={n: 0.02 for n in layers},
      fingerprint=rst.step_shape_fingerprint(config),
    ),
    path,
  )


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--table", required=True)
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--port", type=int, default=0)
  p.add_argument("--max_steps", type=int, default=0)
  args = p.parse_args()

  # Before jax is imported: the CPU platform with this many simulated devices.
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
  ).strip()
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, REPO)
  import jax

  if args.num_processes > 1:
    # Cross-process collectives on the CPU backend need an implementation; 'gloo' is the default
    # in jax 0.10 (older releases default to none and fail on the first cross-process psum).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=f"localhost:{args.port}",
      num_processes=args.num_processes,
      process_id=args.process_id,
      initialization_timeout=120,
    )
  assert jax.local_device_count() == args.devices, jax.local_devices()
  assert jax.device_count() == args.devices * args.num_processes, jax.devices()

  from ntng_jax.train import loop

  summary = loop.train_and_evaluate(make_config(args.table, args.max_steps), args.workdir)
  result = dict(
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    device_count=jax.device_count(),
    local_device_count=jax.local_device_count(),
    summary=summary,
  )
  print(json.dumps(result), flush=True)
  if args.num_processes > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
