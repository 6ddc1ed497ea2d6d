"""Registry of the GLUE and SuperGLUE fine-tuning tasks (:class:`TaskSpec`).

Names are lower-case and unique within a suite. ``rte`` exists in both suites, so it must be
written ``glue/rte`` or ``superglue/rte`` (or given ``suite=``); every other name can be used
alone. Aliases: case, ``-`` and ``_`` are ignored (``SST-2`` = ``sst2``), ``super_glue`` =
``superglue``, and ``wsc.fixed`` = ``wsc`` (the paper evaluates WSC.fixed).

Label indices follow tensorflow-datasets, so local files and tfds give the same labels:
GLUE RTE/QNLI 0 = entailment, 1 = not_entailment; MNLI 0 = entailment, 1 = neutral,
2 = contradiction; SuperGLUE CB 0 = entailment, 1 = contradiction, 2 = neutral; SuperGLUE
RTE 0 = entailment, 1 = not_entailment; booleans map to 0/1.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence, TypedDict

import numpy as np

from ntng_jax.errors import UserError
from ntng_jax.eval import metrics as M

__all__ = [
  "TaskDataError",
  "Example",
  "TaskSpec",
  "GLUE_TASKS",
  "SUPERGLUE_TASKS",
  "get_task",
  "task_names",
  "compute_metrics",
  "parse_label",
  "read_tfds",
  "local_file",
]


class TaskDataError(UserError, ValueError):
  """A task name, split or data directory is wrong, or a data file is malformed; the message
  names the file and line where there is one."""


class Example(TypedDict):
  """One classification/regression example, as every reader returns it.

  texts: all text fields, in ``TaskSpec.text_fields`` order; label: class id (int; -1 when
  the split is unlabelled) or a float score (regression); idx: the example's index in its
  split (MultiRC: the answer-option id); group: MultiRC ``(paragraph_idx, question_idx)``,
  else None.
  """

  texts: tuple[str, ...]
  label: int | float
  idx: int
  group: tuple[int, int] | None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One fine-tuning task.

  name: registry name (``'cola'``); suite: ``'glue'`` or ``'superglue'``.
  text_fields: feature names (tfds / SuperGLUE jsonl) of the texts, in encoding order;
    every field is kept (docs/paper.md §7.13).
  num_classes: number of labels; 1 = regression (STS-B).
  metrics: metric names computed on the dev set; selection_metric: the one used to pick
    the best epoch (the paper keeps each metric's max over epochs; this is the one that
    enters the GLUE/SuperGLUE average).
  dir_name: directory under the suite's data dir (``CoLA``, ``SST-2``, ``CB``).
  files: split -> local file name, e.g. ``{'train': 'train.tsv', 'dev': 'dev.tsv'}``.
  tfds_name: e.g. ``'glue/cola'``; tfds_splits: split -> tfds split name.
  label_names: string labels of the files in index order (None: labels are numbers/bools).
  tsv_columns: GLUE TSV header names of the text columns and the label column (last);
    tsv_header: the column names of a header-less TSV (only CoLA), else None.
  """

  name: str
  suite: str
  text_fields: tuple[str, ...]
  num_classes: int
  metrics: tuple[str, ...]
  selection_metric: str
  dir_name: str
  files: Mapping[str, str]
  tfds_name: str
  tfds_splits: Mapping[str, str]
  label_names: tuple[str, ...] | None = None
  tsv_columns: tuple[str, ...] = ()
  tsv_header: tuple[str, ...] | None = None

  @property
  def key(self) -> str:
    """Qualified name, e.g. ``'glue/rte'``."""
    return f"{self.suite}/{self.name}"

  @property
  def is_regression(self) -> bool:
    return self.num_classes == 1


_GLUE_FILES = {"train": "train.tsv", "dev": "dev.tsv"}
_GLUE_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
_SG_FILES = {"train": "train.jsonl", "dev": "val.jsonl"}
_NLI2 = ("entailment", "not_entailment")


def _glue(
  name,
  dir_name,
  fields,
  tsv_columns,
  num_classes=2,
  metrics=("accuracy",),
  label_names=None,
  files=_GLUE_FILES,
  splits=_GLUE_SPLITS,
  tsv_header=None,
):
  return TaskSpec(
    name=name,
    suite="glue",
    text_fields=fields,
    num_classes=num_classes,
    metrics=metrics,
    selection_metric=metrics[0],
    dir_name=dir_name,
    files=dict(files),
    tfds_name=f"glue/{name}",
    tfds_splits=dict(splits),
    label_names=label_names,
    tsv_columns=tsv_columns,
    tsv_header=tsv_header,
  )


def _sg(name, fields, num_classes=2, metrics=("accuracy",), label_names=None, tfds=None):
  return TaskSpec(
    name=name,
    suite="superglue",
    text_fields=fields,
    num_classes=num_classes,
    metrics=metrics,
    selection_metric=metrics[0],
    dir_name=name.upper(),
    files=dict(_SG_FILES),
    tfds_name=f"super_glue/{tfds or name}",
    tfds_splits=dict(_GLUE_SPLITS),
    label_names=label_names,
  )


GLUE_TASKS: dict[str, TaskSpec] = {
  t.name: t
  for t in [
    _glue(
      "cola",
      "CoLA",
      ("sentence",),
      ("sentence", "label"),
      metrics=("mcc", "accuracy"),
      tsv_header=("source", "label", "original_mark", "sentence"),
    ),
    _glue("sst2", "SST-2", ("sentence",), ("sentence", "label")),
    _glue(
      "mrpc",
      "MRPC",
      ("sentence1", "sentence2"),
      ("#1 String", "#2 String", "Quality"),
      metrics=("f1", "accuracy"),
    ),
    _glue(
      "qqp",
      "QQP",
      ("question1", "question2"),
      ("question1", "question2", "is_duplicate"),
      metrics=("f1", "accuracy"),
    ),
    _glue(
      "stsb",
      "STS-B",
      ("sentence1", "sentence2"),
      ("sentence1", "sentence2", "score"),
      num_classes=1,
      metrics=("pearson", "spearman"),
    ),
    # MNLI: 'dev' is matched; the mismatched dev set is the split 'dev_mm' (result key mnli_mm).
    _glue(
      "mnli",
      "MNLI",
      ("premise", "hypothesis"),
      ("sentence1", "sentence2", "gold_label"),
      num_classes=3,
      label_names=("entailment", "neutral", "contradiction"),
      files={"train": "train.tsv", "dev": "dev_matched.tsv", "dev_mm": "dev_mismatched.tsv"},
      splits={"train": "train", "dev": "validation_matched", "dev_mm": "validation_mismatched"},
    ),
    _glue(
      "qnli", "QNLI", ("question", "sentence"), ("question", "sentence", "label"), label_names=_NLI2
    ),
    _glue(
      "rte",
      "RTE",
      ("sentence1", "sentence2"),
      ("sentence1", "sentence2", "label"),
      label_names=_NLI2,
    ),
    _glue("wnli", "WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2", "label")),
  ]
}

# COPA is encoded as one 2-class sequence classification over all four fields
# (premise, choice1, choice2, question), label = index of the right choice; see encoding.py.
SUPERGLUE_TASKS: dict[str, TaskSpec] = {
  t.name: t
  for t in [
    _sg("boolq", ("question", "passage")),
    _sg(
      "cb",
      ("premise", "hypothesis"),
      num_classes=3,
      metrics=("f1_macro", "accuracy"),
      label_names=("entailment", "contradiction", "neutral"),
    ),
    _sg("copa", ("premise", "choice1", "choice2", "question")),
    _sg("multirc", ("paragraph", "question", "answer"), metrics=("f1a", "em", "f1m")),
    _sg("rte", ("premise", "hypothesis"), label_names=_NLI2),
    _sg("wic", ("sentence1", "sentence2", "word")),
    _sg("wsc", ("text", "span1_text", "span2_text"), tfds="wsc.fixed"),
  ]
}

_SUITES = {"glue": GLUE_TASKS, "superglue": SUPERGLUE_TASKS}


def task_names() -> list[str]:
  """All qualified names, e.g. ``['glue/cola', ..., 'superglue/wsc']``."""
  return [f"{s}/{n}" for s, tasks in _SUITES.items() for n in tasks]


def _norm(s: str) -> str:
  s = s.strip().lower().replace("-", "").replace("_", "")
  return {"wsc.fixed": "wsc"}.get(s, s)


def get_task(name: str | TaskSpec, suite: str | None = None) -> TaskSpec:
  """Look up a task by ``name`` (``'cola'``, ``'SST-2'``, ``'superglue/rte'``).

  Raises ``ValueError`` (one sentence listing the valid names) for unknown or ambiguous names.
  """
  if isinstance(name, TaskSpec):
    return name
  raw = str(name)
  if "/" in raw:
    suite, raw = raw.split("/", 1)
  if suite is not None and _norm(suite) not in _SUITES:
    raise TaskDataError(f"Unknown suite {suite!r}; valid suites are: glue, superglue.")
  wanted = [_SUITES[_norm(suite)]] if suite is not None else list(_SUITES.values())
  hits = [tasks[_norm(raw)] for tasks in wanted if _norm(raw) in tasks]
  if len(hits) == 1:
    return hits[0]
  if len(hits) > 1:
    raise TaskDataError(
      f"Task name {name!r} is ambiguous; use one of: " + ", ".join(h.key for h in hits) + "."
    )
  raise TaskDataError(f"Unknown task {name!r}; valid names are: " + ", ".join(task_names()) + ".")


def compute_metrics(
  task: str | TaskSpec, labels, predictions, groups: Sequence | None = None
) -> dict[str, float]:
  """All of ``task.metrics`` for ``[N]`` labels and predictions (class ids, or floats for
  regression). MultiRC needs ``groups`` (the examples' ``'group'`` question ids)."""
  spec = get_task(task)
  if spec.name == "multirc" and spec.suite == "superglue":
    if groups is None:
      raise ValueError("MultiRC metrics need the question ids passed as groups.")
    return M.multirc_scores(labels, predictions, groups)
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  return {m: M.METRIC_FNS[m](labels, predictions) for m in spec.metrics}


def parse_label(spec: TaskSpec, value: Any) -> int | float:
  """Convert a raw label (string name, bool, number, numeric string) into an int class id
  or a float score. Raises ``ValueError`` for a label outside the task's label set."""
  if isinstance(value, bytes):
    value = value.decode("utf-8")
  if spec.is_regression:
    if isinstance(value, bool):
      raise TaskDataError(f"bad regression label {value!r}")
    return float(value)
  if isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false")):
    label = int(value is True or str(value).lower() == "true")
  elif spec.label_names is not None and isinstance(value, str) and value in spec.label_names:
    label = spec.label_names.index(value)
  else:
    try:
      label = int(value)
    except (TypeError, ValueError):
      label = None
    if label is None or float(value) != label:
      raise TaskDataError(f"bad label {value!r}")
  if not (label == -1 or 0 <= label < spec.num_classes):
    raise TaskDataError(f"label {value!r} is outside 0..{spec.num_classes - 1}")
  return label


def _text(v: Any) -> str:
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def local_file(spec: TaskSpec, split: str, data_dir) -> Path:
  """``<data_dir>/<spec.dir_name>/<spec.files[split]>``; a ``TaskDataError`` (a user error) for a
  split without a local file or a missing ``data_dir``."""
  if split not in spec.files:
    raise TaskDataError(
      f"{spec.key} has no local split {split!r}; valid splits are: " + ", ".join(spec.files) + "."
    )
  if data_dir is None:
    raise TaskDataError(
      f"Reading local {spec.key} files needs data_dir (the {spec.suite}/ directory)."
    )
  return Path(data_dir) / spec.dir_name / spec.files[split]


def read_tfds(
  task: str | TaskSpec, split: str = "train", data_dir: str | None = None, suite: str | None = None
) -> list[Example]:
  """Examples of ``task`` from tensorflow-datasets (``tfds.load(spec.tfds_name,
  split=spec.tfds_splits[split], data_dir=data_dir)``). ``split`` is one of the spec's
  split keys (``'train'``, ``'dev'``, ``'test'``, MNLI ``'dev_mm'``) or a raw tfds split
  string. tensorflow_datasets is imported here, never at module import time.
  """
  import tensorflow_datasets as tfds  # lazy: heavy, optional

  spec = get_task(task, suite)
  ds = tfds.load(spec.tfds_name, split=spec.tfds_splits.get(split, split), data_dir=data_dir)
  out: list[Example] = []
  for i, rec in enumerate(tfds.as_numpy(ds)):
    idx, group = rec.get("idx", i), None
    if isinstance(idx, dict):  # MultiRC: {'paragraph', 'question', 'answer'}
      group = (int(idx["paragraph"]), int(idx["question"]))
      idx = idx["answer"]
    label = rec["label"].item() if hasattr(rec["label"], "item") else rec["label"]
    out.append(
      Example(
        texts=tuple(_text(rec[f]) for f in spec.text_fields),
        label=parse_label(spec, label),
        idx=int(idx),
        group=group,
      )
    )
  return out
