"""Layer stacking: schedule, parameter/optimizer-state growth, a grown model trains, and the CLI run
(depths at the expected RST fractions, resume across a growth event, more steps than baseline).

`run_summary` (cached per process) is shared with tests/test_layer_drop.py so that the baselines
of the end-to-end comparisons are trained once per session."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO, fixed_table, run_module, tiny_config

from ntng_jax import rst
from ntng_jax.config import ConfigError
from ntng_jax.methods import stacking as st
from ntng_jax.methods.base import build_method
from ntng_jax.optim import build_optimizer
from ntng_jax.train import programs
from ntng_jax.train import state as state_lib

STEP_SECONDS = 0.02  # RST seconds per full-depth step in the fixed tables below
E2E_STEPS = 24  # budget = this many full-depth steps


# ---- helpers shared with test_layer_drop.py -------------------------------------------------------


def run_config(family, method, directory, num_layers=None, steps=E2E_STEPS, **overrides):
  """Tiny config of `method` with a budget of `steps` full-depth steps on a fixed table."""
  extra = {"model.num_layers": num_layers} if num_layers else {}
  config = tiny_config(
    family,
    f"size=tiny,method={method}",
    **{
      "data.num_lines": 2000,
      "train.log_every_steps": 1,
      "train.validation_batches": 1,
      "train.eval_every_rst_minutes": 1000.0,
      "train.checkpoint_every_rst_minutes": 1000.0,
      **extra,
      **overrides,
    },
  )
  config.train.budget_hours = steps * STEP_SECONDS / 3600
  os.makedirs(directory, exist_ok=True)
  config.rst.table = fixed_table(
    config, os.path.join(directory, f"table-{family}-{config.model.num_layers}.json"), STEP_SECONDS
  )
  return config


_RUNS = {}
_RUN_DIR = tempfile.TemporaryDirectory(prefix="ntng-dynamic-")
# The end-to-end runs are `launch.pretrain` processes sharing one persistent compilation cache, so a
# program compiled by one run (e.g. the full-depth train and eval steps) is reused by the others.
CACHE_ENV = {
  "JAX_COMPILATION_CACHE_DIR": os.path.join(_RUN_DIR.name, "jax-cache"),
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
}


def cli_args(config, workdir, checkpoint_minutes=1000):
  """`launch.pretrain` arguments reproducing `config` from `run_config`."""
  args = [
    f"--config=configs/{config.model.family}.py:size=tiny,method={config.method.name}",
    f"--workdir={workdir}",
    f"--config.rst.table={config.rst.table}",
    f"--config.train.budget_hours={config.train.budget_hours}",
    f"--config.data.num_lines={config.data.num_lines}",
    "--config.train.validation_batches=1",
    "--config.train.log_every_steps=1",
    "--config.train.eval_every_rst_minutes=1000",
    f"--config.train.checkpoint_every_rst_minutes={checkpoint_minutes}",
  ]
  if config.model.num_layers != tiny_config(config.model.family).model.num_layers:
    args.append(f"--config.model.num_layers={config.model.num_layers}")
  return args


def run_summary(family, method, num_layers=None):
  """(summary.json, metrics.jsonl records) of a tiny `launch.pretrain` run (cached per session)."""
  key = (family, method, num_layers)
  if key not in _RUNS:
    workdir = os.path.join(_RUN_DIR.name, "-".join(map(str, key)))
    config = run_config(family, method, _RUN_DIR.name, num_layers)
    run_module("launch.pretrain", *cli_args(config, workdir), env=CACHE_ENV)
    with open(os.path.join(workdir, "summary.json")) as f:
      _RUNS[key] = (json.load(f), read_records(workdir))
  return _RUNS[key]


def read_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def layer_leaves(tree):
  return {
    jax.tree_util.keystr(p): x
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    if st.is_layer_path(p)
  }


# ---- schedule ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "family, size, initial, depths",
  [
    ("bert", "base", 4, [4, 8, 16]),
    ("t5", "base", 3, [3, 6, 12]),
    ("bert", "tiny", 1, [1, 2, 2]),
    ("t5", "small", 1, [1, 2, 4]),
  ],
)
def test_default_config_and_schedule(family, size, initial, depths):
  config = tiny_config(family, f"size={size},method=stacking")
  assert config.method.initial_layers == initial
  assert tuple(config.method.fractions) == (0.125, 0.3)
  assert config.method.copy_optimizer_state is False
  method = build_method(config)
  assert method.initial_depth() == initial and method.depths == depths
  for f, stage in [(0.0, 0), (0.1249, 0), (0.125, 1), (0.2999, 1), (0.3, 2), (1.0, 2)]:
    plan = method.plan(f, step=123)
    assert (plan.depth, plan.keep) == (depths[stage], None)
    assert method.metrics(plan) == {"active_layers": depths[stage], "stage": stage}
    assert method.charges(plan, 32) == [rst.Charge("train", depths[stage], 32)]


def test_schedule_edge_cases():
  assert [st.auto_initial_layers(n) for n in (16, 12, 8, 6, 5, 2, 1)] == [4, 3, 2, 3, 5, 1, 1]
  # initial_layers = 0: automatic for the actual (overridden) depth.
  method = build_method(
    tiny_config(
      "bert", "size=tiny,method=stacking", **{"model.num_layers": 8, "method.initial_layers": 0}
    )
  )
  assert method.depths == [2, 4, 8]
  with pytest.raises(ConfigError, match="method.initial_layers=2"):
    build_method(tiny_config("bert", "size=tiny,method=stacking", **{"model.num_layers": 8}))
  with pytest.raises(ConfigError, match="fractions"):
    build_method(
      tiny_config("bert", "size=tiny,method=stacking", **{"method.fractions": (0.3, 0.1)})
    )


# ---- growth --------------------------------------------------------------------------------------


def make_batch(family, vocab, batch=4, seq=16, preds=5, targets=6, seed=0):
  """A synthetic batch with the training batch contract (docs/architecture.md)."""
  rng = np.random.default_rng(seed)
  ids = lambda *shape: rng.integers(2, vocab, shape).astype(np.int32)
  if family == "bert":
    return dict(
      example_id=np.arange(batch, dtype=np.int32),
      input_ids=ids(batch, seq),
      mlm_positions=rng.integers(0, seq, (batch, preds)).astype(np.int32),
      mlm_labels=ids(batch, preds),
      mlm_weights=np.ones((batch, preds), np.float32),
    )
  t = ids(batch, targets)
  return dict(
    example_id=np.arange(batch, dtype=np.int32),
    encoder_input_ids=ids(batch, seq),
    decoder_input_ids=np.pad(t[:, :-1], ((0, 0), (1, 0))),
    targets=t,
    target_weights=np.ones((batch, targets), np.float32),
  )


def random_params(model, batch, seed=0):
  """Parameters of `model` with random values (shapes from an abstract init: nothing compiles)."""
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))
  leaves, treedef = jax.tree.flatten(shapes)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(
    treedef, [jnp.asarray(0.02 * rng.standard_normal(x.shape), x.dtype) for x in leaves]
  )


@pytest.fixture(scope="module", params=["bert", "t5"])
def depth1(request):
  """(config, params at depth 1, example batch) for each family."""
  config = tiny_config(request.param)
  batch = make_batch(request.param, config.model.vocab_size)
  return config, random_params(programs.model_at_depth(config, 1), batch), batch


def test_grow_params_copies_layers(depth1):
  config, params, batch = depth1
  two = st.grow_params(params, 1)
  four = st.grow_params(two, 2)
  assert st.layer_depth(params) == 1 and st.layer_depth(two) == 2 and st.layer_depth(four) == 4
  # The grown tree has exactly the shapes of a model built at that depth.
  want = jax.eval_shape(programs.model_at_depth(config, 4).init, jax.random.PRNGKey(0), batch)
  assert jax.tree.map(np.shape, four) == jax.tree.map(np.shape, nn.unbox(want))
  old, new = layer_leaves(two), layer_leaves(four)
  stacks = {k.split("['layers']")[0] for k in new}
  assert len(stacks) == (1 if config.model.family == "bert" else 2)  # T5: encoder and decoder
  for k, x in new.items():
    np.testing.assert_array_equal(x[:2], old[k])  # old layers untouched
    np.testing.assert_array_equal(x[2:], old[k])  # layer i + n = layer i
  # Non-layer leaves are passed through unchanged.
  for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(four)):
    if not st.is_layer_path(p):
      assert a is b
  # Tiling when more than doubling: 1 -> 3 copies layer 0 twice.
  three = layer_leaves(st.grow_params(params, 2))
  for k, x in layer_leaves(params).items():
    np.testing.assert_array_equal(three[k], np.concatenate([x, x, x]))


def _optimizers(config):
  optim = dict(config.optim)
  return {
    "optax.adamw": optax.adamw(1e-3, weight_decay=0.01),
    "project": build_optimizer(optim),
    "project-layered": build_optimizer({**optim, "per_layer_step_counts": True}),
    "project-lion": build_optimizer({**optim, "name": "lion", "learning_rate": 1e-4}),
    "project-sophia": build_optimizer({**optim, "name": "sophia", "learning_rate": 1e-3}),
  }


def _filled(tree):
  """`tree` with every array leaf of rank >= 1 replaced by distinct non-zero values and integer
  scalars (counts) bumped, so that copies, zeros and untouched leaves are told apart."""

  def fill(x):
    x = jnp.asarray(x)
    if x.ndim == 0:
      return x + 7 if jnp.issubdtype(x.dtype, jnp.integer) else x
    return (1.0 + jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape) / x.size).astype(x.dtype)

  return jax.tree.map(fill, tree)


def test_grow_opt_state(depth1):
  config, params, _ = depth1
  params = st.grow_params(params, 1)  # depth 2
  grown_params = st.grow_params(params, 2)
  for name, tx in _optimizers(config).items():
    opt_state = _filled(tx.init(params))
    fresh = tx.init(grown_params)
    for copy in (False, True):
      grown = st.grow_opt_state(opt_state, tx, params, 2, copy)
      # Same structure and shapes as a fresh state for the grown parameters.
      assert jax.tree.structure(grown) == jax.tree.structure(fresh), name
      assert jax.tree.map(np.shape, grown) == jax.tree.map(np.shape, fresh), name
      moments = 0
      for (path, g), o in zip(
        jax.tree_util.tree_flatten_with_path(grown)[0], jax.tree.leaves(opt_state)
      ):
        if st.is_layer_path(path):
          moments += 1
          np.testing.assert_array_equal(g[:2], o, err_msg=name)  # old layers untouched
          if copy:
            np.testing.assert_array_equal(g[2:], o, err_msg=name)  # copies of layers 0, 1
          else:
            assert not np.any(np.asarray(g[2:])), name  # fresh zeros
        elif any(getattr(k, "name", None) == "layer_count" for k in path):
          np.testing.assert_array_equal(g[:2], o, err_msg=name)  # per-layer step counts
          np.testing.assert_array_equal(g[2:], o if copy else 0, err_msg=name)
        else:
          np.testing.assert_array_equal(g, o, err_msg=name)  # counts, lr, other moments
      # Adam: mu and nu; Lion: mu; Sophia: mu and h, for every stacked parameter.
      per_param = 1 if "lion" in name else 2
      assert moments == per_param * len(layer_leaves(params)), name


def test_grown_model_trains():
  """TrainState at depth 1 -> Stacking.grow -> the trainer's programs at depth 2 -> a train step
  with a finite loss."""
  from ntng_jax import partitioning

  config = tiny_config("bert", "size=tiny,method=stacking")
  method = build_method(config)
  assert method.initial_depth() == 1
  tx = build_optimizer(config.optim)
  mesh = partitioning.make_mesh(config.mesh)
  example = make_batch("bert", config.model.vocab_size, batch=config.train.batch_size)
  params = random_params(programs.model_at_depth(config, 1), example)
  state = state_lib.create(params, tx)
  state = method.grow(state, 2, tx)
  assert int(state.step) == 0 and st.layer_depth(state.params) == 2
  built = programs.build_programs(
    config, programs.model_at_depth(config, 2), tx, mesh, example, method
  )
  state = jax.device_put(state, built.shardings)
  batch = partitioning.global_batch(mesh, example)
  before = jax.tree.map(np.asarray, state.params)
  with partitioning.activate(mesh):
    state, metrics = built.train_step(
      state, batch, jax.random.PRNGKey(1), {"learning_rate": np.float32(1e-3)}
    )
  assert np.isfinite(float(metrics["train_loss"])) and np.isfinite(float(metrics["grad_norm"]))
  assert int(state.step) == 1
  # Both the original and the copied layer were trained.
  for k, x in layer_leaves(state.params).items():
    assert np.abs(np.asarray(x) - layer_leaves(before)[k]).reshape(2, -1).max(1).min() > 0, k


# ---- end to end ----------------------------------------------------------------------------------


def _expected_schedule(config):
  """(growth events [(step, from, to, fraction)], total steps) by replaying the trainer's clock."""
  method = build_method(config)
  table = rst.load_table(config.rst.table)
  budget = config.train.budget_hours * 3600
  rst_s, step, depth, events = 0.0, 0, method.initial_depth(), []
  while True:
    plan = method.plan(rst_s / budget, step)
    if plan.depth != depth:
      events.append((step, depth, plan.depth, rst_s / budget))
      depth = plan.depth
    cost = rst.step_cost(table, method.charges(plan, config.train.batch_size))
    if rst_s + cost > budget * (1 + 1e-12):
      return events, step
    rst_s += cost
    step += 1


def _cli_args(config, workdir):
  # Checkpoints every 0.12 RST s = 6 full-depth steps, so some land between the growths.
  return cli_args(config, workdir, checkpoint_minutes=0.002)


def test_cli_stacking_depths_resume_and_more_steps(tmp_path):
  """`launch.pretrain` grows 1 -> 2 -> 4 layers at 12.5 % and 30 % of the RST budget; a run
  SIGKILLed after a checkpoint past the first growth resumes to the same result; it takes more
  optimizer steps than the baseline for the same budget."""
  config = run_config("bert", "stacking", str(tmp_path), num_layers=4)
  assert config.method.initial_layers == 1
  events, total = _expected_schedule(config)
  assert [(a, b) for _, a, b, _ in events] == [(1, 2), (2, 4)]
  env = CACHE_ENV
  full, killed = tmp_path / "full", tmp_path / "killed"
  run_module("launch.pretrain", *_cli_args(config, full), env=env)

  summary = json.loads((full / "summary.json").read_text())
  records = read_records(full)
  assert summary["steps"] == total and summary["final_depth"] == 4
  grows = [r for r in records if r.get("event") == "grow"]
  assert [(r["step"], r["from_depth"], r["to_depth"]) for r in grows] == [
    (s, a, b) for s, a, b, _ in events
  ]
  budget = config.train.budget_hours * 3600
  for r, threshold, old_depth in zip(grows, (0.125, 0.3), (1, 2)):
    # The first step planned at or past the fraction grows; the step before was still short of it.
    assert r["rst_budget_fraction"] >= threshold
    assert r["rst_budget_fraction"] - STEP_SECONDS * old_depth / 4 / budget < threshold
  train = [r for r in records if "train_loss" in r]
  assert len(train) == total
  g1, g2 = grows[0]["step"], grows[1]["step"]
  for r in train:
    depth, stage = (1, 0) if r["step"] <= g1 else (2, 1) if r["step"] <= g2 else (4, 2)
    assert (r["active_layers"], r["stage"]) == (depth, stage), r
  # More optimizer steps than the baseline under the same budget and table.
  baseline, _ = run_summary("bert", "baseline", 4)
  assert baseline["steps"] == E2E_STEPS and summary["steps"] > baseline["steps"]

  # SIGKILL after a checkpoint past the first growth, then rerun the same command.
  proc = subprocess.Popen(
    [sys.executable, "-m", "launch.pretrain", *_cli_args(config, killed)],
    cwd=REPO,
    env={**os.environ, **env},
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  checkpoints = killed / "checkpoints"  # committed checkpoints: directories named by their step
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if checkpoints.exists() and any(
      p.name.isdigit() and int(p.name) > g1 for p in checkpoints.iterdir()
    ):
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run ended before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (killed / "summary.json").exists()
  out = run_module("launch.pretrain", *_cli_args(config, killed), env=env)
  resumed_at = int(out.stdout.split("Resuming from step")[1].split()[0])
  assert g1 < resumed_at < total  # restored at depth 2 or 4, not from scratch
  b = json.loads((killed / "summary.json").read_text())
  assert (b["steps"], b["rst_seconds"], b["final_depth"]) == (
    summary["steps"],
    summary["rst_seconds"],
    4,
  )
  assert b["final_train_loss"] == pytest.approx(summary["final_train_loss"], abs=1e-6)
  la = [r["train_loss"] for r in train]
  lb = [r["train_loss"] for r in read_records(killed) if "train_loss" in r]
  np.testing.assert_allclose(lb, la, atol=1e-6)


def test_t5_stacking_takes_more_steps_than_baseline():
  baseline, _ = run_summary("t5", "baseline")
  stacked, records = run_summary("t5", "stacking")
  assert stacked["stopped_because"] == baseline["stopped_because"] == "budget"
  assert stacked["steps"] > baseline["steps"] == E2E_STEPS
  assert stacked["final_depth"] == 2 and np.isfinite(stacked["final_train_loss"])
  assert [(r["from_depth"], r["to_depth"]) for r in records if r.get("event") == "grow"] == [(1, 2)]
