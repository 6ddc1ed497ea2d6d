"""Fine-tune a pre-trained checkpoint on a downstream suite and score it (docs/paper.md §5).

  python -m launch.finetune --pretrained=runs/bert-base-baseline-seed0 --suite=glue \
      --data_dir=../shared/data/glue
  python -m launch.finetune --pretrained=/tmp/ft_bert --suite=glue --tasks=sst2,rte --epochs=1 \
      --data_dir=../shared/data/glue --max_train_examples=500
  python -m launch.finetune --pretrained=/tmp/ft_t5 --suite=sni --data_dir=../shared/data/sni \
      --max_source_len=256 --max_target_len=32

BERT checkpoints take glue / superglue, T5 checkpoints take sni. Without --data_dir the GLUE and
SuperGLUE tasks come from tensorflow-datasets (SNI always needs --data_dir). The paper's recipe
is the default; the flags below override it. Results go to WORKDIR/finetune/<suite>.json (per
task: per-epoch dev metrics, the best of each metric over epochs, the majority-class rate; the
paper's average; for SNI both Rouge-L figures, the paper's and SNI's official one), and a
Markdown table is printed at the end.
"""

import json
import math
import os
import sys

from absl import flags

from launch import common

_PRETRAINED = flags.DEFINE_string(
  "pretrained", None, "Pre-training workdir (launch.pretrain --workdir)."
)
_SUITE = flags.DEFINE_string("suite", None, "glue | superglue (BERT) | sni (T5).")
_TASKS = flags.DEFINE_list(
  "tasks",
  None,
  "Tasks to run (default: every task of the suite; for sni: task file names without .json).",
)
_DATA_DIR = flags.DEFINE_string(
  "data_dir",
  None,
  "The suite's data directory (e.g. shared/data/glue); default: tensorflow-datasets.",
)
_TFDS_DIR = flags.DEFINE_string(
  "tfds_data_dir", None, "tensorflow-datasets data dir (when --data_dir is not given)."
)
_OUTPUT = flags.DEFINE_string(
  "output", None, "Result file (default PRETRAINED/finetune/<suite>.json)."
)
_EPOCHS = flags.DEFINE_integer("epochs", None, "Epochs (paper: GLUE 5, SuperGLUE 10, SNI 2).")
_LR = flags.DEFINE_float(
  "learning_rate", None, "Peak learning rate (paper: GLUE 4e-5, SuperGLUE 5e-5, SNI 5e-5)."
)
_BATCH = flags.DEFINE_integer("batch_size", None, "Training batch size (paper: 16; SNI 8).")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch_size", None, "Evaluation batch size.")
_SEED = flags.DEFINE_integer("seed", None, "Seed of the head init, dropout and shuffling.")
_MAX_TRAIN = flags.DEFINE_integer(
  "max_train_examples",
  None,
  "Use a seeded random subset of this many training examples per task (0 = all).",
)
_MAX_EVAL = flags.DEFINE_integer(
  "max_eval_examples", None, "Score only the first this many dev/test examples per task (0 = all)."
)
_MAX_LENGTH = flags.DEFINE_integer("max_length", None, "BERT sequence length (paper: 128).")
_MAX_SOURCE = flags.DEFINE_integer("max_source_len", None, "SNI source tokens (paper: 1024).")
_MAX_TARGET = flags.DEFINE_integer(
  "max_target_len", None, "SNI target and decoding tokens (paper: 128)."
)
_MAX_INSTANCES = flags.DEFINE_integer("max_instances", None, "SNI instances per task (paper: 100).")

SUITES = ("glue", "superglue", "sni")


def _config_error(message: str):
  from ntng_jax.config import ConfigError

  return ConfigError(message)


def _json_safe(x):
  """NaN/inf become null so the file is strict JSON."""
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {str(k): _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if hasattr(x, "item") and getattr(x, "shape", None) == ():
    return _json_safe(x.item())
  return x


def _fmt(v, scale=100.0) -> str:
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "n/a"
  return f"{v * scale:.2f}"


def markdown_table(result: dict) -> str:
  """The results as a Markdown table (scores x100)."""
  if result["suite"] == "sni":
    # paper: one random reference, as the paper's code scored it; SNI: the best reference.
    rows = [
      "| task | Rouge-L (paper) | Rouge-L (SNI official) | test examples |",
      "|---|---:|---:|---:|",
    ]
    for name, r in result["tasks"].items():
      rows.append(
        f"| {name} | {_fmt(r['rouge_l_paper'], 1)} | "
        f"{_fmt(r['rouge_l_official'], 1)} | {r['num_examples']} |"
      )
    rows.append(
      f"| **all** | **{_fmt(result['rouge_l_paper'], 1)}** | "
      f"**{_fmt(result['rouge_l_official'], 1)}** | {result['num_test']} |"
    )
    return "\n".join(rows)
  rows = [
    "| task | metric | best (x100) | best epoch | per epoch (x100) | majority rate (x100) "
    "| train examples |",
    "|---|---|---:|---:|---|---:|---:|",
  ]
  for name, r in result["tasks"].items():
    for metric, value in r["best"].items():
      per_epoch = ", ".join(_fmt(e["metrics"][metric]) for e in r["epochs"])
      rows.append(
        f"| {name} | {metric} | {_fmt(value)} | {r['best_epoch'].get(metric)} | "
        f"{per_epoch} | {_fmt(r.get('majority_rate'))} | {r['num_train']} |"
      )
    for key, metrics in r.get("extra", {}).items():
      for metric, value in metrics.items():
        rows.append(f"| {key} | {metric} | {_fmt(value)} | last | | | |")
  avg = result["average"]
  note = (
    f" (of {len(avg['components'])}; missing: {', '.join(avg['missing'])})"
    if avg["missing"]
    else ""
  )
  rows.append(f"| **average** | paper's{note} | **{_fmt(avg['average'])}** | | | | |")
  return "\n".join(rows)


def _check_flags():
  """Validates the flags without touching jax; returns (suite, workdir, tasks)."""
  if not _PRETRAINED.value:
    raise _config_error("--pretrained is required: the --workdir of a launch.pretrain run.")
  suite = (_SUITE.value or "").strip().lower().replace("-", "").replace("_", "")
  if suite not in SUITES:
    raise _config_error(f"--suite must be one of {', '.join(SUITES)}; got {_SUITE.value!r}.")
  for name, flag in (
    ("epochs", _EPOCHS),
    ("batch_size", _BATCH),
    ("eval_batch_size", _EVAL_BATCH),
    ("max_length", _MAX_LENGTH),
    ("max_source_len", _MAX_SOURCE),
    ("max_target_len", _MAX_TARGET),
    ("max_instances", _MAX_INSTANCES),
  ):
    if flag.value is not None and flag.value <= 0:
      raise _config_error(f"--{name} must be a positive integer; got {flag.value}.")
  for name, flag in (("max_train_examples", _MAX_TRAIN), ("max_eval_examples", _MAX_EVAL)):
    if flag.value is not None and flag.value < 0:
      raise _config_error(f"--{name} must be 0 (all) or positive; got {flag.value}.")
  if _LR.value is not None and not _LR.value > 0:
    raise _config_error(f"--learning_rate must be positive; got {_LR.value}.")
  tasks = [t.strip() for t in (_TASKS.value or []) if t.strip()] or None
  if suite != "sni" and tasks:
    from ntng_jax.eval.tasks import GLUE_TASKS, SUPERGLUE_TASKS, get_task

    names = []
    for t in tasks:
      try:
        names.append(get_task(t, suite=suite).name)
      except ValueError:
        valid = ", ".join(GLUE_TASKS if suite == "glue" else SUPERGLUE_TASKS)
        raise _config_error(f"unknown {suite} task {t!r}; valid names are: {valid}.") from None
    tasks = names
  if _DATA_DIR.value is not None and not os.path.isdir(_DATA_DIR.value):
    raise _config_error(f"--data_dir {_DATA_DIR.value!r} is not a directory.")
  if suite == "sni" and _DATA_DIR.value is None:
    raise _config_error(
      "--suite=sni needs --data_dir (a directory with tasks/ and "
      "splits/default/test_tasks.txt, optionally train_tasks.txt)."
    )
  if suite != "sni" and _DATA_DIR.value is None:
    import importlib.util

    if importlib.util.find_spec("tensorflow_datasets") is None:
      raise _config_error(
        "without --data_dir the tasks come from tensorflow-datasets, which "
        "is not installed; pass --data_dir=DIR with local files or install "
        "tensorflow-datasets."
      )
  return suite, _PRETRAINED.value, tasks


def run() -> dict:
  suite, workdir, tasks = _check_flags()
  # The family check reads config.json only, before any checkpoint is touched.
  from ntng_jax.eval.pretrained import check_family, load_pretrained, read_config

  check_family(read_config(workdir).model.family, suite, workdir)
  from ntng_jax.eval.ft_core import default_mesh

  mesh = default_mesh()
  pretrained = load_pretrained(workdir, suite=suite, mesh=mesh)
  print(
    f"Loaded {pretrained.model_cfg.family} ({pretrained.model_cfg.size}, "
    f"{pretrained.model_cfg.num_layers} layers) from step {pretrained.step} of {workdir}.",
    flush=True,
  )
  log = lambda s: print(s, flush=True)  # noqa: E731
  if suite == "sni":
    from ntng_jax.eval.sni_finetune import SNIConfig, run_sni

    cfg = SNIConfig(
      epochs=_EPOCHS.value,
      learning_rate=_LR.value,
      batch_size=_BATCH.value,
      eval_batch_size=_EVAL_BATCH.value,
      seed=_SEED.value,
      max_train_examples=_MAX_TRAIN.value,
      max_eval_examples=_MAX_EVAL.value,
      max_source_len=_MAX_SOURCE.value,
      max_target_len=_MAX_TARGET.value,
      max_instances=_MAX_INSTANCES.value,
    )
    result = run_sni(pretrained, _DATA_DIR.value, cfg, tasks=tasks, mesh=mesh, log=log)
  else:
    from ntng_jax.eval.finetune import paper_recipe, run_suite

    cfg = paper_recipe(
      suite,
      epochs=_EPOCHS.value,
      learning_rate=_LR.value,
      batch_size=_BATCH.value,
      eval_batch_size=_EVAL_BATCH.value,
      seed=_SEED.value,
      max_train_examples=_MAX_TRAIN.value,
      max_eval_examples=_MAX_EVAL.value,
      max_length=_MAX_LENGTH.value,
    )
    local = _DATA_DIR.value is not None
    result = run_suite(
      pretrained,
      suite,
      tasks=tasks,
      data_dir=_DATA_DIR.value if local else _TFDS_DIR.value,
      source="local" if local else "tfds",
      cfg=cfg,
      mesh=mesh,
      log=log,
    )
  result = dict(
    result,
    pretrained=os.path.abspath(workdir),
    checkpoint_step=pretrained.step,
    model=dict(pretrained.model_cfg),
  )
  out = _OUTPUT.value or os.path.join(workdir, "finetune", f"{suite}.json")
  import jax

  if jax.process_index() != 0:
    return result
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_json_safe(result), f, indent=1)
  os.replace(tmp, out)
  print(f"\nWrote {out}\n\n{markdown_table(result)}", flush=True)
  return result


def main(argv):
  def go():
    if len(argv) > 1:
      raise _config_error(f"unexpected arguments {' '.join(argv[1:])}; every option is a --flag.")
    return run()

  common.run_cleanly(go)
  sys.exit(0)


if __name__ == "__main__":
  common.main(main, check_config=False)
