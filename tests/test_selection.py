"""Batch selection: selective backprop, RHO-loss, the IL model and its loss table."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixed_table, run_module, tiny_config

from ntng_jax import data as data_lib
from ntng_jax import rst
from ntng_jax.methods import selection as sel
from ntng_jax.methods.base import Method, Plan, build_method
from ntng_jax.models import build_model
from ntng_jax.optim import build_optimizer
from ntng_jax.train import state as state_lib
from ntng_jax.train import step as step_lib

STEP_SECONDS = 0.02  # RST seconds per full-depth baseline step in the fixed test table


# -------------------------------------------------------------------------------------------------
# Pure pieces.


def test_percentile_matches_scipy_rank_kind():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  hist = np.round(rng.normal(size=70), 1).astype(np.float32)  # many ties
  buf = np.zeros(100, np.float32)
  buf[:70] = hist
  scores = np.concatenate([hist[:20], rng.normal(size=10), [9.0, -9.0]]).astype(np.float32)
  got = np.asarray(sel.percentile_of_scores(buf, 70, scores))
  want = [stats.percentileofscore(hist, s, kind="rank") / 100 for s in scores]
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_array_equal(sel.percentile_of_scores(buf, 0, scores), 1.0)


def test_history_ring_buffer_keeps_the_last_entries():
  state = sel.init_history(5)
  state = sel.push_history(state, jnp.arange(3.0))
  assert int(state["history_count"]) == 3 and int(state["history_position"]) == 3
  state = sel.push_history(state, jnp.arange(3.0, 7.0))
  assert int(state["history_count"]) == 5
  assert sorted(np.asarray(state["history"]).tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
  state = sel.push_history(state, jnp.arange(10.0, 18.0))  # more than the buffer holds
  assert sorted(np.asarray(state["history"]).tolist()) == [13.0, 14.0, 15.0, 16.0, 17.0]


def test_fixed_size_sampling_has_exact_inclusion_probabilities():
  rng = np.random.default_rng(1)
  w = rng.random(24).astype(np.float32) ** 3
  w[:3] = 5.0  # forces capping at 1
  pi = np.asarray(jax.jit(sel.fixed_size_inclusion, static_argnums=1)(w, 10))
  assert pi.sum() == pytest.approx(10, abs=1e-4) and pi.max() <= 1 + 1e-6
  np.testing.assert_allclose(pi[:3], 1.0)
  free = pi < 1
  np.testing.assert_allclose(pi[free] / w[free], (pi[free] / w[free])[0], rtol=1e-4)
  draws = np.asarray(
    jax.jit(jax.vmap(lambda k: sel.systematic_sample(k, jnp.asarray(pi), 10)))(
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
  history = sel.push_history(
    sel.init_history(1000), jnp.asarray((np.arange(984) + 0.5) / 984, jnp.float32)
  )
  rngs = jax.random.split(jax.random.PRNGKey(3), 8000)
  method = build_method(config)
  draw = jax.jit(
    jax.vmap(
      lambda r, beta: method.select_from_scores(history, mega, scores, r, beta)[3],
      in_axes=(0, None),
    )
  )
  after = sel.push_history(history, scores)
  pct = np.asarray(sel.percentile_of_scores(after["history"], after["history_count"], scores))
  tol = 4 * np.sqrt(0.25 / len(rngs))
  for beta in (1.0, 2.0):
    rates = np.bincount(np.asarray(draw(rngs, beta)).ravel(), minlength=m) / len(rngs)
    keep = pct**beta
    if beta == 1.0:
      assert keep.sum() == pytest.approx(b, abs=0.05)  # the paper-matching setting
      assert np.abs(rates - keep).max() < tol + 0.01
    else:
      assert keep.sum() < b - 1  # Σ p² ≈ 5.3: rescaled to B = 8
      expected = np.asarray(sel.fixed_size_inclusion(keep, b))
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
# The IL model's split and the IL table.


@pytest.fixture(scope="module")
def bert_data(tmp_path_factory):
  config = tiny_config("bert", "size=tiny,method=il_model", **{"data.num_lines": 2000})
  work = tmp_path_factory.mktemp("data")
  return config, data_lib.build_dataset(config.data, "bert", config.model.vocab_size, str(work))


def test_il_model_trains_on_the_heldout_split(bert_data):
  config, ds = bert_data
  il = sel.il_model_dataset(ds, 10_000)
  held = set(ds.validation_ids.tolist())
  assert set(il.train_ids.tolist()) | set(il.validation_ids.tolist()) == held
  assert not set(il.train_ids.tolist()) & set(il.validation_ids.tolist())
  assert not set(il.train_ids.tolist()) & set(ds.train_ids.tolist())
  assert len(il.validation_ids) == len(held) // 10
  row = 3
  np.testing.assert_array_equal(
    il.train_chunks[row], ds.validation_chunks[list(ds.validation_ids).index(il.train_ids[row])]
  )
  method = build_method(config)
  method.prepare_dataset(ds)
  assert method.input_batch_size(32) == 32


def test_il_table_round_trips_and_rejects_other_data(bert_data, tmp_path):
  config, ds = bert_data
  rng = np.random.default_rng(0)
  losses = rng.random(len(ds.train_ids)).astype(np.float32) + 1
  table, meta = sel.il_table_from_losses(config, ds, losses, {"mask_seed": 0})
  npy, _ = sel.write_il_table(str(tmp_path / "il"), table, meta)
  back, meta_back = sel.read_il_table(str(tmp_path / "il"))
  np.testing.assert_array_equal(back[ds.train_ids], losses)
  assert np.isnan(back[ds.validation_ids]).all() and len(back) == ds.meta["num_chunks"]
  rho_cfg = tiny_config(
    "bert",
    "size=tiny,method=rho_loss",
    **{"data.num_lines": 2000, "method.il_path": str(tmp_path / "il")},
  )
  method = build_method(rho_cfg)
  assert method.prepare_dataset(ds) is ds
  np.testing.assert_array_equal(method.il_losses, back)
  # A config describing other data fails at load time, naming the field.
  rho_cfg.data.num_lines = 3000
  with pytest.raises(ValueError, match=r"data\.num_lines is 2000 in the table but 3000 here"):
    build_method(rho_cfg)
  # Same config but another split or tokenizer: caught against the built dataset.
  rho_cfg.data.num_lines = 2000
  method = build_method(rho_cfg)
  other = data_lib.Dataset(
    **{**ds.__dict__, "train_ids": ds.train_ids[1:], "train_chunks": ds.train_chunks[1:]}
  )
  with pytest.raises(ValueError, match="num_train"):
    method.prepare_dataset(other)
  other = data_lib.Dataset(**{**ds.__dict__, "meta": {**ds.meta, "tokenizer_fingerprint": "x"}})
  with pytest.raises(ValueError, match="tokenizer_fingerprint"):
    method.prepare_dataset(other)
  # A table file that is not the one its metadata describes.
  np.save(npy, back[::-1].copy())
  with pytest.raises(ValueError, match="corrupt"):
    sel.read_il_table(npy)


# -------------------------------------------------------------------------------------------------
# Real models: the jitted select step, resume, and whether selection does what it should.


def _state(config, batch, method, seed=0):
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
  model, _, state = _state(config, megas[0], method)
  select = jax.jit(method.make_select_step(model, "float32"))
  state, batch, metrics = select(state, megas[0], jax.random.PRNGKey(0))
  _check_rows(megas[0], batch, b)
  assert int(state.method_state["history_count"]) == 2 * b
  assert np.isfinite(float(metrics["selected_score_loss_mean"]))
  # The scoring pass equals the per-example losses of an unchunked forward pass.
  score = step_lib.make_score_step(model)
  direct, chunked = jax.jit(lambda p, m: (score(p, m), sel.chunked_scores(score, p, m, 16)))(
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


def test_selection_on_a_corpus_with_noise(tmp_path):
  """Learnable (synthetic) chunks mixed with uniform-noise chunks (25 %). The IL model trains on
  the held-out split (100 steps) and reaches the noise floor (≈ log of the number of token ids);
  the model being trained is early in training (20 steps at a warm-up learning rate), where noise
  is already at that floor but the learnable text is far from learned. Then SB keeps noise above
  the uniform rate (noise has the highest losses) and RHO-loss well below it (its reducible loss
  is ≈ 0). RHO's preference depends on the training stage: a model that has learned the text's
  unigram statistics but not yet the noise marginal would find noise reducible too."""
  noise_fraction, b = 0.25, 32
  config = tiny_config(
    "bert", "size=tiny,method=rho_loss", **{"data.num_lines": 6000, "train.batch_size": b}
  )
  ds = data_lib.build_dataset(config.data, "bert", config.model.vocab_size, str(tmp_path))
  from ntng_jax.data.objectives import _allowed_ids

  allowed = _allowed_ids(0, ds.tokenizer.random_token_high, tuple(sorted(ds.tokenizer.special_ids)))
  rng = np.random.default_rng(0)
  n = ds.meta["num_chunks"]
  is_noise = rng.random(n) < noise_fraction
  chunks = np.zeros((n, ds.train_chunks.shape[1]), np.int32)
  chunks[ds.train_ids], chunks[ds.validation_ids] = ds.train_chunks, ds.validation_chunks
  chunks[is_noise] = allowed[rng.integers(0, len(allowed), (int(is_noise.sum()), chunks.shape[1]))]
  ds.train_chunks, ds.validation_chunks = chunks[ds.train_ids], chunks[ds.validation_ids]

  first = {k: jnp.asarray(v) for k, v in next(iter(ds.train_iterator(b, seed=0))).items()}
  model, tx, main = _state(config, first, Method(None), seed=0)
  train_step = jax.jit(step_lib.make_train_step(model, tx, 1, "float32"), donate_argnums=(0,))

  def train(state, iterator, steps, lr):
    for i in range(steps):
      batch = {k: jnp.asarray(v) for k, v in next(iterator).items()}
      state, _ = train_step(state, batch, jax.random.PRNGKey(i), {"learning_rate": np.float32(lr)})
    return state

  _, _, il = _state(config, first, Method(None), seed=1)
  il = train(il, sel.il_model_dataset(ds).train_iterator(b, seed=1), 100, 3e-3)
  main = train(main, ds.train_iterator(b, seed=2), 20, 1e-3)
  score = jax.jit(step_lib.make_score_step(model))
  il_train = sel.score_chunks(score, il.params, ds.train_chunks, ds.objective, 128)
  table, _ = sel.il_table_from_losses(config, ds, il_train)
  rho = sel.RhoLoss(config, il_losses=table, il_meta={})
  sb = sel.SelectiveBackprop(
    tiny_config("bert", "size=tiny,method=selective_backprop", **{"train.batch_size": b})
  )
  sb_select = jax.jit(sb.select_from_scores)
  rho_select = jax.jit(rho.select_from_scores)
  sb_state = sb.init_method_state()
  picked = {"sb": [], "rho": [], "all": []}
  it = ds.train_iterator(2 * b, seed=3)
  for step in range(12):
    mega = {k: jnp.asarray(v) for k, v in next(it).items()}
    scores = score(main.params, mega)
    sb_state, sb_batch, _, _ = sb_select(sb_state, mega, scores, jax.random.PRNGKey(step))
    _, rho_batch, _, _ = rho_select({}, mega, scores, jnp.asarray(table))
    picked["all"] += np.asarray(mega["example_id"]).tolist()
    picked["sb"] += np.asarray(sb_batch["example_id"]).tolist()
    picked["rho"] += np.asarray(rho_batch["example_id"]).tolist()
  rates = {k: float(is_noise[v].mean()) for k, v in picked.items()}
  print(
    f"\nnoise share: mega-batches {rates['all']:.3f}, SB-selected {rates['sb']:.3f},"
    f" RHO-selected {rates['rho']:.3f}"
  )
  assert rates["sb"] > rates["all"] + 0.1
  assert rates["rho"] < rates["all"] - 0.1


# -------------------------------------------------------------------------------------------------
# End to end through the launch scripts.


def _run_args(config, workdir, table, method, *extra):
  """Tiny runs on the synthetic corpus, validated on its held-out split and on a second corpus."""
  return [
    f"--config=configs/{config.model.family}.py:size=tiny,method={method}",
    f"--workdir={workdir}",
    f"--config.rst.table={table}",
    f"--config.train.budget_hours={config.train.budget_hours}",
    "--config.data.num_lines=2000",
    "--config.train.validation_batches=2",
    f"--config.data.validation.other={workdir.parent / 'other.txt'}",
    *extra,
  ]


@pytest.fixture(scope="module", params=["bert", "t5"])
def e2e(tmp_path_factory, request):
  root = tmp_path_factory.mktemp(f"e2e-{request.param}")
  config = tiny_config(request.param, **{"data.num_lines": 2000})
  config.train.budget_hours = 24 * STEP_SECONDS / 3600
  table = fixed_table(config, root / "table.json", STEP_SECONDS)
  other = data_lib.SyntheticCorpus(seed=7).lines(300)  # the second validation set's text
  (root / "other.txt").write_text("\n".join(other) + "\n")
  env = {
    "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),  # the runs share programs
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
  }
  return root, config, table, env


def _check_two_validation_sets(summary):
  losses = summary["final_validation_losses"]
  assert set(losses) == {"heldout", "other"} and all(np.isfinite(v) for v in losses.values())


def _summary(workdir):
  return json.loads((workdir / "summary.json").read_text())


def test_end_to_end_selective_backprop(e2e):
  root, config, table, env = e2e
  run_module(
    "launch.pretrain", *_run_args(config, root / "sb", table, "selective_backprop"), env=env
  )
  s = _summary(root / "sb")
  expected = int(24 * STEP_SECONDS / (STEP_SECONDS * (1 + 2 / 3)) + 1e-9)  # 14 < 24 baseline
  assert s["steps"] == expected and s["stopped_because"] == "budget"
  _check_two_validation_sets(s)
  records = [json.loads(line) for line in (root / "sb" / "metrics.jsonl").open()]
  assert any("sb_keep_probability_mean" in r for r in records)
  # Extracting IL losses from a run that is not an IL model: one sentence, no traceback.
  proc = run_module("launch.extract_il", f"--workdir={root / 'sb'}", env=env, check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "method=selective_backprop, not il_model" in proc.stderr


def test_end_to_end_il_model_extract_and_rho(e2e):
  root, config, table, env = e2e
  run_module("launch.pretrain", *_run_args(config, root / "il", table, "il_model"), env=env)
  il = _summary(root / "il")
  assert il["steps"] == 24 and np.isfinite(il["final_validation_loss"])
  out = run_module("launch.extract_il", f"--workdir={root / 'il'}", env=env)
  assert out.stdout.strip().splitlines()[-1] == f"Wrote {root / 'il' / 'il_losses'}."
  meta = json.loads((root / "il" / "il_losses" / "il_losses.json").read_text())
  losses = np.load(root / "il" / "il_losses" / "il_losses.npy")
  assert meta["num_scored"] == int(np.isfinite(losses).sum()) > 0
  run_module(
    "launch.pretrain",
    *_run_args(config, root / "rho", table, "rho_loss", f"--config.method.il_path={root / 'il'}"),
    env=env,
  )
  rho = _summary(root / "rho")
  assert rho["steps"] < il["steps"] and rho["stopped_because"] == "budget"
  _check_two_validation_sets(rho)
  # Other data than the table was made for: one sentence, no traceback.
  proc = run_module(
    "launch.pretrain",
    *_run_args(
      config,
      root / "rho_bad",
      table,
      "rho_loss",
      f"--config.method.il_path={root / 'il' / 'il_losses'}",
      "--config.data.corpus_seed=1",
    ),
    env=env,
    check=False,
  )
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "data.corpus_seed is 0 in the table but 1 here" in proc.stderr
