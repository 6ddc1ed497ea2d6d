"""Downstream metrics (ntng_jax.eval.metrics) against scikit-learn, scipy and rouge-score, and
the paper's GLUE/SuperGLUE averages."""

from __future__ import annotations

import numpy as np
import pytest

from ntng_jax import eval as E


# ----------------------------------------------------------------------------- metrics
def _cases():
  rng = np.random.default_rng(0)
  cases = []
  for k, n in [(2, 50), (2, 7), (3, 40), (3, 200)]:
    cases.append((rng.integers(0, k, n), rng.integers(0, k, n)))
  y = rng.integers(0, 2, 30)
  cases += [
    (y, np.zeros_like(y)),  # constant predictions (MCC undefined -> 0)
    (y, np.ones_like(y)),
    (y, y.copy()),  # perfect
    (y, 1 - y),  # all wrong
    (np.zeros(10, int), np.zeros(10, int)),  # no positives at all (F1 -> 0)
    (np.array([2, 2, 0]), np.array([2, 1, 0])),
  ]
  return cases


@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.parametrize("case", range(len(_cases())))
def test_classification_metrics_match_sklearn(case):
  sk = pytest.importorskip("sklearn.metrics")
  y, p = _cases()[case]
  assert E.accuracy(y, p) == pytest.approx(sk.accuracy_score(y, p))
  assert E.f1(y, p) == pytest.approx(sk.f1_score(y == 1, p == 1, zero_division=0))
  if set(np.unique(np.r_[y, p])) == {0, 1}:
    assert E.f1(y, p) == pytest.approx(sk.f1_score(y, p, zero_division=0))
  assert E.f1_macro(y, p) == pytest.approx(sk.f1_score(y, p, average="macro", zero_division=0))
  assert E.mcc(y, p) == pytest.approx(sk.matthews_corrcoef(y, p), abs=1e-12)


def test_mcc_constant_predictions_is_zero():
  assert E.mcc([0, 1, 1, 0], [1, 1, 1, 1]) == 0.0
  assert E.mcc([1, 1, 1], [1, 1, 1]) == 0.0


def test_correlations_match_scipy():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(1)
  for y, p in [
    (rng.normal(size=100), rng.normal(size=100)),
    (rng.uniform(0, 5, 60), rng.integers(0, 5, 60).astype(float)),  # ties
    (np.arange(10.0), np.arange(10.0) ** 3),
  ]:
    assert E.pearson(y, p) == pytest.approx(stats.pearsonr(y, p)[0], abs=1e-12)
    assert E.spearman(y, p) == pytest.approx(stats.spearmanr(y, p)[0], abs=1e-12)
  assert np.isnan(E.pearson([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]))
  assert np.isnan(E.spearman([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]))


def test_multirc_scores_match_sklearn():
  sk = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(2)
  groups = [(p, q) for p in range(4) for q in range(3) for _ in range(rng.integers(1, 5))]
  y, p = rng.integers(0, 2, len(groups)), rng.integers(0, 2, len(groups))
  p[:3] = y[:3]
  got = E.multirc_scores(y, p, groups)
  assert got["f1a"] == pytest.approx(sk.f1_score(y, p, zero_division=0))
  qs = sorted(set(groups))
  idx = {g: [i for i, h in enumerate(groups) if h == g] for g in qs}
  assert got["em"] == pytest.approx(np.mean([np.all(y[i] == p[i]) for i in idx.values()]))
  assert got["f1m"] == pytest.approx(
    np.mean([sk.f1_score(y[i], p[i], average="macro", zero_division=0) for i in idx.values()])
  )
  assert E.compute_metrics("multirc", y, p, groups) == got


def test_rouge_l_matches_rouge_score():
  rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
  preds = ["the cats are running quickly", "bleed", "A", "", "completely different words"]
  refs = ["a cat runs quick", "bleeding", "D", "something", "completely different words"]
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  want = 100 * np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)])
  assert E.rouge_l(preds, refs) == pytest.approx(want)
  assert E.rouge_l(["cats running"], [["dogs", "cat runs"]]) == pytest.approx(100.0)


def test_glue_and_superglue_averages():
  full = {
    "qqp": {"f1": 0.8},
    "qnli": {"accuracy": 0.9},
    "mrpc": {"f1": 0.85},
    "mnli": {"accuracy": 0.8},
    "mnli_mm": {"accuracy": 0.81},
    "stsb": {"pearson": 0.85},
    "sst2": {"accuracy": 0.9},
    "rte": {"accuracy": 0.6},
    "cola": {"mcc": 0.4},
  }
  res = E.glue_average(full)
  assert res["missing"] == [] and len(res["components"]) == 9
  assert res["average"] == pytest.approx(np.mean([0.8, 0.9, 0.85, 0.8, 0.81, 0.85, 0.9, 0.6, 0.4]))
  part = E.glue_average({"cola": {"mcc": 0.4, "accuracy": 0.7}, "sst2": {"accuracy": 0.9}})
  assert part["average"] == pytest.approx(0.65)
  assert set(part["missing"]) == {
    "qqp/f1",
    "qnli/accuracy",
    "mrpc/f1",
    "mnli/accuracy",
    "mnli_mm/accuracy",
    "stsb/pearson",
    "rte/accuracy",
  }
  sg = E.superglue_average({"cb": {"f1_macro": 0.7, "accuracy": 0.9}, "copa": {"accuracy": 0.6}})
  assert sg["average"] == pytest.approx(0.65) and "multirc/f1a" in sg["missing"]
  assert np.isnan(E.glue_average({})["average"])
