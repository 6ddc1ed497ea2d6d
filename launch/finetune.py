"""Fine-tune a pre-trained checkpoint on a downstream suite and score it (docs/paper.md §5).

  python -m launch.finetune --pretrained=runs/bert-base-baseline-seed0 --suite=glue \
      --data_dir=../shared/data/glue
  python -m launch.finetune --pretrained=/tmp/ft_bert --suite=glue --tasks=sst2,rte --epochs=1 \
      --data_dir=../shared/data/glue --max_train_examples=500
  python -m launch.finetune --pretrained=/tmp/ft_t5 --suite=sni --data_dir=../shared/data/sni \
      --max_source_len=256 --max_target_len=32

BERT checkpoints take glue / superglue, T5 checkpoints take sni. Without --data_dir the GLUE and
SuperGLUE tasks come from tensorflow-datasets (SNI always needs --data_dir). The paper's recipe is
the default; the flags override it. The result goes to WORKDIR/finetune/<suite>.json (format:
ntng_jax/experiments/finetune_results.py), and the table printed at the end is rendered from it.
"""

import os
import sys

from absl import flags

from launch import common
from ntng_jax.config import ConfigError
from ntng_jax.experiments import finetune_results

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
_LR = flags.DEFINE_float(
  "learning_rate", None, "Peak learning rate (paper: GLUE 4e-5, SuperGLUE 5e-5, SNI 5e-5)."
)
_SEED = flags.DEFINE_integer("seed", None, "Seed of the head init, dropout and shuffling.")
# Integer overrides of the recipe: name -> (smallest valid value, help). Unset = the paper's.
_COUNTS = {
  "epochs": (1, "Epochs (paper: GLUE 5, SuperGLUE 10, SNI 2)."),
  "batch_size": (1, "Training batch size (paper: 16; SNI 8)."),
  "eval_batch_size": (1, "Evaluation batch size."),
  "max_length": (1, "BERT sequence length (paper: 128)."),
  "max_source_len": (1, "SNI source tokens (paper: 1024)."),
  "max_target_len": (1, "SNI target and decoding tokens (paper: 128)."),
  "max_instances": (1, "SNI instances per task (paper: 100)."),
  "max_train_examples": (
    0,
    "Use a seeded random subset of this many training examples per task (0 = all).",
  ),
  "max_eval_examples": (0, "Score only the first this many dev/test examples per task (0 = all)."),
}
_COUNT_FLAGS = {name: flags.DEFINE_integer(name, None, help) for name, (_, help) in _COUNTS.items()}

SUITES = ("glue", "superglue", "sni")


def _check_flags():
  """Validates the flags without touching jax; returns (suite, workdir, tasks)."""
  if not _PRETRAINED.value:
    raise ConfigError("--pretrained is required: the --workdir of a launch.pretrain run.")
  suite = (_SUITE.value or "").strip().lower().replace("-", "").replace("_", "")
  if suite not in SUITES:
    raise ConfigError(f"--suite must be one of {', '.join(SUITES)}; got {_SUITE.value!r}.")
  for name, (least, _) in _COUNTS.items():
    value = _COUNT_FLAGS[name].value
    if value is not None and value < least:
      what = "a positive integer" if least else "0 (all) or positive"
      raise ConfigError(f"--{name} must be {what}; got {value}.")
  if _LR.value is not None and not _LR.value > 0:
    raise ConfigError(f"--learning_rate must be positive; got {_LR.value}.")
  tasks = [t.strip() for t in (_TASKS.value or []) if t.strip()] or None
  if suite != "sni" and tasks:
    from ntng_jax.eval.tasks import GLUE_TASKS, SUPERGLUE_TASKS, get_task  # jax: not before here

    names = []
    for t in tasks:
      try:
        names.append(get_task(t, suite=suite).name)
      except ValueError:
        valid = ", ".join(GLUE_TASKS if suite == "glue" else SUPERGLUE_TASKS)
        raise ConfigError(f"unknown {suite} task {t!r}; valid names are: {valid}.") from None
    tasks = names
  if _DATA_DIR.value is not None and not os.path.isdir(_DATA_DIR.value):
    raise ConfigError(f"--data_dir {_DATA_DIR.value!r} is not a directory.")
  if suite == "sni" and _DATA_DIR.value is None:
    raise ConfigError(
      "--suite=sni needs --data_dir (a directory with tasks/ and "
      "splits/default/test_tasks.txt, optionally train_tasks.txt)."
    )
  if suite != "sni" and _DATA_DIR.value is None:
    import importlib.util

    if importlib.util.find_spec("tensorflow_datasets") is None:
      raise ConfigError(
        "without --data_dir the tasks come from tensorflow-datasets, which "
        "is not installed; pass --data_dir=DIR with local files or install "
        "tensorflow-datasets."
      )
  return suite, _PRETRAINED.value, tasks


def _overrides(suite: str) -> dict:
  """The recipe fields set by flags (None = the paper's value) for `suite`'s config."""
  skip = (
    ("max_length",) if suite == "sni" else ("max_source_len", "max_target_len", "max_instances")
  )
  counts = {name: flag.value for name, flag in _COUNT_FLAGS.items() if name not in skip}
  return dict(counts, learning_rate=_LR.value, seed=_SEED.value)


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

    cfg = SNIConfig(**_overrides(suite))
    result = run_sni(pretrained, _DATA_DIR.value, cfg, tasks=tasks, mesh=mesh, log=log)
  else:
    from ntng_jax.eval.finetune import paper_recipe, run_suite

    cfg = paper_recipe(suite, **_overrides(suite))
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
  out = _OUTPUT.value or finetune_results.result_path(workdir, suite)
  import jax

  if jax.process_index() != 0:
    return result
  written = finetune_results.write_result(out, result)
  print(f"\nWrote {out}\n\n{finetune_results.markdown_table(written)}", flush=True)
  return result


def main(argv):
  def go():
    if len(argv) > 1:
      raise ConfigError(f"unexpected arguments {' '.join(argv[1:])}; every option is a --flag.")
    return run()

  common.run_cleanly(go)
  sys.exit(0)


if __name__ == "__main__":
  common.main(main, check_config=False)
