"""Batch selection: sampling maths, SB and RHO-loss selection, charges, the jitted select step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from ntng_jax import data as data_lib
from ntng_jax import rst
from ntng_jax.methods import sampling
from ntng_jax.methods import selection as sel
from ntng_jax.methods.base import Plan, build_method
from ntng_jax.models import build_model
from ntng_jax.optim import build_optimizer
from ntng_jax.train import state as state_lib

# -------------------------------------------------------------------------------------------------
# Pure pieces.


def test_percentile_matches_scipy_rank_kind():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  hist = np.round(rng.normal(size=70), 1).astype(np.float32)  # many ties
  buf = np.zeros(100, np.float32)
  buf[:70] = hist
  scores = np.concatenate([hist[:20], rng.normal(size=10), [9.0, -9.0]]).astype(np.float32)
  got = np.asarray(sampling.percentile_of_scores(buf, 70, scores))
  want = [stats.percentileofscore(hist, s, kind="rank") / 100 for s in scores]
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_array_equal(sampling.percentile_of_scores(buf, 0, scores), 1.0)


def test_history_ring_buffer_keeps_the_last_entries():
  state = sampling.init_history(5)
  state = sampling.push_history(state, jnp.arange(3.0))
  assert int(state["history_count"]) == 3 and int(state["history_position"]) == 3
  state = sampling.push_history(state, jnp.arange(3.0, 7.0))
  assert int(state["history_count"]) == 5
  assert sorted(np.asarray(state["history"]).tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
  state = sampling.push_history(state, jnp.arange(10.0, 18.0))  # more than the buffer holds
  assert sorted(np.asarray(state["history"]).tolist()) == [13.0, 14.0, 15.0, 16.0, 17.0]


def test_fixed_size_sampling_has_exact_inclusion_probabilities():
  rng = np.random.default_rng(1)
  w = rng.random(24).astype(np.float32) ** 3
  w[:3] = 5.0  # forces capping at 1
  pi = np.asarray(jax.jit(sampling.fixed_size_inclusion, static_argnums=1)(w, 10))
  assert pi.sum() == pytest.approx(10, abs=1e-4) and pi.max() <= 1 + 1e-6
  np.testing.assert_allclose(pi[:3], 1.0)
  free = pi < 1
  np.testing.assert_allclose(pi[free] / w[free], (pi[free] / w[free])[0], rtol=1e-4)
  draws = np.asarray(
    jax.jit(jax.vmap(lambda k: sampling.systematic_sample(k, jnp.asarray(pi), 10)))(
      jax.random.split(jax.random.PRNGKey(0), 20000)
    )
  )
  assert all(len(set(row)) == 10 for row in draws)  # never a duplicate
  rates = np.bincount(draws.ravel(), minlength=24) / len(draws)
  assert np.abs(rates - pi).max() < 4 * np.sqrt(0.25 / len(draws))


def _mega(m, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "example_id": jnp.asarray(rng.permutation(1000)[:m], jnp.int32),
    "input_ids": jnp.asarray(rng.integers(0, 50, (m, 6)), jnp.int32),
    "mlm_weights": jnp.asarray(rng.random((m, 3)), jnp.float32),
  }


def _check_rows(mega, batch, b):
  ids = np.asarray(mega["example_id"]).tolist()
  assert set(batch) == set(mega)
  for key in mega:
    assert batch[key].shape == (b, *mega[key].shape[1:]) and batch[key].dtype == mega[key].dtype
  for r, i in enumerate(np.asarray(batch["example_id"])):
    for key in mega:
      np.testing.assert_array_equal(batch[key][r], mega[key][ids.index(int(i))])
  assert len(set(np.asarray(batch["example_id"]).tolist())) == b


def test_sb_inclusion_rates_follow_percentile_power():
  """With Σ pct^β = B the realised rates equal pct^β; otherwise they are ∝ pct^β, capped at 1."""
  m, b = 16, 8
  config = tiny_config(
    "bert",
    "size=tiny,method=selective_backprop",
    **{"train.batch_size": b, "train.micro_batch_size": b, "method.history_size": 1000},
  )
  mega = _mega(m)
  scores = jnp.asarray((np.arange(m)[::-1] + 0.5) / m, jnp.float32)  # percentiles ≈ 1 − (i+.5)/16
  history = sampling.push_history(
    sampling.init_history(1000), jnp.asarray((np.arange(984) + 0.5) / 984, jnp.float32)
  )
  rngs = jax.random.split(jax.random.PRNGKey(3), 8000)
  method = build_method(config)
  draw = jax.jit(
    jax.vmap(
      lambda r, beta: method.select_from_scores(history, mega, scores, r, beta)[3],
      in_axes=(0, None),
    )
  )
  after = sampling.push_history(history, scores)
  pct = np.asarray(sampling.percentile_of_scores(after["history"], after["history_count"], scores))
  tol = 4 * np.sqrt(0.25 / len(rngs))
  for beta in (1.0, 2.0):
    rates = np.bincount(np.asarray(draw(rngs, beta)).ravel(), minlength=m) / len(rngs)
    keep = pct**beta
    if beta == 1.0:
      assert keep.sum() == pytest.approx(b, abs=0.05)  # the paper-matching setting
      assert np.abs(rates - keep).max() < tol + 0.01
    else:
      assert keep.sum() < b - 1  # Σ p² ≈ 5.3: rescaled to B = 8
      expected = np.asarray(sampling.fixed_size_inclusion(keep, b))
      assert np.abs(rates - expected).max() < tol
      free = (expected < 0.999) & (expected > 0.1)
      np.testing.assert_allclose(
        rates[free] / keep[free], np.mean(expected[free] / keep[free]), rtol=0.15
      )
  state, batch, _, _ = jax.jit(method.select_from_scores)(history, mega, scores, rngs[0])
  _check_rows(mega, batch, b)
  assert int(state["history_count"]) == 1000


def test_rho_picks_top_reducible_losses():
  m, b = 12, 4
  config = tiny_config(
    "bert",
    "size=tiny,method=rho_loss",
    **{"train.batch_size": b, "train.micro_batch_size": b, "method.mega_batch_factor": 3},
  )
  mega = _mega(m, seed=2)
  ids = np.asarray(mega["example_id"])
  rng = np.random.default_rng(5)
  table = np.full(1000, np.nan, np.float32)
  table[ids] = rng.random(m) * 3
  scores = rng.random(m).astype(np.float32) * 4
  scores[0] = 100.0
  table[ids[0]] = np.nan  # no IL loss: never chosen
  method = sel.RhoLoss(config, il_losses=table, il_meta={})
  _, batch, metrics, _ = method.select_from_scores(
    {}, mega, jnp.asarray(scores), jnp.asarray(table)
  )
  reducible = scores - table[ids]
  reducible[0] = -np.inf
  want = set(ids[np.argsort(-reducible)[:b]].tolist())
  assert set(np.asarray(batch["example_id"]).tolist()) == want
  _check_rows(mega, batch, b)
  assert float(metrics["rho_il_missing"]) == 1.0


def test_charges_defaults_and_paper_cost_ratio():
  for name in ("selective_backprop", "rho_loss"):
    config = tiny_config("bert", f"size=tiny,method={name}")
    assert config.method.mega_batch_factor == 2 and config.data.validation_fraction == 0.2
    if name == "rho_loss":
      config.method.il_path = ""
      with pytest.raises(ValueError, match="method.il_path"):
        build_method(config)
      method = sel.RhoLoss(config, il_losses=np.zeros(4, np.float32), il_meta={})
    else:
      assert config.method.history_size == 5000 and config.method.beta == 1.0
      method = build_method(config)
    b = config.train.batch_size
    assert method.input_batch_size(b) == 2 * b
    plan = Plan(depth=config.model.num_layers)
    assert method.charges(plan, b) == [
      rst.Charge("forward", plan.depth, 2 * b),
      rst.Charge("train", plan.depth, b),
    ]
    method.free_scoring = True
    assert method.charges(plan, b) == [rst.Charge("train", plan.depth, b)]
  table = rst.PAPER_TABLES["bert"]
  base = rst.step_cost(table, [rst.Charge("train", 16, 1536)])
  rho = rst.step_cost(table, [rst.Charge("forward", 16, 3072), rst.Charge("train", 16, 1536)])
  assert base == pytest.approx(2.7036) and rho / base == pytest.approx(1.824, abs=0.005)


# -------------------------------------------------------------------------------------------------
# Real models: the jitted select step, resume, and whether selection does what it should.


def model_state(config, batch, method, seed=0):
  import flax.linen as nn

  model = build_model(config.model)
  params = jax.jit(lambda r: nn.unbox(model.init(r, batch)))(jax.random.PRNGKey(seed))
  tx = build_optimizer(config.optim)
  return model, tx, state_lib.create(params, tx, method.init_method_state())


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_select_step_gives_a_fixed_size_batch_and_resumes_exactly(family, tmp_path):
  config = tiny_config(
    family,
    "size=tiny,method=selective_backprop",
    **{"data.num_lines": 1200, "method.history_size": 100},
  )
  ds = data_lib.build_dataset(config.data, family, config.model.vocab_size, str(tmp_path))
  b = config.train.batch_size
  it = ds.train_iterator(2 * b, seed=0)
  megas = [{k: jnp.asarray(v) for k, v in next(it).items()} for _ in range(3)]
  method = build_method(config)
  model, _, state = model_state(config, megas[0], method)
  select = jax.jit(method.make_select_step(model, "float32"))
  state, batch, metrics = select(state, megas[0], jax.random.PRNGKey(0))
  _check_rows(megas[0], batch, b)
  assert int(state.method_state["history_count"]) == 2 * b
  assert np.isfinite(float(metrics["selected_score_loss_mean"]))
  # The scoring pass equals the per-example losses of an unchunked forward pass.
  score = sampling.make_score_step(model)
  direct, chunked = jax.jit(lambda p, m: (score(p, m), sampling.chunked_scores(score, p, m, 16)))(
    state.params, megas[1]
  )
  np.testing.assert_allclose(chunked, direct, rtol=2e-5, atol=2e-5)
  if family == "t5":
    return
  # Checkpoint the state with its loss history; the restored state selects identically.
  from ntng_jax.train import checkpoint as ckpt_lib

  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "run"))
  ckpt.save(1, state, {"step": 1})
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
  )
  _, restored, _ = ckpt.restore_latest(abstract)
  ckpt.close()
  for key in ("history", "history_position", "history_count"):
    np.testing.assert_array_equal(restored.method_state[key], state.method_state[key])
  rng = jax.random.PRNGKey(1)
  out_a = select(restored, megas[2], rng)
  out_b = select(state, megas[2], rng)
  for a, b_ in zip(jax.tree.leaves(out_a), jax.tree.leaves(out_b)):
    np.testing.assert_array_equal(a, b_)
