"""The decoder-only family: model shape and causality, its data, and every method end to end.

The method runs call `train_and_evaluate` (what `launch.pretrain` runs) in-process on the tiny
config with a fixed RST table, so they take the same number of steps on any machine; one run goes
through the `launch.pretrain` script itself."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import fixed_table, run_module, tiny_config

from launch.extract_il import extract
from ntng_jax import data as data_lib
from ntng_jax.config import ConfigError, validate
from ntng_jax.eval import lm
from ntng_jax.eval.pretrained import load_pretrained
from ntng_jax.models import build_model, losses, model_config, param_count
from ntng_jax.train.loop import train_and_evaluate

STEP_SECONDS = 1.0
BUDGET_STEPS = 8


def _params(model, batch, seed=0):
  return model.init(jax.random.PRNGKey(seed), batch)


@pytest.mark.parametrize(
  "size,expected", [("tiny", 238_208), ("small", 5_313_024), ("base", 124_392_960)]
)
def test_param_counts(size, expected):
  """base = GPT-2 small: 12 x 768, 1,024 positions, 50,304-row tied embedding, no biases."""
  model = build_model(model_config("gpt", size))
  batch = {"input_ids": np.zeros((1, 8), np.int32)}
  shapes = jax.eval_shape(lambda r: model.init(r, batch), jax.random.PRNGKey(0))
  count = param_count(shapes)
  print(f"\ngpt {size}: {count:,} parameters")
  assert count == expected
  if size == "base":
    assert abs(count - 124e6) / 124e6 < 0.01


def test_causal_masking_later_tokens_do_not_change_earlier_losses():
  model = build_model(model_config("gpt", "tiny"))
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 2048, size=(2, 17)).astype(np.int32)
  batch = data_lib.objectives.causal_lm(rng, tokens)
  params = _params(model, batch)
  logits, labels, weights = model.logits(params, batch)
  t = 9
  changed = dict(batch, input_ids=batch["input_ids"].copy())
  changed["input_ids"][:, t + 1 :] = rng.integers(3, 2048, size=(2, 16 - t - 1))
  logits2, _, _ = model.logits(params, changed)
  np.testing.assert_allclose(logits[:, : t + 1], logits2[:, : t + 1], rtol=1e-5, atol=1e-5)
  assert not np.allclose(logits[:, t + 1 :], logits2[:, t + 1 :], atol=1e-3)
  tok = np.asarray(losses.token_losses(logits, labels))
  tok2 = np.asarray(losses.token_losses(logits2, labels))
  np.testing.assert_allclose(tok[:, : t + 1], tok2[:, : t + 1], rtol=1e-5, atol=1e-5)


def test_causal_lm_objective_shifts_by_one():
  tokens = np.arange(2 * 9).reshape(2, 9)
  b = data_lib.objectives.causal_lm(np.random.default_rng(0), tokens)
  assert b["input_ids"].shape == b["targets"].shape == b["target_weights"].shape == (2, 8)
  np.testing.assert_array_equal(b["targets"][:, :-1], b["input_ids"][:, 1:])
  np.testing.assert_array_equal(b["input_ids"], tokens[:, :-1])
  assert b["input_ids"].dtype == np.int32 and b["target_weights"].dtype == np.float32


def test_gpt_dataset_packs_documents_with_eos(tmp_path):
  cfg = dict(source="synthetic", num_lines=400, seq_len=32, validation_fraction=0.05)
  ds = data_lib.build_dataset(cfg, "gpt", 2048, tmp_path)
  assert ds.tokenizer.kind == "gpt" and ds.tokenizer.num_sentinels == 0
  assert ds.meta["chunk_len"] == 33 and np.asarray(ds.train_chunks).shape[1] == 33
  assert ds.tokenizer.eos_id in np.asarray(ds.train_chunks)
  batch = next(ds.train_iterator(4, seed=0))
  assert set(batch) == {"input_ids", "targets", "target_weights", "example_id"}
  assert batch["input_ids"].shape == (4, 32)
  assert 0 < ds.unigram_entropy_nats < np.log(ds.tokenizer.vocab_size)


def test_prepare_data_gpt_shards_train_like_text(tmp_path, shared_data):
  """`launch.prepare_data --model=gpt` on part of the shared Wikipedia text; a dataset from the
  shards has chunks of seq_len + 1 and the tokenizer of the shards."""
  src = shared_data / "text" / "wikipedia_en" / "train.txt"
  if not src.exists():
    pytest.skip(f"{src} is absent")
  proc = run_module(
    "launch.prepare_data",
    "--model=gpt",
    f"--input={src}",
    f"--output={tmp_path / 'shards'}",
    "--seq_len=32",
    "--vocab_size=2048",
    "--max_docs=300",
    "--tokenizer_train_chars=200000",
  )
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["family"] == "gpt" and summary["chunk_len"] == 33
  ds = data_lib.build_dataset(
    dict(source="shards", path=str(tmp_path / "shards"), seq_len=32), "gpt", 2048, tmp_path / "work"
  )
  assert ds.tokenizer.kind == "gpt" and ds.meta["chunk_len"] == 33
  assert next(ds.train_iterator(2, seed=0))["targets"].shape == (2, 32)
  with pytest.raises(data_lib.DataError, match="prepared for gpt"):
    data_lib.build_dataset(
      dict(source="shards", path=str(tmp_path / "shards"), seq_len=32),
      "bert",
      2048,
      tmp_path / "work2",
    )


def test_config_rejects_sequences_longer_than_positions():
  config = tiny_config("gpt")
  config.data.seq_len = config.model.max_length + 1
  with pytest.raises(ConfigError, match="max_length"):
    validate(config)


# -------------------------------------------------------------------------------------------------
# Every method end to end.


@pytest.fixture(scope="module")
def gpt_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("gpt-methods")
  config = tiny_config("gpt", **{"data.num_lines": 2000})
  table = fixed_table(config, root / "table.json", STEP_SECONDS)
  return root, table


def _method_config(method, table, **overrides):
  config = tiny_config(
    "gpt",
    f"size=tiny,method={method}",
    **{
      "data.num_lines": 2000,
      "train.validation_batches": 2,
      "rst.table": table,
      "train.budget_hours": BUDGET_STEPS * STEP_SECONDS / 3600,
      "train.log_every_steps": 1,
      **overrides,
    },
  )
  return config


def _run(root, table, method, **overrides):
  workdir = root / method
  summary = train_and_evaluate(_method_config(method, table, **overrides), str(workdir))
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
  train = [r for r in records if "train_loss" in r]
  assert summary["stopped_because"] == "budget", summary
  assert np.isfinite(summary["final_validation_loss"])
  assert all(np.isfinite(r["train_loss"]) for r in train)
  return summary, records, train


def test_baseline_lion_sophia_learn(gpt_runs):
  root, table = gpt_runs
  for method in ("baseline", "lion", "sophia"):
    summary, _, train = _run(root, table, method)
    # Sophia-G pays one extra sampled-label pass over the batch on its refresh step (step 0).
    assert summary["steps"] == BUDGET_STEPS - (method == "sophia"), method
    assert train[-1]["train_loss"] < train[0]["train_loss"] - 0.2, (method, train)
  config = _method_config("sophia", table)
  assert config.optim.name == "sophia" and config.optim.update_interval == 10


def test_stacking_grows_and_layer_drop_skips(gpt_runs):
  root, table = gpt_runs
  summary, records, train = _run(root, table, "stacking")
  grows = [r for r in records if r.get("event") == "grow"]
  assert [(g["from_depth"], g["to_depth"]) for g in grows] == [(1, 2)]
  assert summary["final_depth"] == 2
  assert summary["steps"] > BUDGET_STEPS  # 1-layer steps are cheaper
  summary, _, train = _run(root, table, "layer_drop")
  active = [r["active_layers"] for r in train]
  assert min(active) < 2 and summary["steps"] > BUDGET_STEPS


def test_selection_methods_and_rho_loss_via_il_model(gpt_runs):
  root, table = gpt_runs
  summary, records, _ = _run(root, table, "selective_backprop")
  assert summary["steps"] < BUDGET_STEPS  # scoring the mega-batch is charged
  assert any("sb_keep_probability_mean" in r for r in records)
  il, _, _ = _run(root, table, "il_model")

  meta = extract(str(root / "il_model"))
  assert meta["num_scored"] > 0
  rho, _, _ = _run(root, table, "rho_loss", **{"method.il_path": str(root / "il_model")})
  assert rho["steps"] < il["steps"]


def test_launch_pretrain_script_runs_gpt(gpt_runs, tmp_path):
  root, table = gpt_runs
  proc = run_module(
    "launch.pretrain",
    "--config=configs/gpt.py:size=tiny,method=stacking",
    f"--workdir={tmp_path / 'run'}",
    f"--config.rst.table={table}",
    "--config.data.num_lines=2000",
    "--config.train.validation_batches=2",
    f"--config.train.budget_hours={4 * STEP_SECONDS / 3600}",
  )
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["family"] == "gpt" and summary["stopped_because"] == "budget"
  assert "Growing from 1 to 2 layers" in proc.stdout


# -------------------------------------------------------------------------------------------------
# Evaluation (ntng_jax/eval/lm.py).


def test_kv_cache_decoding_equals_no_cache_decoding():
  model = build_model(model_config("gpt", "tiny", init_std=0.2))  # spread-out logits: no ties
  params = _params(model, {"input_ids": np.zeros((1, 8), np.int32)})
  prompt = np.random.default_rng(1).integers(3, 2048, size=(3, 7)).astype(np.int32)
  cached = np.asarray(lm.greedy_generate(model, params, prompt, 16, use_cache=True))
  full = np.asarray(lm.greedy_generate(model, params, prompt, 16, use_cache=False))
  np.testing.assert_array_equal(cached, full)
  assert len(np.unique(cached)) > 3
  # The cached logits themselves match a full forward pass, position by position.

  seq = np.concatenate([prompt, cached], 1)
  ref = np.asarray(model.module.apply({"params": nn.unbox(params)}, seq))
  mod = model.module.clone(decode_len=seq.shape[1])
  out, state = mod.apply({"params": nn.unbox(params)}, seq[:, :7], position=0, mutable=["cache"])
  np.testing.assert_allclose(out, ref[:, :7], rtol=1e-4, atol=1e-4)
  for i in range(7, 12):
    out, state = mod.apply(
      {"params": nn.unbox(params), **state}, seq[:, i : i + 1], position=i, mutable=["cache"]
    )
    np.testing.assert_allclose(out[:, 0], ref[:, i], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny GPT trained for 150 steps on the synthetic corpus (fixed RST table)."""
  root = tmp_path_factory.mktemp("gpt-trained")
  config = tiny_config(
    "gpt",
    **{
      "data.num_lines": 4000,
      "train.validation_batches": 2,
      "data.validation_fraction": 0.1,
      "train.log_every_steps": 50,
    },
  )
  config.rst.table = fixed_table(config, root / "table.json", STEP_SECONDS)
  config.train.budget_hours = 150 * STEP_SECONDS / 3600
  summary = train_and_evaluate(config, str(root / "run"))
  return root / "run", summary


def test_perplexity_multiple_choice_and_generation_of_a_trained_model(trained):
  workdir, summary = trained
  config, model_cfg, params, tok = load_pretrained(workdir)
  model = build_model(model_cfg)
  ds = data_lib.build_dataset(config.data, "gpt", model_cfg.vocab_size, workdir)
  sets = ds.validation_sets(
    config.train.micro_batch_size, seed=0, max_batches=config.train.validation_batches
  )
  ppl = lm.validation_perplexity(model, params, sets)
  assert ppl["heldout"]["loss"] == pytest.approx(summary["final_validation_loss"], abs=1e-4)
  assert ppl["heldout"]["perplexity"] == pytest.approx(np.exp(ppl["heldout"]["loss"]))
  assert ppl["heldout"]["loss"] < summary["unigram_entropy_nats"] - 0.5
  items = lm.multiple_choice_items(np.asarray(ds.validation_chunks), num_items=200)
  truth = np.asarray(items["choices"])[np.arange(len(items["answer"])), items["answer"]]
  np.testing.assert_array_equal(
    truth,
    np.asarray(ds.validation_chunks)[
      np.sort(
        np.random.default_rng((0, 0x3C)).choice(
          len(ds.validation_chunks), size=len(truth), replace=False
        )
      ),
      24:32,
    ],
  )
  acc = lm.multiple_choice_accuracy(model, params, items)
  print(
    f"\nheld-out loss {ppl['heldout']['loss']:.3f} (unigram "
    f"{summary['unigram_entropy_nats']:.3f}), perplexity {ppl['heldout']['perplexity']:.1f},"
    f" zero-shot 4-way accuracy {acc:.3f} on {len(truth)} items"
  )
  assert acc > 0.4  # chance is 0.25 (0.4 is > 3 standard errors above it)
  prompt = np.asarray(ds.validation_chunks)[:2, :16]
  cached = lm.greedy_generate(model, params, prompt, 24)
  np.testing.assert_array_equal(
    cached, lm.greedy_generate(model, params, prompt, 24, use_cache=False)
  )
  assert tok.decode(np.asarray(cached)[0].tolist())  # decodes to text
