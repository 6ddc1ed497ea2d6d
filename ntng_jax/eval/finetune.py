"""BERT fine-tuning on GLUE / SuperGLUE (docs/paper.md §5), one fresh model per task.

Model: the pre-trained encoder (``Bert.encode``, padding masked) + ``heads.ClassificationHead``
(STS-B: one output, MSE); dropout 0.1 on hidden states, embedding and attention probabilities in
training only (the original's crammed-BERT fine-tuning); the word embedding's pad row gets no
gradient. Recipe (:func:`paper_recipe`): AdamW (0.9/0.98, eps 1e-6, no weight decay, no
clipping), batch 16, length 128; GLUE lr 4e-5 × 5 epochs, SuperGLUE 5e-5 × 10; cosine decay
after a linear warmup over 10 % of this task's steps, step s at the schedule's s + 0.5. Training
batches are shuffled and the last partial one dropped; the dev set is scored after every epoch and
each metric keeps its maximum over epochs (MNLI-mm once, after the last). Config, state, step,
programs and epoch loop: :mod:`ntng_jax.eval.ft_core`; tasks with the same number of classes
reuse the compiled programs.

    results = run_suite(load_pretrained(workdir, suite="glue"), "glue", data_dir=".../glue")
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ntng_jax import partitioning
from ntng_jax.eval import ft_core
from ntng_jax.eval.encoding import encode_classification, iterate_batches
from ntng_jax.eval.ft_core import (
  best_over_epochs,
  default_mesh,
  device_batch,
  local_rows,
  subsample,
)
from ntng_jax.eval.heads import ClassificationHead, classification_loss, predictions_from_logits
from ntng_jax.eval.metrics import glue_average, superglue_average
from ntng_jax.eval.task_data import load_examples
from ntng_jax.eval.tasks import GLUE_TASKS, SUPERGLUE_TASKS, TaskSpec, compute_metrics, get_task
from ntng_jax.models import build_model
from ntng_jax.train import programs as programs_lib

__all__ = [
  "FinetuneConfig",
  "paper_recipe",
  "cosine_warmup_lr",
  "warmup_steps_for",
  "default_mesh",
  "finetune_task",
  "run_suite",
  "subsample",
  "majority_rate",
  "best_over_epochs",
  "suite_average",
  "classifier_apply",
  "encoder_params",
  "predict",
  "local_rows",
  "finetune_model_config",
]

# Parameters of the pre-trained BERT that the encoder path does not use (the MLM head).
_UNUSED_BERT_PARAMS = ("head",)

# GLUE / SuperGLUE fields beyond ft_core.COMMON_FIELDS, and the paper's GLUE values.
FIELDS = dict(
  learning_rate=4e-5,
  epochs=5,
  batch_size=16,
  eval_batch_size=128,
  max_length=128,
  warmup_fraction=0.1,
  b1=0.9,
  b2=0.98,
  eps=1e-6,
  dropout_rate=0.1,  # encoder hidden/embedding dropout (0 in pre-training)
  attention_dropout_rate=0.1,  # on attention probabilities (0 in pre-training)
  head_hidden=1024,
  head_dropout=0.1,
)
SUITE_RECIPES = {
  "glue": dict(learning_rate=4e-5, epochs=5),
  "superglue": dict(learning_rate=5e-5, epochs=10),
}


def FinetuneConfig(**overrides) -> ml_collections.ConfigDict:  # noqa: N802 -- a config type
  """Fine-tuning hyper-parameters as an ml_collections ConfigDict (defaults: the paper's
  GLUE recipe); keyword ``overrides`` that are not None replace fields."""
  return ft_core.make_config(FIELDS, **overrides)


def paper_recipe(suite: str, **overrides) -> ml_collections.ConfigDict:
  """The paper's recipe for ``suite`` ('glue': 4e-5, 5 epochs; 'superglue': 5e-5, 10
  epochs); keyword ``overrides`` that are not None replace fields."""
  if suite not in SUITE_RECIPES:
    raise ValueError(f"Unknown suite {suite!r} for BERT fine-tuning; use glue or superglue.")
  return ft_core.with_overrides(FinetuneConfig(**SUITE_RECIPES[suite]), **overrides)


def warmup_steps_for(total_steps: int, warmup_fraction: float) -> int:
  """Warmup length of one task: ``ceil(fraction * total_steps)`` (HF's ``warmup_ratio``),
  computed from this task's own step count."""
  return int(math.ceil(warmup_fraction * total_steps))


def cosine_warmup_lr(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
  """Learning rate of 0-based ``step``: linear warmup to ``peak`` over ``warmup_steps``, then
  cosine decay to 0 at ``total_steps``; evaluated at the step's midpoint ``step + 0.5``."""
  t = step + 0.5
  if t < warmup_steps:
    return peak * t / warmup_steps
  progress = min(1.0, (t - warmup_steps) / max(1e-9, total_steps - warmup_steps))
  return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def majority_rate(train_labels, dev_labels) -> tuple[int, float]:
  """(the most frequent training class, the dev accuracy of always predicting it)."""
  train_labels = np.asarray(train_labels, dtype=np.int64)
  cls = int(np.bincount(train_labels[train_labels >= 0]).argmax())
  return cls, float(np.mean(np.asarray(dev_labels) == cls))


def suite_average(suite: str, best_by_task: dict) -> dict:
  """The paper's average for ``suite`` over the tasks present."""
  return (glue_average if suite == "glue" else superglue_average)(best_by_task)


# -------------------------------------------------------------------------------------------
# Model and programs.


def finetune_model_config(model_cfg, cfg) -> ml_collections.FrozenConfigDict:
  """The pre-trained model's config with ``cfg``'s fine-tuning dropout rates."""
  return ft_core.model_config(model_cfg, cfg.dropout_rate, cfg.attention_dropout_rate)


def encoder_params(params: dict) -> dict:
  """The pre-trained BERT params without the MLM head (unused by ``encode``)."""
  return {k: v for k, v in params.items() if k not in _UNUSED_BERT_PARAMS}


def classifier_apply(bert, head, params, input_ids, attention_mask, deterministic: bool, rng=None):
  """Logits ``[B, C]`` of the encoder + head; ``params = {'encoder', 'head'}``."""
  rngs_enc, rngs_head = {}, {}
  if not deterministic:
    r_enc, r_head = jax.random.split(rng)
    rngs_enc, rngs_head = {"dropout": r_enc}, {"dropout": r_head}
  hidden = bert.clone(deterministic=deterministic).apply(
    {"params": params["encoder"]}, input_ids, attention_mask, method="encode", rngs=rngs_enc
  )
  return head.apply({"params": params["head"]}, hidden, deterministic=deterministic, rngs=rngs_head)


@functools.lru_cache(maxsize=16)
def _programs(
  model_cfg: ml_collections.FrozenConfigDict,
  num_classes: int,
  head_hidden: int,
  head_dropout: float,
  b1: float,
  b2: float,
  eps: float,
  weight_decay: float,
  mesh,
) -> ft_core.Programs:  # init(encoder_params, rng), train_step, eval_step -> logits
  model = build_model(model_cfg)
  bert = model.module
  head = ClassificationHead(num_classes=num_classes, hidden=head_hidden, dropout_rate=head_dropout)
  example = dict(input_ids=np.zeros((1, 8), np.int32), mlm_positions=np.zeros((1, 1), np.int32))
  hidden_example = jnp.zeros((1, 1, model_cfg.hidden_size), jnp.float32)

  def boxed_params(rng):
    enc = encoder_params(model.init(rng, example))
    return {"encoder": enc, "head": head.init(rng, hidden_example)["params"]}

  def init_params(enc_params, rng):
    # Copies: the pre-trained arrays are reused by the next task; the state is donated.
    enc = jax.tree.map(jnp.copy, enc_params)
    return {"encoder": enc, "head": head.init(rng, hidden_example)["params"]}

  def loss_fn(params, batch, rng):
    logits = classifier_apply(
      bert, head, params, batch["input_ids"], batch["attention_mask"], deterministic=False, rng=rng
    )
    return classification_loss(logits, batch["labels"], num_classes)

  def eval_step(params, batch):
    return classifier_apply(
      bert, head, params, batch["input_ids"], batch["attention_mask"], deterministic=True
    )

  core = ft_core.build_programs(
    boxed_params,
    init_params,
    lambda sh, rep: (sh["encoder"], rep),
    loss_fn,
    ft_core.adamw(b1, b2, eps, weight_decay),
    mesh,
  )
  return dataclasses.replace(
    core,
    eval_step=programs_lib.jit_eval_step(eval_step, core.state_shardings.params, mesh),
  )


# -------------------------------------------------------------------------------------------
# One task.


def predict(
  programs: ft_core.Programs, params, arrays: dict, batch_size: int, mesh, num_classes: int
) -> np.ndarray:
  """Predictions ``[N]`` for every row of ``arrays`` (the last batch padded and masked)."""
  outputs = []
  with partitioning.activate(mesh):
    for batch in iterate_batches(arrays, batch_size, pad_last=True):
      logits = programs.eval_step(
        params, device_batch(mesh, batch, ("input_ids", "attention_mask"))
      )
      outputs.append((logits, batch["example_mask"]))
  preds = [
    np.asarray(predictions_from_logits(np.asarray(jax.device_get(lg)), num_classes))[mask > 0]
    for lg, mask in outputs
  ]
  return np.concatenate(preds) if preds else np.zeros((0,))


def finetune_task(
  pretrained,
  task: str | TaskSpec,
  train_examples: Sequence,
  dev_examples: Sequence,
  cfg,
  mesh=None,
  extra_dev: dict | None = None,
  log: Callable[[str], None] | None = print,
) -> dict:
  """Fine-tunes a fresh copy of the pre-trained encoder + a new head on one task.

  pretrained: :class:`~ntng_jax.eval.pretrained.Pretrained` (or any object with
    ``model_cfg``, ``params``, ``tokenizer``); train/dev_examples: reader examples;
  cfg: a :func:`FinetuneConfig`; extra_dev: ``{result_key: examples}`` scored once after the
  last epoch (MNLI-mm).
  Returns ``{'task', 'suite', 'num_train', 'num_dev', 'steps', 'warmup_steps', 'epochs':
  [{'epoch', 'train_loss', 'metrics'}], 'best', 'best_epoch', 'majority_class',
  'majority_rate', 'extra': {key: metrics}, 'seconds'}``.
  """
  spec = get_task(task)
  mesh = mesh or default_mesh()
  ft_core.check_batch_sizes(
    mesh, ("batch_size", cfg.batch_size), ("eval_batch_size", cfg.eval_batch_size)
  )
  if pretrained.model_cfg.family != "bert":
    raise ValueError(
      f"{spec.key} fine-tuning needs a BERT checkpoint, not {pretrained.model_cfg.family}."
    )
  if cfg.max_length > pretrained.model_cfg.max_length:
    raise ValueError(
      f"max_length {cfg.max_length} exceeds the model's position table "
      f"({pretrained.model_cfg.max_length})."
    )
  t0 = time.time()
  tok, C = pretrained.tokenizer, spec.num_classes
  train_examples = subsample(train_examples, cfg.max_train_examples, cfg.seed)
  if cfg.max_eval_examples > 0:
    dev_examples = list(dev_examples)[: cfg.max_eval_examples]
  if len(train_examples) < cfg.batch_size:
    raise ValueError(
      f"{spec.key} has {len(train_examples)} training examples, fewer than "
      f"one batch of {cfg.batch_size}."
    )
  if not dev_examples:
    raise ValueError(f"{spec.key} has no dev examples to evaluate on.")
  train = encode_classification(train_examples, tok, cfg.max_length, C)
  dev = encode_classification(dev_examples, tok, cfg.max_length, C)
  groups = [ex.get("group") for ex in dev_examples] if spec.name == "multirc" else None

  programs = _programs(
    finetune_model_config(pretrained.model_cfg, cfg),
    C,
    cfg.head_hidden,
    cfg.head_dropout,
    cfg.b1,
    cfg.b2,
    cfg.eps,
    cfg.weight_decay,
    mesh,
  )
  steps_per_epoch = len(train_examples) // cfg.batch_size
  total = steps_per_epoch * cfg.epochs
  warmup = warmup_steps_for(total, cfg.warmup_fraction)
  rng = jax.random.PRNGKey(cfg.seed)
  shuffle = np.random.default_rng(cfg.seed)
  enc = jax.device_put(
    encoder_params(pretrained.params), programs.state_shardings.params["encoder"]
  )
  with partitioning.activate(mesh):
    state = programs.init(enc, jax.random.fold_in(rng, 0))

  def after_epoch(epoch, state, train_loss, steps, started):
    del steps
    preds = predict(programs, state.params, dev, cfg.eval_batch_size, mesh, C)
    metrics = compute_metrics(spec, dev["labels"], preds, groups=groups)
    if log:
      shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
      log(
        f"{spec.key} epoch {epoch}/{cfg.epochs}: train loss {train_loss:.4f} | dev "
        f"{shown} ({time.time() - started:.1f} s)"
      )
    return dict(
      epoch=epoch, train_loss=train_loss, metrics={k: float(v) for k, v in metrics.items()}
    )

  state, epochs = ft_core.run_epochs(
    programs,
    state,
    mesh,
    cfg.epochs,
    batches=lambda epoch: iterate_batches(train, cfg.batch_size, rng=shuffle, drop_last=True),
    keys=("input_ids", "attention_mask", "labels"),
    learning_rate=lambda step: cosine_warmup_lr(step, total, warmup, cfg.learning_rate),
    step_rng=lambda step: jax.random.fold_in(rng, step + 1),
    after_epoch=after_epoch,
  )
  extra = {}
  for key, examples in (extra_dev or {}).items():
    arrays = encode_classification(examples, tok, cfg.max_length, C)
    preds = predict(programs, state.params, arrays, cfg.eval_batch_size, mesh, C)
    scores = compute_metrics(spec, arrays["labels"], preds)
    extra[key] = {k: float(v) for k, v in scores.items()}
  best, best_epoch = best_over_epochs(epochs)
  result = dict(
    task=spec.name,
    suite=spec.suite,
    num_train=len(train_examples),
    num_dev=len(dev_examples),
    steps=total,
    warmup_steps=warmup,
    learning_rate=cfg.learning_rate,
    epochs=epochs,
    best=best,
    best_epoch=best_epoch,
    extra=extra,
  )
  if not spec.is_regression:
    cls, rate = majority_rate(train["labels"], dev["labels"])
    result.update(majority_class=cls, majority_rate=rate)
  result["seconds"] = time.time() - t0
  return result


# -------------------------------------------------------------------------------------------
# A suite.


def _check_local_files(specs: Sequence[TaskSpec], data_dir) -> None:
  """Fails before any training if a task's local file is missing (one sentence)."""
  if data_dir is None:
    raise ValueError("Reading local files needs data_dir (the glue/ or superglue/ directory).")
  for spec in specs:
    for split, name in spec.files.items():
      path = Path(data_dir) / spec.dir_name / name
      if not path.is_file():
        raise FileNotFoundError(
          f"{spec.key} needs {path}, which does not exist; "
          f"data_dir must be the {spec.suite} directory holding "
          f"{spec.dir_name}/{name}."
        )


def run_suite(
  pretrained,
  suite: str,
  tasks: Sequence[str] | None = None,
  data_dir=None,
  source: str = "local",
  cfg=None,
  mesh=None,
  log: Callable[[str], None] | None = print,
) -> dict:
  """Fine-tunes every task of ``suite`` ('glue' | 'superglue', or the given ``tasks``).

  data_dir: the suite directory of local files (``source='local'``) or the tfds data dir
  (``source='tfds'``). Returns ``{'suite', 'recipe', 'tasks': {name: finetune_task
  result}, 'best': {result_key: best metrics}, 'average': the paper's average}``.
  """
  registry = {"glue": GLUE_TASKS, "superglue": SUPERGLUE_TASKS}
  if suite not in registry:
    raise ValueError(f"Unknown suite {suite!r}; use glue or superglue.")
  specs = [get_task(t, suite=suite) for t in (tasks or list(registry[suite]))]
  cfg = cfg or paper_recipe(suite)
  if source == "local":
    _check_local_files(specs, data_dir)
  mesh = mesh or default_mesh()
  results, best = {}, {}
  for spec in specs:
    if log:
      log(f"Fine-tuning {spec.key} ...")
    train = load_examples(spec, "train", data_dir, source)
    dev = load_examples(spec, "dev", data_dir, source)
    extra_dev = (
      {f"{spec.name}_mm": load_examples(spec, "dev_mm", data_dir, source)}
      if "dev_mm" in spec.files
      else None
    )
    res = finetune_task(pretrained, spec, train, dev, cfg, mesh, extra_dev=extra_dev, log=log)
    results[spec.name] = res
    best[spec.name] = res["best"]
    best.update(res["extra"])
  return dict(
    suite=suite, recipe=cfg.to_dict(), tasks=results, best=best, average=suite_average(suite, best)
  )
