"""Start-up calibration compiles only what it times: one train step and one scoring pass per
depth, and a single init (shallower states take the deepest state's first layers)."""

import collections

import jax
import numpy as np
from conftest import tiny_config

from ntng_jax import data as data_lib
from ntng_jax import partitioning
from ntng_jax.train import calibrate


def test_calibration_compiles_only_the_programs_it_times():
  config = tiny_config("bert", **{"data.num_lines": 1000, "rst.warmup": 0, "rst.repeats": 1})
  num_layers = int(config.model.num_layers)
  assert num_layers >= 2
  mesh = partitioning.make_mesh(config.mesh)
  ds = data_lib.build_dataset(config.data, "bert", config.model.vocab_size, None)
  batch = {
    k: np.asarray(v)
    for k, v in next(iter(ds.train_iterator(config.train.batch_size, seed=0))).items()
  }
  compiled = collections.Counter()

  def listen(event, duration, fun_name="", **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiled[fun_name.removeprefix("jit(").removesuffix(")")] += 1

  jax.clear_caches()
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    table = calibrate.calibrate(config, mesh, example_batch_fn=lambda: batch)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert sorted(table.train) == sorted(table.forward) == list(range(1, num_layers + 1))
  assert all(v > 0 for v in [*table.train.values(), *table.forward.values()])
  assert compiled["train_step"] == num_layers
  assert compiled["score_step"] == num_layers
  assert compiled["init"] == 1  # the deepest state's; the others are sliced from it
  assert compiled["eval_step"] == 0  # built but never timed, so never compiled
