"""The sweep report's differences to the baseline paired by seed (issue 20.5): the numbers in
report.json and report.md, and the two figures (validation loss vs RST per budget; the paired
difference of the final validation loss vs budget), from a fake sweep written on disk."""

import json
import math
import os
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))
from ntng_jax.experiments import report  # noqa: E402

# Final losses per (method, budget, seed). The seed shifts both methods by the same amount, so the
# paired differences are small and known while the unpaired spread is large.
SEED_SHIFT = {0: 0.0, 1: 1.0, 2: 2.0}
METHOD_OFFSET = {  # method − baseline for the same seed, per budget and seed
  ("lion", 1.0): {0: -0.1, 1: -0.3, 2: -0.2},
  ("lion", 2.0): {0: 0.05, 1: 0.25, 2: 0.15},
}
SETS_EXTRA = {"c4": 0.0, "minipile": 0.4}


def _final(method: str, budget: float, seed: int) -> float:
  base = 4.0 - 0.5 * budget + SEED_SHIFT[seed]
  return base + (METHOD_OFFSET[(method, budget)][seed] if method != "baseline" else 0.0)


def _write_run(
  root, method: str, budget: float, seed: int, finished: bool = True, unigram: float | None = None
) -> None:
  """One run as the trainer leaves it, in a sub-root per seed (ROOT/seed-S/METHOD/budget-B/seed-S)."""
  wd = root / f"seed-{seed}" / method / f"budget-{budget:g}" / f"seed-{seed}"
  wd.mkdir(parents=True)
  val = _final(method, budget, seed)
  train = val - 0.2
  rst = budget * 3600.0
  records = []
  for i in range(1, 5):
    frac = i / 4
    records.append(dict(step=i * 10, rst_seconds=frac * rst, train_loss=7.0 - (7.0 - train) * frac))
    records.append(
      dict(
        step=i * 10,
        rst_seconds=frac * rst,
        validation_loss=7.0 - (7.0 - val) * frac,
        **{f"validation_loss/{n}": 7.0 - (7.0 - val - x) * frac for n, x in SETS_EXTRA.items()},
      )
    )
  (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  summary = dict(
    method=method, steps=40, rst_seconds=rst, final_train_loss=train, unigram_entropy_nats=unigram
  )
  if finished:
    summary.update(
      stopped_because="budget",
      final_validation_loss=val,
      final_validation_losses={n: val + x for n, x in SETS_EXTRA.items()},
    )
  (wd / "summary.json").write_text(json.dumps(summary))


def _paired_expected(method: str, budget: float, seeds) -> tuple[float, float]:
  diffs = [METHOD_OFFSET[(method, budget)][s] for s in seeds]
  mean = sum(diffs) / len(diffs)
  return mean, math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))


def _cell(report_json: dict, method: str, budget: float, name: str) -> dict:
  (group,) = [
    g
    for g in report_json["aggregate"]["groups"]
    if g["method"] == method and g["budget_hours"] == budget
  ]
  return group["metrics"][name]


def test_paired_differences_in_report_json_markdown_and_figures(tmp_path):
  plt = pytest.importorskip("matplotlib.pyplot")
  root = tmp_path / "sweep"
  for budget in (1.0, 2.0):
    for seed in (0, 1):
      _write_run(root, "baseline", budget, seed)
      _write_run(root, "lion", budget, seed)
  # Seed 2: lion finished, the baseline did not, so seed 2 enters lion's mean but no pair.
  _write_run(root, "lion", 1.0, 2)
  _write_run(root, "baseline", 1.0, 2, finished=False)

  result = report.write_report(str(root))
  saved = json.load(open(result["json"]))
  for budget in (1.0, 2.0):
    mean, std = _paired_expected("lion", budget, [0, 1])
    # Every set and the training loss move with the in-domain loss, so they differ alike.
    for name in ("validation_loss", "validation_loss/minipile", "train_loss"):
      paired = _cell(saved, "lion", budget, name)["paired"]
      assert paired["n"] == 2 and paired["seeds"] == [0, 1], (budget, name, paired)
      assert paired["mean"] == pytest.approx(mean), (budget, name)
      assert paired["std"] == pytest.approx(std), (budget, name)
    assert "paired" not in _cell(saved, "baseline", budget, "validation_loss")
  # The unpaired view of the same cell: lion's mean has three seeds, its std the seed shifts.
  lion_1h = _cell(saved, "lion", 1.0, "validation_loss")
  assert lion_1h["n"] == 3 and lion_1h["std"] > 5 * lion_1h["paired"]["std"]

  md = open(result["markdown"]).read()
  table = md[md.index("### Final validation loss, in-domain set") :]
  table = table[: table.index("\n### ")]
  assert "Paired by seed, method − baseline (mean ± std, n):" in table
  row_1h = "{:+.4f} ± {:.4f} (n=2)".format(*_paired_expected("lion", 1.0, [0, 1]))
  row_2h = "{:+.4f} ± {:.4f} (n=2)".format(*_paired_expected("lion", 2.0, [0, 1]))
  assert f"| lion | {row_1h} | {row_2h} |" in table, table
  assert "same seed" in md and "seeds where both finished" in md
  # The verdict follows the paired difference (the means alone say lion is worse at 1 h too).
  assert lion_1h["delta"] > 0
  assert "validation_loss: better at 1/2 budgets (1 by more than one std)" in md
  # train, in-domain and minipile; c4 is the in-domain set, so its numbers are not repeated.
  assert md.count("Paired by seed, method − baseline") == 3
  assert "in-domain set `c4`" in md and "### Final validation loss on `c4`" not in md
  assert "### Final validation loss on `minipile`" in md

  for key in ("validation_rst", "paired_delta"):
    path = result["figures"][key]
    assert os.path.dirname(path) == str(root) and os.path.getsize(path) > 1000
    image = f"![{key}](fig_{key}.png)"
    assert image in md
    caption = md[md.index(image) + len(image) :].strip().splitlines()[0]
    assert caption and not caption.startswith("!"), caption
  # The central plot has a panel per validation set (c4, minipile), side by side.
  height, width = plt.imread(result["figures"]["paired_delta"]).shape[:2]
  assert width > 2 * height
  assert str(tmp_path) not in md


def test_paired_delta_figure_with_one_budget_and_one_seed(tmp_path):
  """One budget, one seed: the paired difference has no std, and the figure is still drawn."""
  pytest.importorskip("matplotlib")
  root = tmp_path / "sweep"
  _write_run(root, "baseline", 2.0, 0)
  _write_run(root, "lion", 2.0, 0)
  result = report.write_report(str(root))
  paired = _cell(json.load(open(result["json"])), "lion", 2.0, "validation_loss")["paired"]
  assert paired["n"] == 1 and paired["std"] is None
  assert paired["mean"] == pytest.approx(METHOD_OFFSET[("lion", 2.0)][0])
  assert os.path.getsize(result["figures"]["paired_delta"]) > 1000
  assert (
    f"| lion | {METHOD_OFFSET[('lion', 2.0)][0]:+.4f} (n=1) |" in open(result["markdown"]).read()
  )


def test_learning_regime_table_compares_the_baseline_with_the_unigram_entropy(tmp_path):
  """Item 20.1's criterion in the report: the baseline's final in-domain validation loss per budget
  against the unigram entropy its summary records, the gap per seed; no table without the entropy."""
  root = tmp_path / "sweep"
  for seed in (0, 1):
    _write_run(root, "baseline", 2.0, seed, unigram=5.5)
    _write_run(root, "lion", 2.0, seed, unigram=5.5)
  md = open(report.write_report(str(root), figures=False)["markdown"]).read()
  section = md[md.index("## Learning regime") : md.index("## Against the baseline")]
  gaps = ", ".join(f"{5.5 - _final('baseline', 2.0, s):.3f}" for s in (0, 1))  # 2.500, 1.500
  mean = (_final("baseline", 2.0, 0) + _final("baseline", 2.0, 1)) / 2
  assert f"| 2 h | {mean:.4f} | 5.5000 | {gaps} |" in section, section

  bare = tmp_path / "bare"
  _write_run(bare, "baseline", 2.0, 0)
  assert (
    "## Learning regime"
    not in open(report.write_report(str(bare), figures=False)["markdown"]).read()
  )


def test_training_loss_is_the_final_window_mean_and_selection_uses_the_scored_batch(tmp_path):
  """One logged batch is noise: the table averages the last 5 % of the RST. Batch selection logs
  the loss of its kept, hardest sequences; the report compares the whole scored mega-batch's."""
  from ntng_jax.experiments import results, stats

  root = tmp_path / "sweep"
  for method in ("baseline", "selective_backprop"):
    wd = root / "seed-0" / method / "budget-1" / "seed-0"
    wd.mkdir(parents=True)
    records = []
    for i in range(1, 101):  # RST 36 s apart; the last 5 % of 3600 s holds steps 95..100
      record = dict(step=i, rst_seconds=36.0 * i, train_loss=5.0 + (i % 2))  # 5, 6, 5, ...
      if method == "selective_backprop":
        record.update(train_loss=9.0, score_loss_mean=4.0 + (i % 2))
      records.append(record)
    (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = dict(method=method, steps=100, rst_seconds=3600.0, stopped_because="budget")
    (wd / "summary.json").write_text(json.dumps(dict(summary, final_train_loss=9.0)))

  agg = stats.aggregate(results.collect(str(root)))
  base = agg["groups"][("baseline", 1.0)]["metrics"]["train_loss"]
  selected = agg["groups"][("selective_backprop", 1.0)]["metrics"]["train_loss"]
  assert base["mean"] == pytest.approx(5.5)  # steps 95..100: three 6s and three 5s
  assert selected["mean"] == pytest.approx(4.5)  # the scored batch's, not the kept 9.0
  assert selected["paired"]["mean"] == pytest.approx(-1.0)
