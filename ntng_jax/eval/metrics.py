"""Downstream metrics (pure numpy/scipy; Rouge-L wraps the ``rouge-score`` package).

Every classification/regression metric returns a Python ``float`` on the 0..1 (or -1..1)
scale, exactly as scikit-learn / scipy would; only :func:`rouge_l` is scaled x100, as the
paper reports it. Inputs are 1-D array-likes of equal length ``[N]``.

Conventions, matching scikit-learn / scipy (tested against them):

* ``f1`` is binary F1 of ``pos_label`` (1); 0.0 when there are no predicted and no true
  positives (scikit-learn's ``zero_division`` value).
* ``f1_macro`` is the unweighted mean of per-class F1 over the classes present in labels or
  predictions (scikit-learn ``average='macro'``). **SuperGLUE CB is scored with this macro F1
  over its 3 classes**, as the SuperGLUE benchmark (and HF ``super_glue/cb``) do; the
  original code scores CB through that HF metric (docs/paper.md §5 says "CB F1").
* ``mcc`` is the (multi-class) Matthews correlation; 0.0 when it is undefined
  (e.g. constant predictions), like scikit-learn.
* ``pearson`` / ``spearman`` are NaN when an input is constant, like scipy.
* ``multirc_scores`` gives SuperGLUE MultiRC F1a (binary F1 over all answer options),
  EM (all options of a question right) and F1m (mean per-question macro F1).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Sequence

import numpy as np

__all__ = [
  "accuracy",
  "f1",
  "f1_macro",
  "mcc",
  "pearson",
  "spearman",
  "multirc_scores",
  "rouge_l",
  "glue_average",
  "superglue_average",
  "GLUE_AVERAGE_COMPONENTS",
  "SUPERGLUE_AVERAGE_COMPONENTS",
  "METRIC_FNS",
]


def _pair(labels, predictions) -> tuple[np.ndarray, np.ndarray]:
  y, p = np.asarray(labels).reshape(-1), np.asarray(predictions).reshape(-1)
  if y.shape != p.shape:
    raise ValueError(f"labels and predictions differ in length ({y.size} vs {p.size}).")
  if y.size == 0:
    raise ValueError("Metrics need at least one example.")
  return y, p


def accuracy(labels, predictions) -> float:
  """Fraction of ``predictions[i] == labels[i]``."""
  y, p = _pair(labels, predictions)
  return float(np.mean(y == p))


def _f1_from_counts(tp: float, fp: float, fn: float) -> float:
  denom = 2 * tp + fp + fn
  return float(2 * tp / denom) if denom > 0 else 0.0


def f1(labels, predictions, pos_label=1) -> float:
  """Binary F1 of class ``pos_label`` (GLUE MRPC/QQP, MultiRC F1a)."""
  y, p = _pair(labels, predictions)
  tp = np.sum((p == pos_label) & (y == pos_label))
  fp = np.sum((p == pos_label) & (y != pos_label))
  fn = np.sum((p != pos_label) & (y == pos_label))
  return _f1_from_counts(tp, fp, fn)


def f1_macro(labels, predictions, classes: Sequence | None = None) -> float:
  """Mean per-class F1 over ``classes`` (default: classes seen in labels or predictions)."""
  y, p = _pair(labels, predictions)
  classes = np.unique(np.concatenate([y, p])) if classes is None else classes
  return float(np.mean([f1(y, p, pos_label=c) for c in classes]))


def mcc(labels, predictions) -> float:
  """Matthews correlation coefficient (GLUE CoLA); 0.0 when undefined."""
  y, p = _pair(labels, predictions)
  classes, inv = np.unique(np.concatenate([y, p]), return_inverse=True)
  k = len(classes)
  cm = np.zeros((k, k), dtype=np.float64)
  np.add.at(cm, (inv[: y.size], inv[y.size :]), 1.0)
  t, q, c, s = cm.sum(axis=1), cm.sum(axis=0), np.trace(cm), cm.sum()
  cov_yp = c * s - t @ q
  cov_yy = s * s - t @ t
  cov_pp = s * s - q @ q
  denom = cov_yy * cov_pp
  return float(cov_yp / np.sqrt(denom)) if denom > 0 else 0.0


def pearson(labels, predictions) -> float:
  """Pearson correlation (GLUE STS-B); NaN if either input is constant."""
  y, p = _pair(labels, predictions)
  y, p = y.astype(np.float64), p.astype(np.float64)
  yc, pc = y - y.mean(), p - p.mean()
  denom = np.sqrt(np.sum(yc * yc) * np.sum(pc * pc))
  if denom == 0:
    return float("nan")
  return float(np.clip(np.sum(yc * pc) / denom, -1.0, 1.0))


def spearman(labels, predictions) -> float:
  """Spearman rank correlation (ties get their average rank); NaN if an input is constant."""
  from scipy.stats import rankdata

  y, p = _pair(labels, predictions)
  return pearson(rankdata(y), rankdata(p))


def multirc_scores(labels, predictions, groups: Sequence) -> dict[str, float]:
  """SuperGLUE MultiRC scores over answer options.

  ``labels``/``predictions``: ``[N]`` 0/1 per answer option; ``groups``: ``[N]`` hashable
  question ids (e.g. ``(paragraph_idx, question_idx)``). Returns
  ``{'f1a': F1 over all options, 'em': fraction of questions with every option right,
  'f1m': mean over questions of the per-question macro F1}``.
  """
  y, p = _pair(labels, predictions)
  if len(groups) != y.size:
    raise ValueError(f"groups has {len(groups)} entries for {y.size} predictions.")
  by_q: dict = OrderedDict()
  for i, g in enumerate(groups):
    by_q.setdefault(g if not isinstance(g, list) else tuple(g), []).append(i)
  ems, f1ms = [], []
  for idx in by_q.values():
    ems.append(float(np.all(y[idx] == p[idx])))
    f1ms.append(f1_macro(y[idx], p[idx]))
  return {"f1a": f1(y, p), "em": float(np.mean(ems)), "f1m": float(np.mean(f1ms))}


def rouge_l(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
  """Mean Rouge-L F-measure x 100 with Porter stemming (the SNI metric).

  ``references[i]`` is one string or a list of strings; with several references the
  best-scoring one counts (max over ground truths, as the Tk-Instruct/SNI evaluation does).
  """
  from rouge_score import rouge_scorer  # lazy: optional dependency

  if len(predictions) != len(references):
    raise ValueError(
      f"predictions and references differ in length ({len(predictions)} vs {len(references)})."
    )
  if not predictions:
    raise ValueError("Rouge-L needs at least one prediction.")
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  total = 0.0
  for pred, refs in zip(predictions, references):
    refs = [refs] if isinstance(refs, str) else list(refs)
    total += max(scorer.score(r, pred)["rougeL"].fmeasure for r in refs)
  return 100.0 * total / len(predictions)


METRIC_FNS = {
  "accuracy": accuracy,
  "f1": f1,
  "f1_macro": f1_macro,
  "mcc": mcc,
  "pearson": pearson,
  "spearman": spearman,
}

# (result key, metric name) pairs averaged by the paper (docs/paper.md §5). The MNLI mismatched
# dev score is stored under the result key 'mnli_mm'.
GLUE_AVERAGE_COMPONENTS = (
  ("qqp", "f1"),
  ("qnli", "accuracy"),
  ("mrpc", "f1"),
  ("mnli", "accuracy"),
  ("mnli_mm", "accuracy"),
  ("stsb", "pearson"),
  ("sst2", "accuracy"),
  ("rte", "accuracy"),
  ("cola", "mcc"),
)
SUPERGLUE_AVERAGE_COMPONENTS = (
  ("boolq", "accuracy"),
  ("cb", "f1_macro"),
  ("copa", "accuracy"),
  ("multirc", "f1a"),
  ("rte", "accuracy"),
  ("wic", "accuracy"),
  ("wsc", "accuracy"),
)


def _average(task_metrics: Mapping[str, Mapping[str, float]], components) -> dict:
  used, missing = OrderedDict(), []
  for task, metric in components:
    value = task_metrics.get(task, {}).get(metric)
    if value is None:
      missing.append(f"{task}/{metric}")
    else:
      used[f"{task}/{metric}"] = float(value)
  avg = float(np.mean(list(used.values()))) if used else float("nan")
  return {"average": avg, "components": dict(used), "missing": missing}


def glue_average(task_metrics: Mapping[str, Mapping[str, float]]) -> dict:
  """The paper's GLUE score: mean of QQP F1, QNLI acc, MRPC F1, MNLI-m acc, MNLI-mm acc,
  STS-B Pearson, SST-2 acc, RTE acc, CoLA MCC, over those that are present.

  ``task_metrics``: ``{'cola': {'mcc': 0.4}, 'mnli': {'accuracy': ..}, 'mnli_mm':
  {'accuracy': ..}, ...}`` (values in whatever scale was passed in; no rescaling).
  Returns ``{'average': float (NaN if none present), 'components': {'cola/mcc': ..},
  'missing': ['qqp/f1', ...]}``.
  """
  return _average(task_metrics, GLUE_AVERAGE_COMPONENTS)


def superglue_average(task_metrics: Mapping[str, Mapping[str, float]]) -> dict:
  """The paper's SuperGLUE score: mean of BoolQ acc, CB macro-F1, COPA acc, MultiRC F1a,
  RTE acc, WiC acc, WSC acc over those present (ReCoRD excluded). Same return as
  :func:`glue_average`."""
  return _average(task_metrics, SUPERGLUE_AVERAGE_COMPONENTS)
