"""Issue 13.2-3: BERT layer dropping samples a keep vector per micro-batch (T5 per step) and charges
each micro-batch at its own active layers; Sophia-G on BERT estimates its Hessian on fresh
micro-batches that are never trained on, charged as that many full-depth micro-batches."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config
from test_stacking import make_batch, random_params

from ntng_jax import rst
from ntng_jax.methods import layer_drop as ld
from ntng_jax.methods.base import build_method
from ntng_jax.models import build_model
from ntng_jax.optim import build_optimizer, gnb_estimate, optimizer_hook
from ntng_jax.train import loop as loop_lib
from ntng_jax.train import state as state_lib
from ntng_jax.train import step as step_lib

# ---- layer dropping per micro-batch -------------------------------------------------------------


def _drop_config(family="bert", **overrides):
  return tiny_config(
    family,
    "size=tiny,method=layer_drop",
    **{"model.num_layers": 16, "train.batch_size": 32, "train.micro_batch_size": 8, **overrides},
  )


def test_resample_defaults_follow_each_family():
  assert tiny_config("bert", "size=tiny,method=layer_drop").method.resample == "micro_batch"
  assert tiny_config("t5", "size=tiny,method=layer_drop").method.resample == "step"
  with pytest.raises(Exception, match="method.resample"):
    build_method(_drop_config(**{"method.resample": "sometimes"}))


def test_bert_keeps_per_micro_batch_at_the_schedules_rate():
  """Layer i (1-based) runs in a micro-batch with probability 1 - D·i/L (docs/paper.md §4.2); rows
  of one step differ; the draw is a function of (seed, step, micro-batch)."""
  L, steps, fraction = 16, 600, 1.0
  method, again = build_method(_drop_config()), build_method(_drop_config())
  level = ld.drop_level(fraction, 0.5, 100.0)
  plans = [method.plan(fraction, s) for s in range(steps)]
  keep = np.stack([p.keep for p in plans])  # [steps, 4, L]
  assert keep.shape == (steps, 4, L) and keep.dtype == bool
  rows = keep.reshape(-1, L)
  n = rows.shape[0]
  p_run = 1 - level * np.arange(1, L + 1) / L
  sigma = np.sqrt(p_run * (1 - p_run) / n)
  assert np.all(np.abs(rows.mean(0) - p_run) < 4.5 * sigma), (rows.mean(0), p_run)
  distinct = [len({r.tobytes() for r in k}) for k in keep]
  assert np.mean([d > 1 for d in distinct]) > 0.95  # micro-batches differ
  for s in (0, 17, 599):  # reproduced (resume, other host)
    np.testing.assert_array_equal(plans[s].keep, again.plan(fraction, s).keep)
    for m in range(4):
      np.testing.assert_array_equal(plans[s].keep[m], ld.sample_keep(level, L, 0, s, m))


def test_t5_keeps_one_vector_per_step():
  method = build_method(_drop_config("t5"))
  for s in range(20):
    keep = method.plan(1.0, s).keep
    assert keep.shape == (4, 16) and (keep == keep[:1]).all()
    np.testing.assert_array_equal(keep[0], ld.sample_keep(method.drop_level(1.0), 16, 0, s))


def test_step_charge_is_the_sum_over_micro_batches():
  config = _drop_config()
  method = build_method(config)
  table = rst.RSTTable(
    name="t", unit_sequences=8, train={n: 0.01 * n + 0.003 for n in range(1, 17)}
  )
  for s in range(30):
    plan = method.plan(0.7, s)
    charges = method.charges(plan, 32)
    active = [max(1, int(r.sum())) for r in plan.keep]
    assert charges == [rst.Charge("train", a, 8) for a in active]
    assert rst.step_cost(table, charges) == pytest.approx(sum(table.train[a] for a in active))
    assert method.metrics(plan)["active_layers"] == pytest.approx(np.mean(plan.keep.sum(1)))
  # Every layer dropped in a micro-batch: it still costs one layer (embeddings and head ran).
  none = ld.DropPlan(depth=16, keep=np.zeros((4, 16), bool), drop_level=0.5)
  assert method.charges(none, 32) == [rst.Charge("train", 1, 8)] * 4


@pytest.mark.parametrize("mask", [False, True])
def test_train_step_gives_each_micro_batch_its_row(mask):
  """The step's gradient is the mean of each micro-batch's gradient under its own keep row: a layer
  dropped in some micro-batches gets the others' gradient; with masking only the layers dropped in
  every micro-batch are left unchanged."""
  config = tiny_config("bert", "size=tiny,method=layer_drop", **{"model.num_layers": 3})
  model = build_model(config.model)
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)  # update = -gradient
  batch = make_batch("bert", config.model.vocab_size, batch=8)
  params = random_params(model, batch)
  state = state_lib.create(params, tx)
  keep = np.array([[True, False, False], [True, True, False]])  # layer 1 in micro 1 only; 2 never
  step = step_lib.make_train_step(model, tx, 2, "float32")
  if mask:
    step = ld.mask_dropped_train_step(step)
  new, _ = jax.jit(step)(
    state, batch, jax.random.PRNGKey(0), {"learning_rate": np.float32(1.0), "keep": keep}
  )
  loss_fn = step_lib.make_loss_fn(model, jnp.float32)
  micro = step_lib.split_micro_batches(batch, 2)
  grads = [
    jax.grad(loss_fn)(params, jax.tree.map(lambda x: x[m], micro), jnp.asarray(keep[m]))
    for m in range(2)
  ]
  want = jax.tree.map(lambda p, a, b: p - (a + b) / 2, params, *grads)
  got_layers = {
    jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(new.params)[0]
  }
  moved = [False, False, False]
  for (path, w), p0 in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(params)):
    g = got_layers[jax.tree_util.keystr(path)]
    if mask and any(getattr(k, "key", None) == "layers" for k in path):
      np.testing.assert_array_equal(g[2], p0[2])  # dropped everywhere: unchanged
      np.testing.assert_allclose(g[:2], w[:2], rtol=1e-5, atol=1e-6)
    else:
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    if any(getattr(k, "key", None) == "layers" for k in path):
      moved = [
        m or bool(np.abs(np.asarray(g[i]) - np.asarray(p0[i])).max() > 0)
        for i, m in enumerate(moved)
      ]
  assert moved[:2] == [True, True]  # layer 1: micro-batch 1's gradient


# ---- Sophia-G's fresh Hessian batch -------------------------------------------------------------


def _sophia_config(**overrides):
  # 4 micro-batches of 8 per step, the Hessian on half of them: BERT base's 6 of 12 in small.
  return tiny_config(
    "bert",
    "size=tiny,method=sophia",
    **{"train.batch_size": 32, "train.micro_batch_size": 8, "data.num_lines": 2000, **overrides},
  )


def test_sophia_config_fields_are_real():
  base = tiny_config("bert", "size=base,method=sophia")
  assert base.optim.hessian_batch_fraction == 0.5 and base.optim.free_updates is False
  hook = optimizer_hook(base)
  assert hook.aux_micro_batches == 6 and hook.hessian_sequences == 768
  t5 = tiny_config("t5", "size=base,method=sophia")
  assert t5.optim.hessian_batch_fraction == 1.0 and t5.optim.gnb_clip_norm == 1.0
  assert optimizer_hook(t5).hessian_sequences == 144
  base.lock()  # as launch.pretrain's --config flags: existing fields can be set
  base.optim.free_updates = True
  base.optim.hessian_batch_fraction = 0.25
  assert optimizer_hook(base).aux_micro_batches == 3


def test_bert_sophia_bs_is_the_runs_batch_in_tokens():
  """The paper's bs (196,608 = its 1536 x 128 batch) scales the Hessian in the update; a run with
  another batch keeps that relation (at 2,048 tokens, bs = 196,608 made every update ~96x
  smaller: Sophia-G sat near the unigram loss at every learning rate)."""
  from configs import get_config

  assert get_config("bert", "size=base,method=sophia").optim.batch_tokens == 196608
  config = get_config("bert", "size=tiny,method=sophia")
  config.lock()  # as launch.pretrain's --config flags set fields after get_config
  config.train.batch_size, config.data.seq_len = 16, 256
  assert config.optim.batch_tokens == 16 * 256
  assert get_config("t5", "size=base,method=sophia").optim.batch_tokens == 5120  # T5: step()'s


def test_sophia_hessian_batch_is_fresh_and_never_trained_on(tmp_path):
  from ntng_jax import data as data_lib

  config = _sophia_config(**{"data.num_lines": 5000})
  hook = optimizer_hook(config)
  assert hook.aux_micro_batches == 2 and hook.hessian_sequences == 16
  dataset = data_lib.build_dataset(config.data, "bert", config.model.vocab_size, str(tmp_path))
  it = dataset.train_iterator(32, seed=0)
  assert it.batches_per_epoch >= 28
  trained, hessian = [], []
  for step in range(25):  # the loop's draw: fresh batch first on refreshes
    aux = next(it) if hook.draws_fresh(step) else None
    batch, aux_back = hook.split_aux(hook.with_aux(next(it), aux))
    trained.append(np.asarray(batch["example_id"]))
    if hook.draws_fresh(step):
      micro = step_lib.split_micro_batches({k: jnp.asarray(v) for k, v in aux_back.items()}, 4)
      ids = np.asarray(hook.hessian_batch(micro)["example_id"]).reshape(-1)
      assert ids.size == 16 and set(ids) <= set(np.asarray(aux["example_id"]))
      hessian.append(ids)
  assert [s for s in range(25) if hook.draws_fresh(s)] == [0, 10, 20]
  trained, hessian = np.concatenate(trained), np.concatenate(hessian)
  assert len(set(trained)) == trained.size  # (one epoch: no repeats)
  assert not set(hessian) & set(trained)  # disjoint from everything trained on


def test_sophia_step_estimates_on_the_fresh_batch():
  """On a refresh step the optimizer's Hessian is the GNB estimate on the first micro-batches of
  the fresh batch (not on the training batch)."""
  config = _sophia_config(**{"model.num_layers": 1})
  model = build_model(config.model)
  tx = build_optimizer(config.optim)
  hook = optimizer_hook(config)
  train = make_batch("bert", config.model.vocab_size, batch=32, seed=0)
  fresh = make_batch("bert", config.model.vocab_size, batch=32, seed=1)
  params = random_params(model, train)
  state = state_lib.create(params, tx)
  step = jax.jit(step_lib.make_train_step(model, tx, 4, "float32", None, hook))
  rng = jax.random.PRNGKey(3)
  new, _ = step(state, hook.with_aux(train, fresh), rng, {"learning_rate": np.float32(1e-3)})
  h = new.opt_state.inner_state[1].hessian
  micro = step_lib.split_micro_batches(fresh, 4)
  want = gnb_estimate(
    params,
    lambda p, b: model.logits(p, b),
    hook.hessian_batch(micro),
    rng,
    microbatched=True,
    num_tokens=config.optim.batch_tokens,
  )
  b2 = config.optim.b2
  for a, b in zip(jax.tree.leaves(h), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, (1 - b2) * np.asarray(b), rtol=2e-4, atol=1e-12)
  other, _ = step(state, hook.with_aux(train, train), rng, {"learning_rate": np.float32(1e-3)})
  assert any(
    not np.allclose(a, b)
    for a, b in zip(jax.tree.leaves(other.opt_state.inner_state[1].hessian), jax.tree.leaves(h))
  )


def test_sophia_refresh_is_charged_six_micro_batches_unless_free():
  config = tiny_config("bert", "size=base,method=sophia")
  table = rst.paper_table_for(config)
  full = [rst.Charge("train", 16, 1536)]
  cost = lambda s: rst.step_cost(table, full + optimizer_hook(config).charges(table, s, 1536, 16))
  assert cost(1) == pytest.approx(12 * 0.2253)
  assert cost(0) - cost(1) == pytest.approx(6 * 0.2253)  # 6 extra full-depth micro-batches
  assert cost(10) == pytest.approx(18 * 0.2253) and cost(11) == pytest.approx(cost(1))
  config.optim.free_updates = True
  assert cost(0) == pytest.approx(12 * 0.2253)


# ---- resume ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "method, overrides",
  [
    ("sophia", {"train.micro_batch_size": 16}),  # refreshes at 0 and 10 draw fresh data
    ("layer_drop", {"train.micro_batch_size": 16}),
  ],
)  # a keep row per micro-batch
def test_fresh_draws_and_keep_rows_resume_exactly(tmp_path, method, overrides):
  """A run stopped at step 7 and resumed gives the uninterrupted run's losses exactly."""
  import json

  from conftest import fixed_table

  config = tiny_config(
    "bert",
    f"size=tiny,method={method}",
    **{
      "data.num_lines": 3000,
      "train.log_every_steps": 1,
      "train.validation_batches": 1,
      "train.eval_every_rst_minutes": 1000.0,
      "train.checkpoint_every_rst_minutes": 1000.0,
      **overrides,
    },
  )
  config.train.budget_hours = 14 * 0.02 / 3600
  config.rst.table = fixed_table(config, tmp_path / "table.json", 0.02)

  def losses(workdir):
    with open(workdir / "metrics.jsonl") as f:
      return {r["step"]: r["train_loss"] for r in map(json.loads, f) if "train_loss" in r}

  loop_lib.train_and_evaluate(config, str(tmp_path / "full"))
  config.train.max_steps = 7
  loop_lib.train_and_evaluate(config, str(tmp_path / "resumed"))
  config.train.max_steps = 0
  loop_lib.train_and_evaluate(config, str(tmp_path / "resumed"))
  full, resumed = losses(tmp_path / "full"), losses(tmp_path / "resumed")
  assert len(full) >= 11 and max(full) == max(resumed)
  assert full == resumed
