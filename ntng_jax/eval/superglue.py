"""SuperGLUE readers: the official jsonl files, or tensorflow-datasets.

Local layout: ``<data_dir>/<TASK upper>/{train,val}.jsonl`` (split keys ``'train'``,
``'dev'``). One JSON object per line, as in the official release:

* BoolQ ``question, passage, label (bool)``; CB / RTE ``premise, hypothesis, label (str)``;
* COPA ``premise, choice1, choice2, question ('cause'|'effect'), label (0|1)``: kept as four
  texts and trained as one 2-class classification (label = the right choice), with all four
  fields in the encoded sequence (the paper's code dropped the 3rd/4th, docs/paper.md §7.13);
* WiC ``word, sentence1, sentence2, label (bool)`` (+ character offsets, not used);
* WSC ``text, target: {span1_text, span2_text, span1_index, span2_index}, label (bool)``
  (tfds' flat ``span1_text``/``span2_text`` also accepted);
* MultiRC ``passage: {text, questions: [{question, idx, answers: [{text, idx, label}]}]}``:
  one example per answer option, texts ``(paragraph, question, answer)``,
  ``idx`` = answer idx, ``group`` = ``(paragraph idx, question idx)`` for F1a/EM.

Every record yields ``{'texts', 'label', 'idx', 'group'}`` (:class:`~ntng_jax.eval.tasks.Example`).
A line that is not JSON, lacks a field, or has a bad label raises ``ValueError`` naming the
file and line. Unlabelled (test) files can be read with ``require_labels=False`` (label -1).
"""

from __future__ import annotations

import json
from pathlib import Path

from ntng_jax.eval.tasks import (
  Example,
  TaskDataError,
  TaskSpec,
  get_task,
  local_file,
  parse_label,
  read_tfds,
)

__all__ = ["read_superglue_jsonl", "read_superglue"]


def _records(spec: TaskSpec, rec: dict) -> list[tuple[dict, tuple[int, int] | None]]:
  """Flatten one jsonl record into ``(fields, group)`` pairs with the spec's text fields."""
  if spec.name == "multirc":
    passage = rec["passage"]
    out = []
    for q in passage["questions"]:
      for a in q["answers"]:
        fields = {
          "paragraph": passage["text"],
          "question": q["question"],
          "answer": a["text"],
          "idx": a["idx"],
        }
        if "label" in a:
          fields["label"] = a["label"]
        out.append((fields, (int(rec["idx"]), int(q["idx"]))))
    return out
  if spec.name == "wsc" and "target" in rec:
    rec = {**rec, **rec["target"]}
  return [(rec, None)]


def read_superglue_jsonl(
  path: str | Path, task: str | TaskSpec, require_labels: bool = True
) -> list[Example]:
  """Read one SuperGLUE jsonl file of ``task`` (a SuperGLUE name or spec)."""
  spec = get_task(task, suite="superglue" if isinstance(task, str) and "/" not in task else None)
  if spec.suite != "superglue":
    raise TaskDataError(f"{spec.key} is not a SuperGLUE task.")
  path = Path(path)
  examples: list[Example] = []
  text = path.read_bytes().decode("utf-8-sig")
  for lineno, line in enumerate(text.split("\n"), start=1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
      if not isinstance(rec, dict):
        raise TaskDataError("the line is not a JSON object")
      flat = _records(spec, rec)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
      what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
      raise TaskDataError(f"{path}, line {lineno}: malformed {spec.key} record ({what}).") from None
    for fields, group in flat:
      missing = [f for f in spec.text_fields if not isinstance(fields.get(f), str)]
      if missing:
        raise TaskDataError(
          f"{path}, line {lineno}: missing text field(s) {missing} for {spec.key}."
        )
      if "label" in fields:
        try:
          label = parse_label(spec, fields["label"])
        except ValueError as e:
          raise TaskDataError(f"{path}, line {lineno}: {e} for {spec.key}.") from None
      elif require_labels:
        raise TaskDataError(f"{path}, line {lineno}: missing field 'label' for {spec.key}.")
      else:
        label = -1
      idx = fields.get("idx", len(examples))
      examples.append(
        Example(
          texts=tuple(fields[f] for f in spec.text_fields), label=label, idx=int(idx), group=group
        )
      )
  return examples


def read_superglue(
  task: str | TaskSpec,
  split: str = "train",
  data_dir: str | Path | None = None,
  source: str = "local",
) -> list[Example]:
  """Examples of a SuperGLUE ``task`` for ``split`` (``'train'``, ``'dev'``) from
  ``<data_dir>/<TASK>/{train,val}.jsonl`` (``source='local'``) or from tfds
  (``source='tfds'``, ``data_dir`` = tfds data dir)."""
  spec = get_task(task, suite="superglue")
  if source == "tfds":
    return read_tfds(spec, split, data_dir)
  return read_superglue_jsonl(local_file(spec, split, data_dir), spec)
