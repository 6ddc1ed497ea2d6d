"""Run by tests in a subprocess with 8 simulated CPU devices: three train steps on a
data×fsdp×tensor mesh and on one device, printing both loss sequences as JSON."""

import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from conftest import tiny_config  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from ntng_jax import data as data_lib  # noqa: E402
from ntng_jax import partitioning
from ntng_jax.optim import build_optimizer  # noqa: E402
from ntng_jax.train import programs  # noqa: E402


def losses_on(mesh, config, batches):
  tx = build_optimizer(config.optim)
  built = programs.build_programs(
    config,
    programs.model_at_depth(config, config.model.num_layers),
    tx,
    mesh,
    {k: v[: config.train.micro_batch_size] for k, v in batches[0].items()},
  )
  state = programs.init_state(built, tx, mesh, batches[0], seed=0)
  out = []
  with partitioning.activate(mesh):
    for i, b in enumerate(batches):
      state, m = built.train_step(
        state,
        partitioning.global_batch(mesh, b),
        jax.random.PRNGKey(i),
        {"learning_rate": np.float32(1e-3)},
      )
      out.append(float(m["train_loss"]))
  return out


def main(family, workdir):
  assert jax.device_count() == 8, jax.devices()
  config = tiny_config(
    family, **{"data.num_lines": 2000, "train.batch_size": 32, "train.micro_batch_size": 16}
  )
  ds = data_lib.build_dataset(config.data, family, config.model.vocab_size, workdir)
  it = ds.train_iterator(config.train.batch_size, seed=0)
  batches = [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(3)]
  multi = partitioning.make_mesh(ConfigDict(dict(data=2, fsdp=2, tensor=2)))
  single = partitioning.make_mesh(ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])
  print(
    json.dumps(
      {"multi": losses_on(multi, config, batches), "single": losses_on(single, config, batches)}
    )
  )


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
