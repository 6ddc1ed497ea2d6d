"""The multi-epoch regime: `data.unique_tokens` limits training to a fixed prefix that repeats;
metrics records carry the (fractional) epoch; a run resumed mid-epoch is exact."""

import json
import os

import numpy as np
import pytest
from conftest import fixed_table, tiny_config

from ntng_jax import data as data_lib

SEQ = 32
BATCH = 8


@pytest.mark.parametrize("family", ["bert", "t5", "gpt"])
def test_unique_tokens_keeps_a_fixed_prefix_for_every_family(family, tmp_path):
  cfg = dict(source="synthetic", num_lines=600, seq_len=SEQ, validation_fraction=0.05)
  full = data_lib.build_dataset(cfg, family, 2048, tmp_path)
  chunk_len = full.meta["chunk_len"]
  limited = data_lib.build_dataset(
    dict(cfg, unique_tokens=3 * BATCH * chunk_len + 5), family, 2048, tmp_path
  )
  assert len(limited.train_ids) == 3 * BATCH
  np.testing.assert_array_equal(limited.train_ids, full.train_ids[: 3 * BATCH])
  np.testing.assert_array_equal(
    np.asarray(limited.train_chunks), np.asarray(full.train_chunks)[: 3 * BATCH]
  )
  assert len(limited.validation_ids) == len(full.validation_ids)
  it = limited.train_iterator(BATCH, seed=0)
  seen = [set(next(it)["example_id"].tolist()) for _ in range(6)]  # two epochs
  assert set().union(*seen[:3]) == set().union(*seen[3:]) == set(limited.train_ids.tolist())
  assert data_lib.epochs_seen(it) == 2.0
  with pytest.raises(data_lib.DataError, match="data.unique_tokens"):
    data_lib.build_dataset(dict(cfg, unique_tokens=10**9), family, 2048, tmp_path)


def _config(table_dir, **overrides):
  config = tiny_config(
    "gpt",
    **{
      "data.num_lines": 600,
      "data.seq_len": SEQ,
      "train.batch_size": BATCH,
      "train.micro_batch_size": BATCH,
      "train.validation_batches": 1,
      "train.log_every_steps": 1,
      "data.unique_tokens": 2 * BATCH * (SEQ + 1),  # 2 batches/epoch
      **overrides,
    },
  )
  config.rst.table = fixed_table(config, table_dir / "table.json", 1.0)
  config.train.budget_hours = 7 / 3600
  return config


def _train_records(workdir):
  return [
    json.loads(line)
    for line in (workdir / "metrics.jsonl").open()
    if "train_loss" in json.loads(line)
  ]


def test_epoch_counter_and_exact_resume_mid_epoch(tmp_path, capsys):
  from ntng_jax.train.loop import train_and_evaluate

  full = train_and_evaluate(_config(tmp_path), str(tmp_path / "full"))
  assert full["steps"] == 7
  records = _train_records(tmp_path / "full")
  assert [r["epoch"] for r in records] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
  # Stop after 3 steps (mid-epoch: epoch 1, batch 2 of 2 next), then resume to the budget.
  part = train_and_evaluate(_config(tmp_path, **{"train.max_steps": 3}), str(tmp_path / "res"))
  assert part["steps"] == 3 and part["stopped_because"] == "max_steps"
  capsys.readouterr()
  resumed = train_and_evaluate(_config(tmp_path), str(tmp_path / "res"))
  assert "Resuming from step 3" in capsys.readouterr().out
  assert resumed["steps"] == 7
  a = {r["step"]: r["train_loss"] for r in records}
  b = {r["step"]: r["train_loss"] for r in _train_records(tmp_path / "res")}
  assert a == b
  assert resumed["final_validation_loss"] == full["final_validation_loss"]
  epochs = [r["epoch"] for r in _train_records(tmp_path / "res")]
  assert epochs == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]


def test_report_gives_perplexity_and_validation_loss_against_epochs(tmp_path):
  """A hand-made two-method GPT grid whose data repeated: the report has perplexity tables, an
  epochs table and the validation-vs-epochs figure."""
  import math

  from ntng_jax.experiments import report, sweep

  for method, offset in (("baseline", 0.0), ("stacking", 0.1)):
    for seed in (0, 1):
      d = tmp_path / sweep.run_dir("", method, 0.01, seed).lstrip("/")
      d.mkdir(parents=True)
      final = 3.0 + offset + 0.01 * seed
      (d / "summary.json").write_text(
        json.dumps(
          dict(
            method=method,
            family="gpt",
            size="tiny",
            seed=seed,
            steps=40,
            stopped_because="budget",
            rst_seconds=36.0,
            final_train_loss=final,
            final_validation_loss=final,
            final_validation_losses={"heldout": final, "wiki": final + 1},
          )
        )
      )
      with open(d / "metrics.jsonl", "w") as f:
        for step in range(1, 41):
          f.write(
            json.dumps(
              dict(step=step, rst_seconds=0.9 * step, train_loss=6 - step / 10, epoch=step / 8)
            )
            + "\n"
          )
          if step % 10 == 0:
            f.write(
              json.dumps(
                dict(
                  step=step,
                  rst_seconds=0.9 * step,
                  epoch=step / 8,
                  validation_loss=6 - step / 10 + offset,
                )
              )
              + "\n"
            )
  result = report.write_report(str(tmp_path))
  md = open(result["markdown"]).read()
  assert "Final validation perplexity, in-domain set" in md
  assert "Final validation perplexity on `wiki`" in md
  assert f"{math.exp(3.005):.2f}" in md  # baseline mean over two seeds
  assert "## Epochs of training data" in md and "| baseline | 5.00 |" in md
  assert os.path.exists(result["figures"]["validation_epochs"])
  assert "stacking" in md and "perplexity: better at 0/1 budgets" in md
