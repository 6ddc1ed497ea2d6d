"""Batch selection with real data: the IL model's split, the IL table, selection on a noisy corpus,
and SB / IL model -> extract_il -> RHO-loss end to end through the launch scripts."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixed_table, run_module, tiny_config
from test_selection import model_state

from ntng_jax import data as data_lib
from ntng_jax.data.objectives import allowed_ids
from ntng_jax.methods import il_table
from ntng_jax.methods import selection as sel
from ntng_jax.methods.base import Method, build_method
from ntng_jax.methods.sampling import make_score_step
from ntng_jax.train import step as step_lib

STEP_SECONDS = 0.02  # RST seconds per full-depth baseline step in the fixed test table


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
  table, meta = il_table.il_table_from_losses(config, ds, losses, {"mask_seed": 0})
  npy, _ = il_table.write_il_table(str(tmp_path / "il"), table, meta)
  back, meta_back = il_table.read_il_table(str(tmp_path / "il"))
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
    il_table.read_il_table(npy)


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
  allowed = allowed_ids(0, ds.tokenizer.random_token_high, tuple(sorted(ds.tokenizer.special_ids)))
  rng = np.random.default_rng(0)
  n = ds.meta["num_chunks"]
  is_noise = rng.random(n) < noise_fraction
  chunks = np.zeros((n, ds.train_chunks.shape[1]), np.int32)
  chunks[ds.train_ids], chunks[ds.validation_ids] = ds.train_chunks, ds.validation_chunks
  chunks[is_noise] = allowed[rng.integers(0, len(allowed), (int(is_noise.sum()), chunks.shape[1]))]
  ds.train_chunks, ds.validation_chunks = chunks[ds.train_ids], chunks[ds.validation_ids]

  first = {k: jnp.asarray(v) for k, v in next(iter(ds.train_iterator(b, seed=0))).items()}
  model, tx, main = model_state(config, first, Method(None), seed=0)
  train_step = jax.jit(step_lib.make_train_step(model, tx, 1, "float32"), donate_argnums=(0,))

  def train(state, iterator, steps, lr):
    for i in range(steps):
      batch = {k: jnp.asarray(v) for k, v in next(iterator).items()}
      state, _ = train_step(state, batch, jax.random.PRNGKey(i), {"learning_rate": np.float32(lr)})
    return state

  _, _, il = model_state(config, first, Method(None), seed=1)
  il = train(il, sel.il_model_dataset(ds, 10_000).train_iterator(b, seed=1), 100, 3e-3)
  main = train(main, ds.train_iterator(b, seed=2), 20, 1e-3)
  score = jax.jit(make_score_step(model))
  il_train = il_table.score_chunks(score, il.params, ds.train_chunks, ds.objective, 128)
  table, _ = il_table.il_table_from_losses(config, ds, il_train)
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
