"""Super-NaturalInstructions (SNI) data for T5 fine-tuning, as in nanoT5's ``task=ft``.

Layout: ``<data_dir>/tasks/<task>.json``, ``<data_dir>/splits/default/test_tasks.txt`` and,
optionally, ``<data_dir>/splits/default/train_tasks.txt``.

Source text (the DataCollatorForNI format with ``add_task_definition=True,
num_pos_examples=2, num_neg_examples=0, add_explanation=False, add_task_name=False``)::

    Definition: <definition>.\\n\\n
     Positive Example 1 -\\nInput: <input>.\\n Output: <output>.\\n\\n
     Positive Example 2 -\\nInput: <input>.\\n Output: <output>.\\n\\n
    Now complete the following example -\\nInput: <instance input>.\\nOutput:<space>

(a "." is added only where the text does not already end in punctuation). When a
``fits(text) -> bool`` length check is given, a positive example that would make the source
too long is left out, as the original collator does with its tokenizer; the source itself is
truncated later, at encoding time.

Instances (as nanoT5's ``ni_dataset.py``): a test task keeps its first ``max_instances``
instances (file order); a train task keeps ``max_instances`` drawn by a seeded shuffle.
Split (:func:`split_tasks`), from ``<data_dir>/splits/default/``:

* ``train_tasks.txt`` present (the official split: 756 train / 119 test tasks): train on
  exactly the listed tasks, test on the listed test tasks; every listed train task must have
  its file, task files named in neither list (SNI's ``excluded_tasks.txt``: non-English, or
  sharing a source dataset with a test task) are ignored (rule ``'train_tasks.txt'``).
* otherwise: tasks named in ``test_tasks.txt`` are test, every other task file is train
  (rule ``'not in test_tasks.txt'``).
* **fallback:** without ``train_tasks.txt``, if no task file lands on the train side (e.g.
  only test tasks are present), each task's instances are split instead: the first
  ``min(max_instances, n // 2)`` (file order) are test, and up to ``max_instances`` of the
  remaining ones (seeded shuffle) are train, so the two sides never share an instance (rule
  ``'instance split'``).

Test tasks that ``test_tasks.txt`` names but that have no file are skipped (``missing_test``).

Each example: ``{'source': str, 'target': first output, 'references': all outputs,
'task': task name}``. Fine-tuning trains on one reference per example drawn anew every epoch
(:func:`draw_targets`), as the original collator's ``random.choice`` does for every batch.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Callable, NamedTuple, TypedDict

import numpy as np

__all__ = [
  "SNIExample",
  "SNISplit",
  "read_sni_task",
  "read_test_task_names",
  "split_tasks",
  "sni_source",
  "sni_examples",
  "load_sni",
  "draw_targets",
]

SPLIT_DIR = ("splits", "default")


class SNIExample(TypedDict):
  source: str
  target: str
  references: list[str]
  task: str


class SNISplit(NamedTuple):
  """Which task files are trained on and which are tested, and the rule that decided it."""

  train: list[str]
  test: list[str]
  rule: str  # 'train_tasks.txt' | 'not in test_tasks.txt' | 'instance split'
  missing_test: list[str]  # tasks test_tasks.txt names that have no file (not scored)


def _dot(s: str) -> str:
  return s if s and s[-1] in string.punctuation else s + "."


def read_sni_task(path: str | Path) -> dict:
  """Parse one SNI task json; raises ``ValueError`` naming the file if it is not a task."""
  path = Path(path)
  try:
    task = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}).") from None
  missing = [k for k in ("Definition", "Positive Examples", "Instances") if k not in task]
  if missing:
    raise ValueError(f"{path}: not an SNI task file (missing {missing}).")
  return task


def read_test_task_names(path: str | Path) -> list[str]:
  """Task names of a split file (one per line, blanks ignored)."""
  return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]


def sni_source(
  task: dict,
  instance_input: str,
  num_pos_examples: int = 2,
  fits: Callable[[str], bool] | None = None,
) -> str:
  """The model input for one instance: definition + positive examples + the instance."""
  definition = task["Definition"]
  definition = definition[0] if isinstance(definition, list) else definition
  definition = _dot("Definition: " + definition.strip()) + "\n\n"
  task_input = (
    "Now complete the following example -\n"
    + _dot(f"Input: {instance_input.strip()}")
    + "\nOutput: "
  )
  pos = []
  for i, ex in enumerate(task["Positive Examples"][:num_pos_examples]):
    s = (
      _dot(f" Positive Example {i + 1} -\nInput: {ex['input'].strip()}")
      + "\n"
      + _dot(f" Output: {ex['output'].strip()}")
      + "\n\n"
    )
    if fits is not None and not fits(definition + " ".join(pos) + s + task_input):
      break
    pos.append(s)
  return definition + "".join(pos) + task_input


def sni_examples(
  task: dict,
  name: str,
  instances: list[dict],
  num_pos_examples: int = 2,
  fits: Callable[[str], bool] | None = None,
) -> list[SNIExample]:
  """Examples for the given ``instances`` (``{'input', 'output': [str, ...]}``) of ``task``."""
  out = []
  for inst in instances:
    refs = inst["output"] if isinstance(inst["output"], list) else [inst["output"]]
    out.append(
      SNIExample(
        source=sni_source(task, inst["input"], num_pos_examples, fits),
        target=refs[0],
        references=list(refs),
        task=name,
      )
    )
  return out


def split_tasks(data_dir: str | Path, names: list[str]) -> SNISplit:
  """Train and test task names among the task files ``names`` (see the module docstring).

  Raises ``ValueError`` (one sentence) when ``train_tasks.txt`` names a task without a file
  under ``tasks/`` or a task that ``test_tasks.txt`` also names.
  """
  split_dir = Path(data_dir).joinpath(*SPLIT_DIR)
  test_names = read_test_task_names(split_dir / "test_tasks.txt")
  available = set(names)
  missing_test = [t for t in test_names if t not in available]
  train_file = split_dir / "train_tasks.txt"
  if train_file.is_file():
    train_names = read_test_task_names(train_file)
    missing = [t for t in train_names if t not in available]
    if missing:
      raise ValueError(
        f"{train_file} lists {len(missing)} task(s) with no file under "
        f"{Path(data_dir) / 'tasks'} (e.g. {', '.join(missing[:3])}); copy the full SNI "
        f"tasks/ directory there, or remove train_tasks.txt to train on every task file "
        f"not in test_tasks.txt."
      )
    both = sorted(set(train_names) & set(test_names))
    if both:
      raise ValueError(
        f"{train_file} and test_tasks.txt both list {len(both)} task(s) "
        f"(e.g. {', '.join(both[:3])}); a task must be on one side only."
      )
    return SNISplit(
      train=list(dict.fromkeys(train_names)),
      test=[t for t in names if t in set(test_names)],
      rule="train_tasks.txt",
      missing_test=missing_test,
    )
  test = [t for t in names if t in set(test_names)]
  train = [t for t in names if t not in set(test_names)]
  if not train:
    return SNISplit(train=list(names), test=list(names), rule="instance split", missing_test=[])
  return SNISplit(train=train, test=test, rule="not in test_tasks.txt", missing_test=missing_test)


def load_sni(
  data_dir: str | Path,
  max_instances: int = 100,
  num_pos_examples: int = 2,
  seed: int = 0,
  fits: Callable[[str], bool] | None = None,
) -> dict[str, list[SNIExample]]:
  """Task files under ``<data_dir>/tasks`` split into ``{'train': [...], 'test': [...]}``.

  See the module docstring (and :func:`split_tasks`) for the task split, instance selection
  and the single-side fallback.
  """
  data_dir = Path(data_dir)
  paths = sorted((data_dir / "tasks").glob("*.json"))
  if not paths:
    raise ValueError(f"{data_dir / 'tasks'}: no SNI task files (*.json) found.")
  names = [p.stem for p in paths]
  split_names = split_tasks(data_dir, names)
  train_set, test_set = set(split_names.train), set(split_names.test)
  tasks = {p.stem: read_sni_task(p) for p in paths if p.stem in train_set | test_set}
  fallback = split_names.rule == "instance split"
  rng = np.random.default_rng(seed)
  split: dict[str, list[SNIExample]] = {"train": [], "test": []}
  for name, task in tasks.items():
    inst = [i for i in task["Instances"] if i.get("output")]
    if fallback:
      n_test = min(max_instances, len(inst) // 2)
      test, rest = inst[:n_test], inst[n_test:]
      train = [rest[j] for j in rng.permutation(len(rest))[:max_instances]]
    elif name in test_set:
      test, train = inst[:max_instances], []
    else:
      test, train = [], [inst[j] for j in rng.permutation(len(inst))[:max_instances]]
    split["test"] += sni_examples(task, name, test, num_pos_examples, fits)
    split["train"] += sni_examples(task, name, train, num_pos_examples, fits)
  return split


def draw_targets(examples: list[SNIExample], rng: np.random.Generator) -> list[str]:
  """One of each example's ``references``, drawn uniformly with ``rng`` (in example order)."""
  out = []
  for ex in examples:
    refs = list(ex.get("references") or [ex["target"]])
    out.append(refs[int(rng.integers(len(refs)))])
  return out
