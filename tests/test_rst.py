"""The RST meter, built-in tables and schedules."""

import math

import pytest

from ntng_jax import rst, schedules
from ntng_jax.rst import Charge

from conftest import tiny_config


def test_paper_bert_table_charges_full_depth_micro_batch():
  config = tiny_config("bert", "size=base")
  table = rst.paper_table_for(config)
  assert table is not None and table.name == "paper-bert-rtx3090"
  assert table.seconds(Charge("train", 16, 128)) == pytest.approx(0.2253)
  # One paper optimizer step: 12 micro-batches of 128.
  assert rst.step_cost(table, [Charge("train", 16, 1536)]) == pytest.approx(2.7036)
  # Forward-only scoring ignores the depth (one value in the paper's table).
  assert table.seconds(Charge("forward", 4, 128)) == pytest.approx(0.09285)


def test_paper_bert_table_typo_corrected_and_monotone():
  train = rst.PAPER_TABLES["bert"].train
  assert train[7] == pytest.approx(0.1052)
  values = [train[n] for n in range(1, 17)]
  assert all(b > a for a, b in zip(values, values[1:]))


def test_paper_t5_table_and_optimizer_extras():
  table = rst.paper_table_for(tiny_config("t5", "size=base"))
  assert table.seconds(Charge("train", 12, 144)) == pytest.approx(1.031)
  lion = rst.step_cost(table, [Charge("train", 12, 144), Charge("extra", "lion", 144)])
  sophia = rst.step_cost(table, [Charge("train", 12, 144), Charge("extra", "sophia", 144)])
  assert lion == pytest.approx(1.043) and sophia == pytest.approx(1.156)


def test_paper_table_only_for_paper_shape():
  assert rst.paper_table_for(tiny_config("bert", "size=tiny")) is None


def test_meter_is_pure_and_rejects_unknown_kinds():
  table = rst.PAPER_TABLES["bert"]
  assert rst.charge(10.0, table, [Charge("train", 4, 128)]) == pytest.approx(10.06508)
  with pytest.raises(rst.RSTTableError, match="no train entry for 17"):
    table.seconds(Charge("train", 17, 128))
  with pytest.raises(rst.RSTTableError, match="no extra kind"):
    table.seconds(Charge("extra", "hessian", 128))


def test_table_json_round_trip_and_fingerprint_check(tmp_path):
  config = tiny_config("bert")
  table = rst.RSTTable(name="t", unit_sequences=32, train={1: 0.01, 2: 0.02}, forward={1: 0.004},
                       fingerprint=rst.step_shape_fingerprint(config))
  path = str(tmp_path / "t.json")
  rst.save_table(table, path)
  assert rst.load_table(path, config) == table
  other = tiny_config("bert", **{"data.seq_len": 32})
  with pytest.raises(rst.RSTTableError, match="fingerprint"):
    rst.load_table(path, other)
  with pytest.raises(rst.RSTTableError, match="does not exist"):
    rst.load_table(str(tmp_path / "missing.json"), config)


def test_fingerprint_ignores_method_and_budget():
  a = tiny_config("bert", "size=tiny,method=baseline")
  b = tiny_config("bert", "size=tiny,method=lion", **{"train.budget_hours": 3.0})
  c = tiny_config("bert", "size=tiny,method=layer_drop")   # turns on remat
  assert c.model.remat and not a.model.remat
  assert rst.step_shape_fingerprint(a) == rst.step_shape_fingerprint(b)
  assert rst.step_shape_fingerprint(a) == rst.step_shape_fingerprint(c)
  d = tiny_config("bert", "size=tiny", **{"model.num_layers": 3})
  assert rst.step_shape_fingerprint(a) != rst.step_shape_fingerprint(d)


def test_triangle_schedule():
  f = schedules.triangle
  assert f(0.0) == 0.0 and f(0.5) == pytest.approx(1.0) and f(1.0) == 0.0
  assert f(0.25) == pytest.approx(0.5) and f(0.75) == pytest.approx(0.5)


def test_t5_cosine_schedule():
  f = schedules.t5_cosine
  assert f(0.0) == pytest.approx(0.5)
  warmup_end = schedules.T5_WARMUP / schedules.T5_HORIZON
  assert warmup_end == pytest.approx(0.1526, abs=1e-4)
  assert f(warmup_end) == pytest.approx(1.0)
  assert f(1.0) == pytest.approx(1e-5)
  mid = (schedules.T5_WARMUP + (schedules.T5_HORIZON - schedules.T5_WARMUP) / 2) / schedules.T5_HORIZON
  assert f(mid) == pytest.approx(0.5, abs=1e-3)
  assert math.isclose(f(0.999), max(1e-5, f(0.999)))


def test_calibrated_tiny_bert_table_is_monotone_in_layers():
  """`launch.calibrate_rst`'s measurement on this machine: more active layers cost more."""
  from ntng_jax import data as data_lib, partitioning
  from ntng_jax.train import calibrate
  import tempfile
  config = tiny_config("bert", **{"model.num_layers": 4, "model.hidden_size": 128,
                                  "model.intermediate_size": 512, "model.head_dim": 64, "data.num_lines": 2000,
                                  "rst.repeats": 7})
  with tempfile.TemporaryDirectory() as workdir:
    ds = data_lib.build_dataset(config.data, "bert", config.model.vocab_size, workdir)
    table = calibrate.calibrate(config, partitioning.make_mesh(config.mesh), lambda: next(iter(
        ds.train_iterator(config.train.batch_size, seed=0))))
  train = [table.train[n] for n in range(1, 5)]
  forward = [table.forward[n] for n in range(1, 5)]
  assert all(b > a for a, b in zip(train, train[1:])), train
  assert forward[-1] > forward[0], forward
  assert table.fingerprint == rst.step_shape_fingerprint(config)
  assert {"machine", "date", "jax_version"} <= set(table.meta)
