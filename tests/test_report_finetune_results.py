"""The fine-tuning result file: `launch.finetune` writes it once, and both the printed table and a
sweep report read that structured result (no rendered text is parsed back)."""

import json
import math

import numpy as np

from ntng_jax.experiments import finetune_results as F


def _glue_result() -> dict:
  return dict(
    suite="glue",
    tasks=dict(
      rte=dict(
        epochs=[dict(metrics=dict(accuracy=0.5)), dict(metrics=dict(accuracy=np.float32(0.625)))],
        best=dict(accuracy=0.625),
        best_epoch=dict(accuracy=2),
        majority_rate=0.527,
        num_train=2490,
        num_dev=277,
      ),
      stsb=dict(
        epochs=[dict(metrics=dict(pearson=math.nan, spearman=0.1))],
        best=dict(pearson=math.nan, spearman=0.1),
        best_epoch=dict(pearson=None, spearman=1),
        num_train=5749,
      ),
    ),
    best=dict(rte=dict(accuracy=0.625), stsb=dict(pearson=math.nan, spearman=0.1)),
    average=dict(average=0.3125, components={"rte/accuracy": 0.625}, missing=["cola/mcc"]),
  )


def test_written_result_is_strict_json_that_the_table_and_the_report_read(tmp_path):
  path = F.result_path(str(tmp_path / "run"), "glue")
  assert path == str(tmp_path / "run" / "finetune" / "glue.json")
  written = F.write_result(path, _glue_result())
  with open(path) as f:
    on_disk = json.loads(f.read(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
  assert on_disk == written  # NaN became null, numpy scalars plain numbers
  assert on_disk["tasks"]["stsb"]["best"]["pearson"] is None
  assert on_disk["tasks"]["rte"]["epochs"][1]["metrics"]["accuracy"] == 0.625

  table = F.markdown_table(on_disk).splitlines()
  assert "| rte | accuracy | 62.50 | 2 | 50.00, 62.50 | 52.70 | 2490 |" in table
  assert "| stsb | pearson | n/a | None | n/a | n/a | 5749 |" in table
  assert table[-1] == "| **average** | paper's (of 1; missing: cola/mcc) | **31.25** | | | | |"

  summary = F.read_finetune(path)  # what a sweep report takes from the same file
  assert summary == dict(
    average=0.3125,
    tasks={"rte/accuracy": 0.625, "stsb/spearman": 0.1, "rte/majority_rate": 0.527},
    missing=["cola/mcc"],
    num_dev={"rte": 277},
  )
  assert F.read_finetune(str(tmp_path / "absent.json")) is None


def test_sni_result_table_and_summary(tmp_path):
  result = dict(
    suite="sni",
    tasks=dict(
      task1=dict(rouge_l_paper=40.0, rouge_l_official=45.5, num_examples=16),
      task2=dict(rouge_l_paper=20.0, rouge_l_official=math.inf, num_examples=16),
    ),
    rouge_l_paper=30.0,
    rouge_l_official=None,
    rouge_l=30.0,
    num_test=32,
  )
  path = str(tmp_path / "sni.json")
  table = F.markdown_table(F.write_result(path, result)).splitlines()
  assert "| task1 | 40.00 | 45.50 | 16 |" in table and "| task2 | 20.00 | n/a | 16 |" in table
  assert table[-1] == "| **all** | **30.00** | **n/a** | 32 |"
  assert F.read_finetune(path) == dict(average=30.0, tasks={}, missing=[], num_dev={})
