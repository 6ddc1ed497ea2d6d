"""Lion and Sophia-G end to end: tiny BERT and T5 under RST budgets in bf16 compute, and the
RST meter charging Sophia's Hessian passes."""

import math

import pytest
from conftest import tiny_config
from test_train import read_records, small_run_config

from ntng_jax import rst
from ntng_jax.optim import optimizer_hook
from ntng_jax.train import loop as loop_lib


@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("method", ["lion", "sophia"])
def test_optimizer_method_trains_in_bf16(tmp_path, family, method):
  config = small_run_config(
    tmp_path, family, steps=40, **{"train.compute_dtype": "bfloat16", "train.log_every_steps": 5}
  )
  config.method.name = method
  from configs import get_config

  config.optim = get_config(family, f"size=tiny,method={method}").optim
  summary = loop_lib.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["stopped_because"] == "budget", summary
  losses = [r["train_loss"] for r in read_records(tmp_path / "run") if "train_loss" in r]
  assert all(math.isfinite(l) for l in losses)
  assert sum(losses[-3:]) / 3 < losses[0] - 0.1, losses


def test_sophia_hessian_passes_are_charged_unless_free():
  config = tiny_config("bert", "size=tiny,method=sophia")
  table = rst.RSTTable(name="t", unit_sequences=32, train={1: 0.5, 2: 1.0})
  k = config.optim.update_interval
  charged = [optimizer_hook(config).charges(table, s, 32, 2) for s in range(2 * k)]
  refresh = [s for s, c in enumerate(charged) if c]
  assert refresh == [0, k]
  assert rst.step_cost(table, charged[0]) == pytest.approx(
    optimizer_hook(config).aux_micro_batches * config.train.micro_batch_size / 32 * 1.0
  )
  config.optim.free_updates = True
  assert not any(optimizer_hook(config).charges(table, s, 32, 2) for s in range(2 * k))


def test_paper_t5_table_charges_optimizer_step_times():
  config = tiny_config("t5", "size=base,method=lion")
  table = rst.paper_table_for(config)
  charges = [rst.Charge("train", 12, 144)] + optimizer_hook(config).charges(table, 0, 144, 12)
  assert rst.step_cost(table, charges) == pytest.approx(1.043)
  config = tiny_config("t5", "size=base,method=sophia")
  charges = [rst.Charge("train", 12, 144)] + optimizer_hook(config).charges(table, 3, 144, 12)
  assert rst.step_cost(table, charges) == pytest.approx(1.156)
