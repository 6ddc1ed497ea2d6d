"""Super-NaturalInstructions (SNI) data for T5 fine-tuning, as in nanoT5's ``task=ft``.

Layout: ``<data_dir>/tasks/<task>.json`` and ``<data_dir>/splits/default/test_tasks.txt``.

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
Split: tasks named in ``test_tasks.txt`` are test, every other task file is train.
**Fallback:** if no task file lands on the train side (e.g. only test tasks are present),
each task's instances are split instead: the first ``min(max_instances, n // 2)`` (file
order) are test, and up to ``max_instances`` of the remaining ones (seeded shuffle) are
train, so the two sides never share an instance.

Each example: ``{'source': str, 'target': first output, 'references': all outputs,
'task': task name}``.
"""
from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Callable, TypedDict

import numpy as np

__all__ = ["SNIExample", "read_sni_task", "read_test_task_names", "sni_source",
           "sni_examples", "load_sni"]


class SNIExample(TypedDict):
    source: str
    target: str
    references: list[str]
    task: str


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


def sni_source(task: dict, instance_input: str, num_pos_examples: int = 2,
               fits: Callable[[str], bool] | None = None) -> str:
    """The model input for one instance: definition + positive examples + the instance."""
    definition = task["Definition"]
    definition = definition[0] if isinstance(definition, list) else definition
    definition = _dot("Definition: " + definition.strip()) + "\n\n"
    task_input = ("Now complete the following example -\n"
                  + _dot(f"Input: {instance_input.strip()}") + "\nOutput: ")
    pos = []
    for i, ex in enumerate(task["Positive Examples"][:num_pos_examples]):
        s = (_dot(f" Positive Example {i + 1} -\nInput: {ex['input'].strip()}") + "\n"
             + _dot(f" Output: {ex['output'].strip()}") + "\n\n")
        if fits is not None and not fits(definition + " ".join(pos) + s + task_input):
            break
        pos.append(s)
    return definition + "".join(pos) + task_input


def sni_examples(task: dict, name: str, instances: list[dict], num_pos_examples: int = 2,
                 fits: Callable[[str], bool] | None = None) -> list[SNIExample]:
    """Examples for the given ``instances`` (``{'input', 'output': [str, ...]}``) of ``task``."""
    out = []
    for inst in instances:
        refs = inst["output"] if isinstance(inst["output"], list) else [inst["output"]]
        out.append(SNIExample(source=sni_source(task, inst["input"], num_pos_examples, fits),
                              target=refs[0], references=list(refs), task=name))
    return out


def load_sni(data_dir: str | Path, max_instances: int = 100, num_pos_examples: int = 2,
             seed: int = 0, fits: Callable[[str], bool] | None = None,
             ) -> dict[str, list[SNIExample]]:
    """All task files under ``<data_dir>/tasks`` split into ``{'train': [...], 'test': [...]}``.

    See the module docstring for instance selection and the single-side fallback.
    """
    data_dir = Path(data_dir)
    test_names = set(read_test_task_names(data_dir / "splits" / "default" / "test_tasks.txt"))
    paths = sorted((data_dir / "tasks").glob("*.json"))
    if not paths:
        raise ValueError(f"{data_dir / 'tasks'}: no SNI task files (*.json) found.")
    tasks = {p.stem: read_sni_task(p) for p in paths}
    fallback = all(name in test_names for name in tasks)
    rng = np.random.default_rng(seed)
    split: dict[str, list[SNIExample]] = {"train": [], "test": []}
    for name, task in tasks.items():
        inst = [i for i in task["Instances"] if i.get("output")]
        if fallback:
            n_test = min(max_instances, len(inst) // 2)
            test, rest = inst[:n_test], inst[n_test:]
            train = [rest[j] for j in rng.permutation(len(rest))[:max_instances]]
        elif name in test_names:
            test, train = inst[:max_instances], []
        else:
            test, train = [], [inst[j] for j in rng.permutation(len(inst))[:max_instances]]
        split["test"] += sni_examples(task, name, test, num_pos_examples, fits)
        split["train"] += sni_examples(task, name, train, num_pos_examples, fits)
    return split
