"""compare_rst: normalised step kinds, ratios, drift and per-method RST on known tables."""

import json
import math

import pytest
from conftest import run_module, tiny_config

from configs import get_config
from ntng_jax import data as data_lib
from ntng_jax import partitioning, rst
from ntng_jax.experiments import rst_compare
from ntng_jax.optim import optimizer_hook
from ntng_jax.train.calibrate import calibrate, combine_runs

L = 16
SHARES = (0.125, 0.175, 0.7)  # stacking stages 4, 8, 16 (BERT base schedule)
MEAN_DROP = 0.5 * (1 - (1 - math.exp(-100.0)) / 100.0)  # RST-average drop level, BERT
MEAN_ACTIVE = L - MEAN_DROP * (L + 1) / 2


def _table(path, name, train, forward, unit=128):
  table = rst.RSTTable(name=name, unit_sequences=unit, train=train, forward=forward)
  rst.save_table(table, str(path))
  return str(path)


@pytest.fixture
def tables(tmp_path):
  # A: cost proportional to depth; scoring = a quarter of a training pass at every depth.
  a = _table(
    tmp_path / "a.json",
    "calibrated-cpu-bert-base",
    {n: float(n) for n in range(1, L + 1)},
    {n: n / 4 for n in range(1, L + 1)},
  )
  # B: a large fixed cost (8) plus half a unit per layer; scoring costs 2 at any depth; priced per
  # 64 sequences (units cancel in the normalisation).
  b = _table(
    tmp_path / "b.json",
    "calibrated-gpu-bert-base",
    {n: 8 + n / 2 for n in range(1, L + 1)},
    {n: 2.0 for n in range(1, L + 1)},
    unit=64,
  )
  return a, b


def test_normalised_ratios_and_drift(tables):
  a, b = tables
  report = rst_compare.compare([a, b])
  assert report["family"] == "bert" and report["num_layers"] == L and report["reference"] == "a"
  na, nb = (t["normalised"] for t in report["tables"])
  assert na["train"][16] == nb["train"][16] == 1.0
  assert na["train"][4] == pytest.approx(0.25) and nb["train"][4] == pytest.approx(10 / 16)
  assert na["forward"][16] == pytest.approx(0.25) and nb["forward"][16] == pytest.approx(0.125)
  ratios = report["ratios"]["b"]
  assert ratios["forward[16]"] == pytest.approx(0.5)
  assert ratios["train[1]"] == pytest.approx(8.5)
  assert ratios["forward[1]"] == pytest.approx((2 / 16) / (0.25 / 16))
  assert report["largest_drift"] == {"entry": "train[1]", "table": "b", "ratio": pytest.approx(8.5)}


def test_method_implications(tables):
  a, b = tables
  report = rst_compare.compare([a, b])
  ma, mb = (t["methods"] for t in report["tables"])
  assert ma["baseline"]["relative"] == mb["baseline"]["relative"] == 1.0
  # Selection: scoring 2x the batch at full depth, plus the training step.
  assert ma["rho_loss"]["relative"] == pytest.approx(1 + 2 * 0.25)
  assert mb["rho_loss"]["relative"] == pytest.approx(1 + 2 * 0.125)
  assert ma["selective_backprop"]["relative"] == pytest.approx(1.5)
  # Stacking: fixed RST shares per stage, so cost/step = 1 / sum(share / stage cost).
  assert ma["stacking"]["depths"] == [4, 8, 16]
  assert ma["stacking"]["relative"] == pytest.approx(1 / (0.125 * 4 + 0.175 * 2 + 0.7))
  stage_b = [(8 + d / 2) / 16 for d in (4, 8, 16)]
  assert mb["stacking"]["relative"] == pytest.approx(
    1 / sum(s / c for s, c in zip(SHARES, stage_b))
  )
  # Layer dropping at the schedule's mean depth (interpolated between table depths).
  assert ma["layer_drop"]["mean_active_layers"] == pytest.approx(MEAN_ACTIVE, abs=1e-4)
  assert ma["layer_drop"]["relative"] == pytest.approx(MEAN_ACTIVE / 16, abs=1e-5)
  assert mb["layer_drop"]["relative"] == pytest.approx((8 + MEAN_ACTIVE / 2) / 16, abs=1e-5)
  # Sophia (BERT): an extra training pass over its Hessian batch every 10 steps; Lion: nothing.
  c = get_config("bert", "size=base,method=sophia")
  share = optimizer_hook(c).hessian_sequences / c.train.batch_size
  assert 0 < share <= 1
  for m in (ma, mb):
    assert m["sophia"]["relative"] == pytest.approx(1 + share / 10)
  assert mb["sophia"]["update_interval"] == 10
  assert ma["lion"]["relative"] == mb["lion"]["relative"] == 1.0


def test_paper_tables(tmp_path, tables):
  a, _ = tables
  report = rst_compare.compare(["paper:bert", a])
  paper = report["tables"][0]
  assert paper["normalised"]["forward"] == {16: pytest.approx(0.09285 / 0.2253)}
  assert paper["methods"]["rho_loss"]["relative"] == pytest.approx(1 + 2 * 0.09285 / 0.2253)
  assert report["ratios"]["a"]["forward[16]"] == pytest.approx(0.25 / (0.09285 / 0.2253))
  assert "forward[3]" not in report["ratios"]["a"]  # the paper's table has no such entry

  t5 = _table(
    tmp_path / "t5.json",
    "calibrated-cpu-t5-base",
    {n: float(n) for n in range(1, 13)},
    {n: n / 3 for n in range(1, 13)},
  )
  report = rst_compare.compare(["paper:t5", t5])
  p, c = (t["methods"] for t in report["tables"])
  # The paper's T5 table charges Lion/Sophia their measured per-step extra, every step.
  assert p["lion"]["relative"] == pytest.approx(1.043 / 1.031)
  assert p["sophia"]["relative"] == pytest.approx(1.156 / 1.031)
  assert p["stacking"]["depths"] == [3, 6, 12]
  assert c["rho_loss"]["relative"] == pytest.approx(1 + 2 / 3)
  assert p["rho_loss"]["relative"] is None and "forward" in p["rho_loss"]["unpriced"]

  with pytest.raises(rst_compare.CompareError, match="different model families"):
    rst_compare.compare(["paper:bert", "paper:t5"])
  with pytest.raises(rst_compare.CompareError, match="at least two"):
    rst_compare.compare(["paper:bert"])


def test_partial_table_is_interpolated(tmp_path, tables):
  a, _ = tables
  sparse = _table(
    tmp_path / "sparse.json",
    "calibrated-cpu-bert-base",
    {1: 1.0, 4: 4.0, 8: 8.0, 12: 12.0, 16: 16.0},
    {16: 4.0},
  )
  report = rst_compare.compare([a, sparse])
  full, part = (t["methods"] for t in report["tables"])
  for m in ("stacking", "layer_drop", "rho_loss", "sophia"):
    assert part[m]["relative"] == pytest.approx(full[m]["relative"], rel=1e-9)


def test_cli_writes_markdown_json_and_figure(tmp_path, tables):
  a, b = tables
  out = tmp_path / "out"
  proc = run_module("launch.compare_rst", "paper:bert", a, b, f"--output={out}")
  assert "| rho_loss | 1.824× | 1.500× | 1.250× |" in proc.stdout
  assert "Largest drift:" in proc.stdout
  data = json.loads((out / "compare_rst.json").read_text())
  assert [t["label"] for t in data["tables"]] == ["paper:bert", "a", "b"]
  assert (out / "compare_rst.png").read_bytes()[:4] == b"\x89PNG"
  assert (out / "compare_rst.md").read_text() == proc.stdout.split("\nWrote")[0]
  bad = run_module("launch.compare_rst", "paper:gpt2", a, check=False)
  assert bad.returncode == 2 and "unknown built-in table" in bad.stderr


def test_depthwise_calibration_writes_a_loadable_partial_table(tmp_path):
  config = tiny_config(
    "bert", **{"data.num_lines": 2000, "rst.repeats": 1, "rst.warmup": 1, "model.num_layers": 3}
  )
  dataset = data_lib.build_dataset(config.data, "bert", config.model.vocab_size, str(tmp_path))
  table = calibrate(
    config,
    partitioning.make_mesh(config.mesh),
    lambda: next(iter(dataset.train_iterator(config.train.batch_size, seed=0))),
    depths=[1, 3],
    one_at_a_time=True,
    log=lambda s: None,
  )
  assert sorted(table.train) == sorted(table.forward) == [1, 3]
  assert all(v > 0 for v in [*table.train.values(), *table.forward.values()])
  path = str(tmp_path / "t.json")
  rst.save_table(table, path)
  assert rst.load_table(path, config).train == table.train  # fingerprint matches the config
  assert rst_compare.normalised(table)["train"][3] == 1.0


def test_combined_runs_of_different_depths_take_the_minimum_per_entry():
  a = rst.RSTTable(
    "calibrated-cpu-bert-base", 16, {1: 2.0, 4: 5.0}, {4: 1.0}, fingerprint="f", meta={"date": "d1"}
  )
  b = rst.RSTTable(
    "calibrated-cpu-bert-base", 16, {4: 4.0}, {4: 3.0}, fingerprint="f", meta={"date": "d2"}
  )
  m = combine_runs([a, b])
  assert m.train == {1: 2.0, 4: 4.0} and m.forward == {4: 1.0}
  assert m.meta["runs"] == 2 and m.meta["run_dates"] == ["d1", "d2"]
  with pytest.raises(ValueError, match="fingerprints"):
    combine_runs([a, rst.RSTTable("x", 16, {1: 1.0}, fingerprint="g")])
