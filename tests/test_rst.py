"""The RST meter, built-in tables and schedules."""

import dataclasses
import math

import pytest
from conftest import tiny_config

from ntng_jax import rst, schedules
from ntng_jax.rst import Charge


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
  assert rst.step_cost(table, [Charge("train", 4, 128)]) == pytest.approx(0.06508)
  assert rst.step_cost(table, [Charge("train", 4, 256), Charge("forward", 4, 128)]) == (
    pytest.approx(2 * 0.06508 + table.seconds(Charge("forward", 4, 128)))
  )
  with pytest.raises(rst.RSTTableError, match="no train entry for 17"):
    table.seconds(Charge("train", 17, 128))
  with pytest.raises(rst.RSTTableError, match="no extra kind"):
    table.seconds(Charge("extra", "hessian", 128))


def test_table_json_round_trip_and_fingerprint_check(tmp_path):
  config = tiny_config("bert")
  table = rst.RSTTable(
    name="t",
    unit_sequences=32,
    train={1: 0.01, 2: 0.02},
    forward={1: 0.004},
    fingerprint=rst.step_shape_fingerprint(config),
  )
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
  c = tiny_config("bert", "size=tiny,method=layer_drop")  # turns on remat
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
  mid = (
    schedules.T5_WARMUP + (schedules.T5_HORIZON - schedules.T5_WARMUP) / 2
  ) / schedules.T5_HORIZON
  assert f(mid) == pytest.approx(0.5, abs=1e-3)
  assert math.isclose(f(0.999), max(1e-5, f(0.999)))


SHIPPED = [(f, s) for f in ("bert", "t5") for s in ("tiny", "small")]


@pytest.mark.parametrize("family, size", SHIPPED)
def test_builtin_reference_tables_cover_the_shipped_configs(family, size):
  """Every shipped config has a built-in table, recorded like the paper's (machine, date, jax
  version, method), with positive costs that grow with depth."""
  config = tiny_config(family, f"size={size}")
  table = rst.builtin_table_for(config)
  assert table is not None, f"no built-in RST table for {family} {size}"
  assert rst.reference_table_for(config) == table
  assert table.fingerprint == rst.step_shape_fingerprint(config)
  assert table.unit_sequences == config.train.micro_batch_size
  assert {"machine", "date", "jax_version", "statistic", "method"} <= set(table.meta)
  L = config.model.num_layers
  train = [table.train[n] for n in range(1, L + 1)]
  assert all(v > 0 for v in train) and all(b > a for a, b in zip(train, train[1:])), train
  assert sorted(table.forward) == list(range(1, L + 1))


@pytest.mark.parametrize("family, size", SHIPPED)
def test_methods_and_remat_share_the_builtin_table(family, size):
  """The fingerprint is of the step shape: every method of a shipped size (layer dropping turns on
  remat, stacking starts shallower, Lion/Sophia change the optimizer) is priced by one table, and
  so is any implementation switch (attention, layer loop) or a field added to the model later."""
  base = rst.builtin_table_for(tiny_config(family, f"size={size}"))
  for method in ("stacking", "layer_drop", "lion", "sophia", "selective_backprop", "rho_loss"):
    config = tiny_config(family, f"size={size},method={method}")
    assert rst.builtin_table_for(config) is not None
    assert rst.builtin_table_for(config).name == base.name, method
  assert (
    rst.builtin_table_for(tiny_config(family, f"size={size}", **{"model.remat": True})).name
    == base.name
  )
  config = tiny_config(family, f"size={size}")
  for field, value in (
    ("attention_impl", "einsum"),
    ("layer_loop", "unroll"),
    ("init_std", 0.5),
    ("attention_dropout_rate", 0.0),
    ("some_new_switch", 1),
  ):
    config.model[field] = value
  assert rst.step_shape_fingerprint(config) == base.fingerprint
  config.model.dropout_rate = 0.1  # dropout adds work: another shape
  assert rst.step_shape_fingerprint(config) != base.fingerprint
  for field, value in (
    ("model.num_layers", 3),
    ("model.vocab_size", 4096),
    ("train.micro_batch_size", 16),
    ("data.seq_len", 32),
    ("train.compute_dtype", "bfloat16"),
  ):
    assert rst.builtin_table_for(tiny_config(family, f"size={size}", **{field: value})) is None


def _no_calibration():
  raise AssertionError("calibrated although a reference table matches")


def test_auto_uses_the_builtin_table_and_records_it(tmp_path):
  from ntng_jax.train import rst_choice

  config = tiny_config("bert")
  table = rst_choice.resolve_rst_table(config, str(tmp_path), _no_calibration)
  assert table == rst.builtin_table_for(config)
  assert rst.load_table(str(tmp_path / "rst_table.json"), config) == table
  # Resuming keeps the run's clock, even if the built-in table changed since.
  other = dataclasses.replace(table, name="older", train={n: 2 * v for n, v in table.train.items()})
  rst.save_table(other, str(tmp_path / "rst_table.json"))
  assert rst_choice.resolve_rst_table(config, str(tmp_path), _no_calibration) == other
  config.rst.table = "paper"
  from ntng_jax.config import ConfigError

  with pytest.raises(ConfigError, match="rst.table='paper' only prices"):
    rst_choice.resolve_rst_table(config, str(tmp_path / "p"), _no_calibration)


def test_auto_calibration_for_a_shape_without_reference_table(tmp_path, capsys):
  """The one test of start-up calibration: it asserts only what machine load cannot change (which
  entries exist, that they are positive, the fingerprint, the record, the cache on resume)."""
  from ntng_jax import data as data_lib
  from ntng_jax import partitioning
  from ntng_jax.train import calibrate, rst_choice

  config = tiny_config(
    "bert", **{"model.num_layers": 3, "data.num_lines": 500, "rst.repeats": 2, "rst.warmup": 1}
  )
  assert rst.reference_table_for(config) is None
  ds = data_lib.build_dataset(config.data, "bert", config.model.vocab_size, str(tmp_path))
  calls = []

  def calibrate_fn():
    calls.append(1)
    return calibrate.calibrate(
      config,
      partitioning.make_mesh(config.mesh),
      lambda: next(iter(ds.train_iterator(config.train.batch_size, seed=0))),
    )

  table = rst_choice.resolve_rst_table(config, str(tmp_path), calibrate_fn)
  out = capsys.readouterr().out
  assert calls == [1] and "No reference RST table matches" in out
  assert "launch.calibrate_rst" in out and "--config.rst.table=TABLE.json" in out
  assert sorted(table.train) == sorted(table.forward) == [1, 2, 3]
  assert all(v > 0 for v in [*table.train.values(), *table.forward.values()])
  assert table.fingerprint == rst.step_shape_fingerprint(config)
  assert {"machine", "date", "jax_version"} <= set(table.meta)
  assert rst_choice.resolve_rst_table(config, str(tmp_path), _no_calibration) == table
  assert calls == [1]


def test_combined_calibrations_keep_each_minimum():
  from ntng_jax.train import calibrate

  a = rst.RSTTable(
    name="a",
    unit_sequences=32,
    train={1: 1.0, 2: 3.0},
    forward={1: 0.5},
    fingerprint="f",
    meta=dict(date="d1", repeats=5),
  )
  b = dataclasses.replace(
    a, train={1: 2.0, 2: 2.5}, forward={1: 0.4}, meta=dict(date="d2", repeats=5)
  )
  c = calibrate.combine_runs([a, b], name="both")
  assert c.name == "both" and c.train == {1: 1.0, 2: 2.5} and c.forward == {1: 0.4}
  assert c.meta["runs"] == 2 and "minimum over 2 runs" in c.meta["statistic"]
