"""Downstream evaluation data and metrics: GLUE, SuperGLUE (BERT) and SNI (T5).

Nothing here imports tensorflow, seqio or tensorflow_datasets at import time; tfds is
imported inside :func:`read_tfds` only.

Typical use::

    spec = get_task("sst2")
    train = load_examples(spec, "train", data_dir=".../data/glue")
    batch_arrays = encode_classification(train, tokenizer, 128, spec.num_classes)
    for batch in iterate_batches(batch_arrays, 16, rng=0, drop_last=True): ...
    scores = compute_metrics(spec, labels, predictions)      # {'accuracy': ...}
    glue_average({"sst2": scores, ...})                       # paper's 9-number mean
"""

from ntng_jax.eval.encoding import (
  Tokenizer,
  encode_classification,
  encode_seq2seq,
  encode_targets,
  iterate_batches,
  shift_right,
  target_width,
  truncate_longest_first,
)
from ntng_jax.eval.glue import read_glue, read_glue_tsv
from ntng_jax.eval.heads import ClassificationHead, classification_loss, predictions_from_logits
from ntng_jax.eval.metrics import (
  GLUE_AVERAGE_COMPONENTS,
  SUPERGLUE_AVERAGE_COMPONENTS,
  accuracy,
  f1,
  f1_macro,
  glue_average,
  mcc,
  multirc_scores,
  pearson,
  rouge_l,
  spearman,
  superglue_average,
)
from ntng_jax.eval.sni import (
  SNIExample,
  SNISplit,
  draw_targets,
  load_sni,
  read_sni_task,
  read_test_task_names,
  sni_examples,
  sni_source,
  split_tasks,
)
from ntng_jax.eval.sni_scoring import paper_references, score_sni
from ntng_jax.eval.superglue import read_superglue, read_superglue_jsonl
from ntng_jax.eval.task_data import load_examples
from ntng_jax.eval.tasks import (
  GLUE_TASKS,
  SUPERGLUE_TASKS,
  Example,
  TaskSpec,
  compute_metrics,
  get_task,
  parse_label,
  read_tfds,
  task_names,
)

__all__ = [
  # tasks
  "TaskSpec",
  "Example",
  "GLUE_TASKS",
  "SUPERGLUE_TASKS",
  "get_task",
  "task_names",
  "compute_metrics",
  "parse_label",
  "load_examples",
  "read_tfds",
  # readers
  "read_glue",
  "read_glue_tsv",
  "read_superglue",
  "read_superglue_jsonl",
  "SNIExample",
  "SNISplit",
  "load_sni",
  "read_sni_task",
  "read_test_task_names",
  "sni_examples",
  "sni_source",
  "split_tasks",
  "draw_targets",
  # metrics
  "accuracy",
  "f1",
  "f1_macro",
  "mcc",
  "pearson",
  "spearman",
  "multirc_scores",
  "rouge_l",
  "score_sni",
  "paper_references",
  "glue_average",
  "superglue_average",
  "GLUE_AVERAGE_COMPONENTS",
  "SUPERGLUE_AVERAGE_COMPONENTS",
  # encoding and heads
  "Tokenizer",
  "encode_classification",
  "encode_seq2seq",
  "encode_targets",
  "target_width",
  "shift_right",
  "truncate_longest_first",
  "iterate_batches",
  "ClassificationHead",
  "classification_loss",
  "predictions_from_logits",
]
