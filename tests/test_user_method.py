"""A method from outside the package (`examples/embedding_freeze.py`), loaded by its import path
`module:Class`: its effect in a run, its checkpointed host state, its place in a sweep beside the
baseline, and the one-sentence errors for a bad import path."""

import json
import os
import warnings

import numpy as np
import pytest
from conftest import REPO, fixed_table, run_module, tiny_config

EXAMPLES = REPO / "examples"
FREEZE = "embedding_freeze:EmbeddingFreeze"
STEP_SECONDS = 0.036  # per full-depth step in the fixed table
STEPS = 8  # budget 8 steps = 0.288 s = 8e-05 RST hours


def _state_leaves(workdir, step):
  import jax
  import orbax.checkpoint as ocp

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tree = ocp.PyTreeCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "state")
    )
  return {
    jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)
  }


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_embeddings_stop_changing_after_the_freeze_point(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(str(EXAMPLES))
  from ntng_jax.train import checkpoint as ckpt_lib
  from ntng_jax.train import loop as loop_lib

  config = tiny_config(
    "bert",
    f"size=tiny,method={FREEZE}",
    **{
      "data.num_lines": 4000,
      "train.log_every_steps": 1,
      "train.validation_batches": 1,
      "method.freeze_fraction": 0.45,
      "train.keep_checkpoints": 20,
      "train.checkpoint_every_rst_minutes": STEP_SECONDS / 60,
      "train.eval_every_rst_minutes": 100.0,
    },
  )
  config.train.budget_hours = STEPS * STEP_SECONDS / 3600
  config.rst.table = fixed_table(config, tmp_path / "table.json", STEP_SECONDS)
  work = str(tmp_path / "run")
  summary = loop_lib.train_and_evaluate(config, work)
  assert summary["stopped_because"] == "budget" and summary["steps"] == STEPS
  assert summary["method"] == FREEZE

  # Steps 0-3 (RST fraction < 0.45) train everything; steps 4-7 leave the embeddings alone.
  frozen = {r["step"]: r["embeddings_frozen"] for r in _records(work) if "embeddings_frozen" in r}
  assert frozen == {s: int(s > 4) for s in range(1, STEPS + 1)}
  leaves = {s: _state_leaves(work, s) for s in (3, 4, 6, STEPS)}
  embed = [k for k in leaves[4] if "word_embed" in k and "embedding" in k]
  other = [k for k in leaves[4] if "layers" in k and "params" in k and "opt_state" not in k]
  assert len([k for k in embed if "opt_state" not in k]) == 1 and other
  assert len(embed) > 1  # the parameter and its Adam moments
  for k in embed:
    assert not np.array_equal(leaves[3][k], leaves[4][k]) or "count" in k, k  # still training
    np.testing.assert_array_equal(leaves[4][k], leaves[6][k], err_msg=k)  # frozen
    np.testing.assert_array_equal(leaves[4][k], leaves[STEPS][k], err_msg=k)
  assert all(not np.array_equal(leaves[4][k], leaves[STEPS][k]) for k in other)

  # The method's host state is checkpointed (and restored on resume).
  loop = ckpt_lib.Checkpointer(work).read_loop(STEPS)
  assert loop["method"] == {"frozen_since_step": 4}


def test_bad_import_paths_are_one_sentence(monkeypatch):
  monkeypatch.syspath_prepend(str(EXAMPLES))
  from ntng_jax.config import ConfigError

  for name, fragment in (
    ("no_such_module:X", "cannot import 'no_such_module'"),
    ("embedding_freeze:Nope", "has no attribute 'Nope'"),
    ("embedding_freeze:FreezePlan", "is not a subclass of"),
  ):
    with pytest.raises(ConfigError, match=fragment):
      tiny_config("bert", f"size=tiny,method={name}")


@pytest.mark.slow
def test_sweep_runs_the_user_method_beside_the_baseline(tmp_path):
  """launch.sweep from another directory finds the method through PYTHONPATH, in its own process
  and in every launch.pretrain it starts; a method charged as the baseline takes its steps."""
  config = tiny_config("bert", "size=tiny", **{"data.num_lines": 4000})
  table = fixed_table(config, tmp_path / "table.json", STEP_SECONDS)
  root = tmp_path / "sweep"
  env = {"PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}
  args = [
    "--config=configs/bert.py:size=tiny",
    f"--budgets={STEPS * STEP_SECONDS / 3600:g}",
    "--seeds=0",
    f"--root={root}",
    f"--rst_table={table}",
    "--extra=--config.data.num_lines=4000 --config.train.validation_batches=1",
  ]
  bad = run_module(
    "launch.sweep",
    *args,
    "--methods=baseline,embedding_freeze:Nope",
    env=env,
    check=False,
    cwd=tmp_path,
  )
  assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
  assert "has no attribute 'Nope'" in bad.stderr and not root.exists()

  proc = run_module(
    "launch.sweep",
    *args,
    f"--methods=baseline,{FREEZE}",
    env=env,
    check=False,
    timeout=900,
    cwd=tmp_path,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "Sweep finished: 2 done, 0 diverged, 0 failed" in proc.stdout, proc.stdout[-3000:]
  runs = {
    m: root / m / f"budget-{STEPS * STEP_SECONDS / 3600:g}" / "seed-0" for m in ("baseline", FREEZE)
  }
  summaries = {m: json.loads((d / "summary.json").read_text()) for m, d in runs.items()}
  assert summaries[FREEZE]["method"] == FREEZE
  for key in ("steps", "rst_seconds", "stopped_because"):
    assert summaries[FREEZE][key] == summaries["baseline"][key], key
  assert summaries["baseline"]["stopped_because"] == "budget"
  frozen = [r["embeddings_frozen"] for r in _records(runs[FREEZE]) if "embeddings_frozen" in r]
  assert frozen[0] == 0 and frozen[-1] == 1


def test_user_optimizer_recipe_by_import_path(tmp_path, monkeypatch):
  """`optim.name=module:fn` builds the user's optax transformation, wrapped like a built-in (lr
  injected, so the trainer's schedule reaches it), and trains a run."""
  monkeypatch.syspath_prepend(str(EXAMPLES))
  import jax.numpy as jnp
  import optax

  from ntng_jax.config import ConfigError
  from ntng_jax.optim import build_optimizer
  from ntng_jax.train import loop as loop_lib
  from ntng_jax.train.step import set_learning_rate

  cfg = {"name": "sgd_momentum:sgd", "learning_rate": 0.1, "b1": 0.5}
  tx = build_optimizer(cfg)
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.5, 0.25])}
  state = set_learning_rate(tx.init(params), 0.01)  # the trainer's per-step write
  want_tx = optax.sgd(0.01, momentum=0.5)
  want_state = want_tx.init(params)
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    want, want_state = want_tx.update(grads, want_state, params)
    np.testing.assert_allclose(updates["w"], want["w"], rtol=1e-6)
  for name, fragment in (
    ("no_such_module:f", "cannot import 'no_such_module'"),
    ("sgd_momentum:nope", "has no function 'nope'"),
  ):
    with pytest.raises(ConfigError, match=fragment):
      build_optimizer({**cfg, "name": name})

  config = tiny_config(
    "bert",
    "size=tiny",
    **{
      "data.num_lines": 4000,
      "train.max_steps": 3,
      "train.validation_batches": 1,
      "optim.name": "sgd_momentum:sgd",
      "optim.learning_rate": 0.05,
    },
  )
  config.rst.table = fixed_table(config, tmp_path / "table.json", STEP_SECONDS)
  summary = loop_lib.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["stopped_because"] == "max_steps" and summary["steps"] == 3
  assert np.isfinite(summary["final_train_loss"])
