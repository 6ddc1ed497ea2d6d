"""One entry point to a GLUE or SuperGLUE task's examples, whatever the suite and the source.

Local files are read by `glue` (TSV) or `superglue` (jsonl), tfds by `tasks.read_tfds`.
"""

from __future__ import annotations

from ntng_jax.eval.glue import read_glue
from ntng_jax.eval.superglue import read_superglue
from ntng_jax.eval.tasks import Example, TaskDataError, TaskSpec, get_task

__all__ = ["load_examples"]


def load_examples(
  task: str | TaskSpec,
  split: str = "train",
  data_dir=None,
  source: str = "local",
  suite: str | None = None,
) -> list[Example]:
  """Examples of ``task``/``split`` from local files (``source='local'``; ``data_dir`` is
  the suite directory, e.g. ``.../data/glue``) or from tfds (``source='tfds'``; ``data_dir``
  is the tfds data dir)."""
  spec = get_task(task, suite)
  if source not in ("local", "tfds"):
    raise TaskDataError(f"Unknown source {source!r}; use 'local' or 'tfds'.")
  read = read_glue if spec.suite == "glue" else read_superglue
  return read(spec, split, data_dir, source)
