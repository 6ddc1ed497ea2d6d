"""GLUE readers: the original GLUE TSV files, or tensorflow-datasets.

Local layout: ``<data_dir>/<TaskSpec.dir_name>/<TaskSpec.files[split]>``, e.g.
``glue/CoLA/train.tsv``, ``glue/STS-B/dev.tsv``, ``glue/MNLI/dev_mismatched.tsv``.

Format handled (as GLUE ships it): tab-separated, no quoting (quote characters are text),
UTF-8 with an optional BOM (MRPC's header starts with one). Every file has a header row
except CoLA, whose 4 columns are ``source, label, original_mark, sentence``. Text and label
columns are found by header name (MRPC ``#1 String``/``#2 String``/``Quality``, STS-B's 10
columns with a float ``score``, RTE/WNLI ``index, sentence1, sentence2, label``, ...).
Every row must have as many columns as the header; a wrong column count or a bad label
raises ``ValueError`` naming the file and the 1-based line.

Each example is ``{'texts': (text, ...), 'label': int | float, 'idx': row number from 0,
'group': None}`` (see :class:`ntng_jax.eval.tasks.Example`).
"""

from __future__ import annotations

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

__all__ = ["read_glue_tsv", "read_glue"]


def _lines(path: Path) -> list[str]:
  text = path.read_bytes().decode("utf-8-sig")
  # Split on '\n' only: str.splitlines would also split on \x0b, \x1c, \u2028 ... inside text.
  lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
  if lines and lines[-1] == "":
    lines.pop()
  return lines


def read_glue_tsv(path: str | Path, task: str | TaskSpec) -> list[Example]:
  """Read one GLUE TSV file of ``task`` (a GLUE task name or spec). See module docstring."""
  spec = get_task(task, suite="glue" if isinstance(task, str) and "/" not in task else None)
  if spec.suite != "glue":
    raise TaskDataError(f"{spec.key} is not a GLUE task.")
  path = Path(path)
  lines = _lines(path)
  if spec.tsv_header is not None:
    header, first_line = list(spec.tsv_header), 1
  else:
    if not lines:
      raise TaskDataError(f"{path}: the file is empty; a header row was expected.")
    header, first_line = lines[0].split("\t"), 2
    lines = lines[1:]
  missing = [c for c in spec.tsv_columns if c not in header]
  if missing:
    raise TaskDataError(
      f"{path}, line 1: the header lacks column(s) {missing} needed for "
      f"{spec.key} (header: {header})."
    )
  cols = [header.index(c) for c in spec.tsv_columns]
  text_cols, label_col = cols[:-1], cols[-1]
  examples: list[Example] = []
  for i, line in enumerate(lines):
    lineno = first_line + i
    row = line.split("\t")
    if len(row) != len(header):
      raise TaskDataError(
        f"{path}, line {lineno}: expected {len(header)} tab-separated columns, found {len(row)}."
      )
    try:
      label = parse_label(spec, row[label_col])
    except ValueError as e:
      raise TaskDataError(f"{path}, line {lineno}: {e} for {spec.key}.") from None
    examples.append(Example(texts=tuple(row[c] for c in text_cols), label=label, idx=i, group=None))
  return examples


def read_glue(
  task: str | TaskSpec,
  split: str = "train",
  data_dir: str | Path | None = None,
  source: str = "local",
) -> list[Example]:
  """Examples of a GLUE ``task`` for ``split`` (``'train'``, ``'dev'``; MNLI also
  ``'dev_mm'``) from ``<data_dir>/<dir_name>/<file>`` (``source='local'``) or from tfds
  (``source='tfds'``, ``data_dir`` = tfds data dir)."""
  spec = get_task(task, suite="glue")
  if source == "tfds":
    return read_tfds(spec, split, data_dir)
  return read_glue_tsv(local_file(spec, split, data_dir), spec)
