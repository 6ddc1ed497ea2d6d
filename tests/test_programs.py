"""train.programs: the init's shardings, one compile per static shape, donation, shallower states
without an init, and the persistent compilation cache (written by one run, read by the next)."""

import os

import jax
import numpy as np
import pytest
from conftest import fixed_table, tiny_config
from jax.experimental.compilation_cache import compilation_cache

from ntng_jax import data as data_lib
from ntng_jax import partitioning
from ntng_jax.errors import ConfigError
from ntng_jax.methods.base import build_method
from ntng_jax.optim import build_optimizer
from ntng_jax.train import loop, programs


def _setup(family="bert", **overrides):
  config = tiny_config(family, **{"data.num_lines": 1000, **overrides})
  mesh = partitioning.make_mesh(config.mesh)
  tx = build_optimizer(config.optim)
  ds = data_lib.build_dataset(config.data, family, config.model.vocab_size, None)
  batch = {
    k: np.asarray(v)
    for k, v in next(iter(ds.train_iterator(config.train.batch_size, seed=0))).items()
  }
  example = {k: v[: config.train.micro_batch_size] for k, v in batch.items()}
  return config, mesh, tx, batch, example


def _step(built, state, batch, mesh, seed=0):
  controls = {"learning_rate": np.float32(1e-3)}
  with partitioning.activate(mesh):
    return built.train_step(
      state, partitioning.global_batch(mesh, batch), jax.random.PRNGKey(seed), controls
    )


def test_init_writes_the_state_into_its_logical_shardings():
  config, mesh, tx, _, example = _setup()
  built = programs.build_at_depth(config, 2, tx, mesh, example)
  state = programs.init_state(built, tx, mesh, example, seed=0)
  leaves, abstract = jax.tree.leaves(state), jax.tree.leaves(built.abstract)
  assert len(leaves) == len(abstract) > 10
  for x, a, s in zip(leaves, abstract, jax.tree.leaves(built.shardings)):
    assert (x.shape, x.dtype) == (a.shape, a.dtype)
    assert x.sharding == s == a.sharding
  layers = state.params["encoder"]["layers"]  # stacked along axis 0: one row per layer
  assert all(x.shape[0] == 2 for x in jax.tree.leaves(layers))
  again = programs.init_state(built, tx, mesh, example, seed=0)
  other = programs.init_state(built, tx, mesh, example, seed=1)
  for a, b, c in zip(jax.tree.leaves(state), jax.tree.leaves(again), jax.tree.leaves(other)):
    np.testing.assert_array_equal(a, b)  # the init is a function of the seed
  assert any(
    not np.array_equal(a, c)
    for a, c in zip(jax.tree.leaves(state.params), jax.tree.leaves(other.params))
  )


def test_train_step_compiles_once_per_shape_and_donates_the_state():
  config, mesh, tx, batch, example = _setup()
  built = programs.build_at_depth(config, 2, tx, mesh, example)
  state = programs.init_state(built, tx, mesh, example, seed=0)
  old = jax.tree.leaves(state.params)
  state, m1 = _step(built, state, batch, mesh)
  assert all(x.is_deleted() for x in old)  # donated: the old buffers were reused
  state, m2 = _step(built, state, batch, mesh, seed=1)
  assert built.train_step._cache_size() == 1
  assert int(state.step) == 2 and np.isfinite(float(m1["train_loss"]))
  assert float(m2["train_loss"]) != float(m1["train_loss"])
  half = {k: v[: config.train.batch_size // 2] for k, v in batch.items()}
  _step(built, state, half, mesh)  # a new static shape: a second program
  assert built.train_step._cache_size() == 2


def test_state_at_depth_takes_the_first_layers_without_an_init():
  config, mesh, tx, batch, example = _setup()
  deep = programs.build_at_depth(config, 2, tx, mesh, example)
  shallow = programs.build_at_depth(config, 1, tx, mesh, example)
  source = programs.init_state(deep, tx, mesh, example, seed=0)
  state = programs.state_at_depth(source, shallow, tx)
  for (path, x), y in zip(
    jax.tree_util.tree_leaves_with_path(state.params), jax.tree.leaves(source.params)
  ):
    layer = "layers" in jax.tree_util.keystr(path)
    np.testing.assert_array_equal(x, y[:1] if layer else y)
  for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(shallow.shardings)):
    assert x.sharding == s
  _step(shallow, state, batch, mesh)  # donates `state`, not the source's buffers
  assert not any(x.is_deleted() for x in jax.tree.leaves(source))
  deeper = programs.build_at_depth(config, 3, tx, mesh, example)
  assert programs.state_at_depth(source, deeper, tx) is None  # cannot deepen: shapes differ


def test_score_and_eval_programs_agree_on_the_loss():
  config, mesh, tx, _, example = _setup()
  built = programs.build_at_depth(config, 2, tx, mesh, example)
  state = programs.init_state(built, tx, mesh, example, seed=0)
  score = programs.score_program(built.model, "float32", built.shardings.params, mesh)
  with partitioning.activate(mesh):
    batch = partitioning.global_batch(mesh, example)
    per_example = np.asarray(score(state.params, batch))
    sums = jax.device_get(built.eval_step(state.params, batch))
  assert per_example.shape == (config.train.micro_batch_size,)
  assert np.all(np.isfinite(per_example)) and float(sums["weight_sum"]) > 0
  assert float(sums["loss_sum"]) / float(sums["weight_sum"]) == pytest.approx(
    float(per_example.mean()), rel=0.3
  )


@pytest.fixture
def cache_events():
  """Counts JAX's persistent-cache hits and misses; restores the cache settings afterwards."""
  counts = {"hits": 0, "misses": 0}

  def listen(event, **kwargs):
    if event == "/jax/compilation_cache/cache_hits":
      counts["hits"] += 1
    elif event == "/jax/compilation_cache/cache_misses":
      counts["misses"] += 1

  old_dir = jax.config.jax_compilation_cache_dir
  old_min = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.monitoring.register_event_listener(listen)
  try:
    yield counts
  finally:
    jax.monitoring.unregister_event_listener(listen)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old_min)
    jax.config.update("jax_compilation_cache_dir", old_dir)
    compilation_cache.reset_cache()


def test_compilation_cache_is_written_by_a_run_and_read_by_the_next(tmp_path, cache_events):
  config = tiny_config(
    "bert",
    **{"data.num_lines": 1000, "train.max_steps": 2, "train.compilation_cache_dir": ".jax_cache"},
  )
  config.rst.table = fixed_table(config, tmp_path / "table.json", 0.02)
  first = tmp_path / "first"
  jax.clear_caches()
  loop.train_and_evaluate(config, str(first))
  cache = first / ".jax_cache"
  assert cache.is_dir() and len(os.listdir(cache)) >= 3  # init, train step, eval step at least
  assert cache_events["misses"] >= 3
  written = cache_events["misses"]
  # A second run pointed at the first one's cache (an absolute path) compiles nothing new.
  config.train.compilation_cache_dir = str(cache)
  jax.clear_caches()  # the in-memory caches would otherwise hide the persistent one
  summary = loop.train_and_evaluate(config, str(tmp_path / "second"))
  assert summary["steps"] == 2
  assert cache_events["hits"] >= 3
  assert cache_events["misses"] == written
  assert not (tmp_path / "second" / ".jax_cache").exists()


def test_device_micro_batches_do_not_change_the_loss_or_the_update():
  """Reference micro-batches of 8 sequences, run as 4 × 8 (the reference) and 1 × 32 ('auto' on
  CPU: everything fits): the same loss, gradient and parameters up to float32 rounding."""
  results = {}
  for size in ("", "auto"):
    config, mesh, tx, batch, example = _setup(
      **{"train.micro_batch_size": 8, "train.device_micro_batch_size": size}
    )
    built = programs.build_at_depth(config, 2, tx, mesh, example)
    state = programs.init_state(built, tx, mesh, example, seed=0)
    state, metrics = _step(built, state, batch, mesh)
    results[size] = (metrics, jax.device_get(state.params))
    assert built.num_micro == {"": 4, "auto": 1}[size]  # CPU: 32 sequences fit
  (metrics0, params0), (metrics, params) = results[""], results["auto"]
  for key in ("train_loss", "grad_norm"):  # the gradient too, through its norm
    assert float(metrics[key]) == pytest.approx(float(metrics0[key]), rel=1e-5)
  for a, b in zip(jax.tree.leaves(params0), jax.tree.leaves(params)):
    # Adam's first step moves each parameter by about ±lr (1e-3) whatever the gradient's scale, so
    # a wrong gradient shows as a 1e-3..2e-3 difference; where a gradient is near Adam's epsilon,
    # float32 rounding of the sum alone moves the step by ~1e-5 (seen in CI), hence 10 % of lr.
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_auto_device_micro_batches_fall_back_and_pin_the_reference():
  auto = {"train.micro_batch_size": 8, "train.device_micro_batch_size": "auto"}
  config = tiny_config("bert", **auto)
  method = build_method(config)
  tried = []
  fits = lambda n: tried.append(n) or n >= 4  # as if 1 × 32 and 2 × 16 ran out of memory
  assert programs.device_micro_batches(config, method, fits) == 4 and tried == [1, 2, 4]
  assert programs.device_micro_batches(config, method, lambda n: True) == 1
  for name in ("layer_drop", "sophia"):  # a keep row / extra batches per reference micro-batch
    pinned = tiny_config("bert", f"size=tiny,method={name}", **auto)
    assert programs.device_micro_batches(pinned, build_method(pinned), fits) == 4
    pinned.train.device_micro_batch_size = "16"
    with pytest.raises(ConfigError, match="per reference micro-batch"):
      programs.device_micro_batches(pinned, build_method(pinned), fits)
  config.train.device_micro_batch_size = "12"
  with pytest.raises(ConfigError, match="device_micro_batch_size"):
    programs.device_micro_batches(config, method, fits)
