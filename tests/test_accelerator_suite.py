"""benchmarks/accelerator_suite.py in its --smoke mode (tiny shapes, CPU): a fast subset of its
items writes the JSON the device run will write, with every figure present and positive (no
timing thresholds)."""

import json
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
suite = pytest.importorskip("accelerator_suite")


def test_smoke_layer_drop(tmp_path):
  out = tmp_path / "suite.json"
  report = suite.main(["--smoke", "--only=layer_drop", f"--out={out}"])
  assert json.loads(out.read_text()) == json.loads(json.dumps(report))
  assert report["smoke"] and set(report["items"]) == {"layer_drop"}
  drop = report["items"]["layer_drop"]
  assert "error" not in drop, drop
  assert drop["num_layers"] == 4 and drop["plain_step_s"] > 0
  for impl in ("cond", "compact"):
    assert sorted(drop[impl], key=int) == ["1", "2", "3", "4"]
    for k, row in drop[impl].items():
      assert row["fraction_of_plain"] > 0 and row["bound"] == pytest.approx(int(k) / 4 + 0.1)


def test_peaks_and_attention_flops():
  assert suite.device_peak("NVIDIA H100 80GB HBM3") == 989.4
  assert suite.device_peak("NVIDIA H100 PCIe") == 756.0
  assert suite.device_peak("NVIDIA H200") == 989.4
  assert suite.device_peak("NVIDIA A100-SXM4-80GB") == 312.0
  assert suite.device_peak("cpu") is None
  config = suite.get_config("bert", "size=base")
  batch = suite.step_time.synthetic_batch(config, 2, suite.np.random.default_rng(0))
  # 16 layers x 3 x 4 x B x S^2 x (12 heads x 64)
  assert suite.attention_flops(config, batch) == 16 * 12 * 2 * 128 * 128 * 768
  keep = suite.keep_rows(16, 4)
  assert keep.shape == (1, 16) and keep.sum() == 4
