"""BERT fine-tuning on GLUE / SuperGLUE (paper-facts §5), one fresh model per task.

Model: the pre-trained encoder (``Bert.encode``, padding masked in attention, dropout on) +
:class:`~ntng_jax.eval.heads.ClassificationHead` (first-token pooling -> Dense 1024 -> tanh ->
dropout 0.1 -> Dense classes; STS-B: one output trained with MSE).

Recipe (:func:`paper_recipe`): AdamW (betas 0.9/0.98, eps 1e-6, no weight decay, no
clipping), batch 16, max length 128; GLUE lr 4e-5 for 5 epochs, SuperGLUE lr 5e-5 for 10
epochs; cosine decay after a linear warmup over 10 % of *this task's* steps (the original
reused CoLA's/BoolQ's warmup for every later task, fact sheet §7 item 12). The rate of step
``s`` (0-based) of ``T`` is the schedule at ``s + 0.5`` (no step is spent at rate 0).
Training batches are shuffled (seeded) and the last partial one is dropped; dev batches keep
every example (the last one is padded and masked). The dev set is scored after every epoch
and each metric keeps its maximum over epochs (the paper's protocol); MNLI's mismatched dev
set is scored once after the last epoch (result key ``mnli_mm``).

Programs: the train step is pure and jitted once per static shape (the batch split over the
data × fsdp mesh axes, the state donated, as ``ntng_jax/train/step.py``); tasks with the same
number of classes reuse the compiled programs.

Typical use::

    pre = load_pretrained(workdir, suite="glue")
    results = run_suite(pre, "glue", tasks=["cola", "sst2"], data_dir=".../data/glue")
    results["average"]        # glue_average of the best dev scores
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ntng_jax import partitioning
from ntng_jax.eval.encoding import encode_classification, iterate_batches
from ntng_jax.eval.heads import ClassificationHead, classification_loss, predictions_from_logits
from ntng_jax.eval.metrics import glue_average, superglue_average
from ntng_jax.eval.tasks import TaskSpec, compute_metrics, get_task, load_examples
from ntng_jax.train.state import TrainState
from ntng_jax.train.step import set_learning_rate

__all__ = ["FinetuneConfig", "paper_recipe", "cosine_warmup_lr", "warmup_steps_for",
           "default_mesh", "finetune_task", "run_suite", "subsample", "majority_rate",
           "best_over_epochs", "suite_average", "classifier_apply", "encoder_params", "predict",
           "local_rows"]

# Parameters of the pre-trained BERT that the encoder path does not use (the MLM head).
_UNUSED_BERT_PARAMS = ("head",)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning hyper-parameters (defaults: the paper's GLUE recipe)."""

    learning_rate: float = 4e-5
    epochs: int = 5
    batch_size: int = 16
    eval_batch_size: int = 128
    max_length: int = 128
    warmup_fraction: float = 0.1
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.0
    dropout_rate: float = 0.1       # encoder dropout while fine-tuning (0 in pre-training)
    head_hidden: int = 1024
    head_dropout: float = 0.1
    seed: int = 0
    max_train_examples: int = 0     # 0 = all; else a seeded random subset of that size
    max_eval_examples: int = 0      # 0 = all; else the first that many dev examples

    def replace(self, **changes) -> "FinetuneConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def paper_recipe(suite: str, **overrides) -> FinetuneConfig:
    """The paper's recipe for ``suite`` ('glue': 4e-5, 5 epochs; 'superglue': 5e-5, 10
    epochs); keyword ``overrides`` that are not None replace fields."""
    if suite == "glue":
        cfg = FinetuneConfig(learning_rate=4e-5, epochs=5)
    elif suite == "superglue":
        cfg = FinetuneConfig(learning_rate=5e-5, epochs=10)
    else:
        raise ValueError(f"Unknown suite {suite!r} for BERT fine-tuning; use glue or superglue.")
    return cfg.replace(**overrides)


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


def default_mesh():
    """All devices on the 'data' axis (the fine-tuned models fit one device)."""
    return partitioning.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))


def subsample(examples: Sequence, n: int, seed: int) -> list:
    """A seeded random subset of ``n`` examples in their original order (all if n <= 0)."""
    if n <= 0 or n >= len(examples):
        return list(examples)
    keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:n])
    return [examples[i] for i in keep]


def majority_rate(train_labels, dev_labels) -> tuple[int, float]:
    """(the most frequent training class, the dev accuracy of always predicting it)."""
    train_labels = np.asarray(train_labels, dtype=np.int64)
    cls = int(np.bincount(train_labels[train_labels >= 0]).argmax())
    return cls, float(np.mean(np.asarray(dev_labels) == cls))


def best_over_epochs(epochs: Sequence[dict]) -> tuple[dict, dict]:
    """``({metric: max over epochs}, {metric: 1-based epoch of that max})``; NaN epochs are
    ignored (a metric that is NaN in every epoch stays NaN)."""
    best, best_epoch = {}, {}
    for rec in epochs:
        for name, value in rec["metrics"].items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                best.setdefault(name, float("nan"))
                best_epoch.setdefault(name, None)
                continue
            if best_epoch.get(name) is None or value > best[name]:
                best[name], best_epoch[name] = float(value), rec["epoch"]
    return best, best_epoch


def suite_average(suite: str, best_by_task: dict) -> dict:
    """The paper's average for ``suite`` over the tasks present."""
    return (glue_average if suite == "glue" else superglue_average)(best_by_task)


# -------------------------------------------------------------------------------------------
# Model and programs.


def _frozen(model_cfg, dropout_rate: float) -> ml_collections.FrozenConfigDict:
    cfg = ml_collections.ConfigDict(dict(model_cfg))
    cfg.dropout_rate = float(dropout_rate)
    return ml_collections.FrozenConfigDict(cfg)


def encoder_params(params: dict) -> dict:
    """The pre-trained BERT params without the MLM head (unused by ``encode``)."""
    return {k: v for k, v in params.items() if k not in _UNUSED_BERT_PARAMS}


@dataclasses.dataclass(frozen=True)
class _Programs:
    init: Callable        # (encoder_params, rng) -> TrainState (fresh head, fresh optimizer)
    train_step: Callable  # (state, batch, rng, lr) -> (state, {'loss'})
    eval_step: Callable   # (params, batch) -> logits [B, C]
    state_shardings: Any


def classifier_apply(bert, head, params, input_ids, attention_mask, deterministic: bool,
                     rng=None):
    """Logits ``[B, C]`` of the encoder + head; ``params = {'encoder', 'head'}``."""
    rngs_enc, rngs_head = {}, {}
    if not deterministic:
        r_enc, r_head = jax.random.split(rng)
        rngs_enc, rngs_head = {"dropout": r_enc}, {"dropout": r_head}
    hidden = bert.clone(deterministic=deterministic).apply(
        {"params": params["encoder"]}, input_ids, attention_mask, method="encode", rngs=rngs_enc)
    return head.apply({"params": params["head"]}, hidden, deterministic=deterministic,
                      rngs=rngs_head)


@functools.lru_cache(maxsize=16)
def _programs(model_cfg: ml_collections.FrozenConfigDict, num_classes: int, head_hidden: int,
              head_dropout: float, b1: float, b2: float, eps: float, weight_decay: float,
              mesh) -> _Programs:
    from ntng_jax.models import build_model

    model = build_model(model_cfg)
    bert = model.module
    head = ClassificationHead(num_classes=num_classes, hidden=head_hidden,
                              dropout_rate=head_dropout)
    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, b1=b1, b2=b2, eps=eps,
                                               weight_decay=weight_decay)
    example = dict(input_ids=np.zeros((1, 8), np.int32), mlm_positions=np.zeros((1, 1), np.int32))
    hidden_example = jnp.zeros((1, 1, model_cfg.hidden_size), jnp.float32)

    def boxed_state(rng):
        enc = encoder_params(model.init(rng, example))
        params = {"encoder": enc, "head": head.init(rng, hidden_example)["params"]}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), method_state={})

    with partitioning.rules_context():
        abstract = jax.eval_shape(boxed_state, jax.random.PRNGKey(0))
        shardings = partitioning.logical_shardings(mesh, abstract)
    rep, batch_sh = partitioning.replicated(mesh), partitioning.batch_sharding(mesh)

    def init(enc_params, rng):
        # Copies: the pre-trained arrays are reused by the next task; the state is donated.
        enc = jax.tree.map(jnp.copy, enc_params)
        params = {"encoder": enc, "head": head.init(rng, hidden_example)["params"]}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), method_state={})

    def loss_fn(params, batch, rng):
        logits = classifier_apply(bert, head, params, batch["input_ids"],
                                  batch["attention_mask"], deterministic=False, rng=rng)
        return classification_loss(logits, batch["labels"], num_classes)

    def train_step(state: TrainState, batch: dict, rng, learning_rate):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng)
        opt_state = set_learning_rate(state.opt_state, learning_rate)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), \
            {"loss": loss}

    def eval_step(params, batch):
        return classifier_apply(bert, head, params, batch["input_ids"],
                                batch["attention_mask"], deterministic=True)

    enc_shardings = shardings.params["encoder"]
    return _Programs(
        init=jax.jit(init, in_shardings=(enc_shardings, rep), out_shardings=shardings),
        train_step=jax.jit(train_step, in_shardings=(shardings, batch_sh, rep, rep),
                           out_shardings=(shardings, rep), donate_argnums=(0,)),
        eval_step=jax.jit(eval_step, in_shardings=(shardings.params, batch_sh),
                          out_shardings=rep),
        state_shardings=shardings)


# -------------------------------------------------------------------------------------------
# One task.


def local_rows(batch: dict) -> dict:
    """This process's contiguous share of a global host batch (all of it in one process), as
    ``partitioning.global_batch`` expects."""
    n, i = jax.process_count(), jax.process_index()
    if n == 1:
        return batch
    return {k: v[i * (len(v) // n):(i + 1) * (len(v) // n)] for k, v in batch.items()}


def _device_batch(mesh, batch: dict, keys: Sequence[str]) -> dict:
    return partitioning.global_batch(mesh, local_rows({k: batch[k] for k in keys}))


def predict(programs: _Programs, params, arrays: dict, batch_size: int, mesh,
            num_classes: int) -> np.ndarray:
    """Predictions ``[N]`` for every row of ``arrays`` (the last batch padded and masked)."""
    outputs = []
    with partitioning.activate(mesh):
        for batch in iterate_batches(arrays, batch_size, pad_last=True):
            logits = programs.eval_step(
                params, _device_batch(mesh, batch, ("input_ids", "attention_mask")))
            outputs.append((logits, batch["example_mask"]))
    preds = [np.asarray(predictions_from_logits(np.asarray(jax.device_get(lg)), num_classes))
             [mask > 0] for lg, mask in outputs]
    return np.concatenate(preds) if preds else np.zeros((0,))


def finetune_task(pretrained, task: str | TaskSpec, train_examples: Sequence,
                  dev_examples: Sequence, cfg: FinetuneConfig, mesh=None,
                  extra_dev: dict | None = None, log: Callable[[str], None] | None = print,
                  ) -> dict:
    """Fine-tunes a fresh copy of the pre-trained encoder + a new head on one task.

    pretrained: :class:`~ntng_jax.eval.pretrained.Pretrained` (or any object with
      ``model_cfg``, ``params``, ``tokenizer``); train/dev_examples: reader examples;
    extra_dev: ``{result_key: examples}`` scored once after the last epoch (MNLI-mm).
    Returns ``{'task', 'suite', 'num_train', 'num_dev', 'steps', 'warmup_steps', 'epochs':
    [{'epoch', 'train_loss', 'metrics'}], 'best', 'best_epoch', 'majority_class',
    'majority_rate', 'extra': {key: metrics}, 'seconds'}``.
    """
    spec = get_task(task)
    mesh = mesh or default_mesh()
    divisor = partitioning.batch_divisor(mesh)
    for name in ("batch_size", "eval_batch_size"):
        if getattr(cfg, name) % divisor:
            raise ValueError(f"{name} ({getattr(cfg, name)}) must be a multiple of the number "
                             f"of data-parallel devices ({divisor}).")
    if pretrained.model_cfg.family != "bert":
        raise ValueError(f"{spec.key} fine-tuning needs a BERT checkpoint, not "
                         f"{pretrained.model_cfg.family}.")
    if cfg.max_length > pretrained.model_cfg.max_length:
        raise ValueError(f"max_length {cfg.max_length} exceeds the model's position table "
                         f"({pretrained.model_cfg.max_length}).")
    t0 = time.time()
    tok, C = pretrained.tokenizer, spec.num_classes
    train_examples = subsample(train_examples, cfg.max_train_examples, cfg.seed)
    if cfg.max_eval_examples > 0:
        dev_examples = list(dev_examples)[: cfg.max_eval_examples]
    if len(train_examples) < cfg.batch_size:
        raise ValueError(f"{spec.key} has {len(train_examples)} training examples, fewer than "
                         f"one batch of {cfg.batch_size}.")
    if not dev_examples:
        raise ValueError(f"{spec.key} has no dev examples to evaluate on.")
    train = encode_classification(train_examples, tok, cfg.max_length, C)
    dev = encode_classification(dev_examples, tok, cfg.max_length, C)
    groups = [ex.get("group") for ex in dev_examples] if spec.name == "multirc" else None

    programs = _programs(_frozen(pretrained.model_cfg, cfg.dropout_rate), C, cfg.head_hidden,
                         cfg.head_dropout, cfg.b1, cfg.b2, cfg.eps, cfg.weight_decay, mesh)
    steps_per_epoch = len(train_examples) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    warmup = warmup_steps_for(total, cfg.warmup_fraction)
    rng = jax.random.PRNGKey(cfg.seed)
    shuffle = np.random.default_rng(cfg.seed)
    enc = jax.device_put(encoder_params(pretrained.params),
                         programs.state_shardings.params["encoder"])
    with partitioning.activate(mesh):
        state = programs.init(enc, jax.random.fold_in(rng, 0))

    epochs, step = [], 0
    for epoch in range(1, cfg.epochs + 1):
        te = time.time()
        losses = []
        with partitioning.activate(mesh):
            for batch in iterate_batches(train, cfg.batch_size, rng=shuffle, drop_last=True):
                lr = cosine_warmup_lr(step, total, warmup, cfg.learning_rate)
                state, metrics = programs.train_step(
                    state, _device_batch(mesh, batch, ("input_ids", "attention_mask", "labels")),
                    jax.random.fold_in(rng, step + 1), np.float32(lr))
                losses.append(metrics["loss"])
                step += 1
        train_loss = float(np.mean(jax.device_get(losses))) if losses else float("nan")
        preds = predict(programs, state.params, dev, cfg.eval_batch_size, mesh, C)
        metrics = compute_metrics(spec, dev["labels"], preds, groups=groups)
        epochs.append(dict(epoch=epoch, train_loss=train_loss,
                           metrics={k: float(v) for k, v in metrics.items()}))
        if log:
            shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            log(f"{spec.key} epoch {epoch}/{cfg.epochs}: train loss {train_loss:.4f} | dev "
                f"{shown} ({time.time() - te:.1f} s)")
    extra = {}
    for key, examples in (extra_dev or {}).items():
        arrays = encode_classification(examples, tok, cfg.max_length, C)
        preds = predict(programs, state.params, arrays, cfg.eval_batch_size, mesh, C)
        scores = compute_metrics(spec, arrays["labels"], preds)
        extra[key] = {k: float(v) for k, v in scores.items()}
    best, best_epoch = best_over_epochs(epochs)
    result = dict(task=spec.name, suite=spec.suite, num_train=len(train_examples),
                  num_dev=len(dev_examples), steps=total, warmup_steps=warmup,
                  learning_rate=cfg.learning_rate, epochs=epochs, best=best,
                  best_epoch=best_epoch, extra=extra)
    if not spec.is_regression:
        cls, rate = majority_rate(train["labels"], dev["labels"])
        result.update(majority_class=cls, majority_rate=rate)
    result["seconds"] = time.time() - t0
    return result


# -------------------------------------------------------------------------------------------
# A suite.


def _check_local_files(specs: Sequence[TaskSpec], data_dir) -> None:
    """Fails before any training if a task's local file is missing (one sentence)."""
    from pathlib import Path

    if data_dir is None:
        raise ValueError("Reading local files needs data_dir (the glue/ or superglue/ "
                         "directory).")
    for spec in specs:
        for split, name in spec.files.items():
            path = Path(data_dir) / spec.dir_name / name
            if not path.is_file():
                raise FileNotFoundError(f"{spec.key} needs {path}, which does not exist; "
                                        f"data_dir must be the {spec.suite} directory holding "
                                        f"{spec.dir_name}/{name}.")


def run_suite(pretrained, suite: str, tasks: Sequence[str] | None = None, data_dir=None,
              source: str = "local", cfg: FinetuneConfig | None = None, mesh=None,
              log: Callable[[str], None] | None = print) -> dict:
    """Fine-tunes every task of ``suite`` ('glue' | 'superglue', or the given ``tasks``).

    data_dir: the suite directory of local files (``source='local'``) or the tfds data dir
    (``source='tfds'``). Returns ``{'suite', 'recipe', 'tasks': {name: finetune_task
    result}, 'best': {result_key: best metrics}, 'average': the paper's average}``.
    """
    from ntng_jax.eval.tasks import GLUE_TASKS, SUPERGLUE_TASKS

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
        extra_dev = {f"{spec.name}_mm": load_examples(spec, "dev_mm", data_dir, source)} \
            if "dev_mm" in spec.files else None
        res = finetune_task(pretrained, spec, train, dev, cfg, mesh, extra_dev=extra_dev, log=log)
        results[spec.name] = res
        best[spec.name] = res["best"]
        best.update(res["extra"])
    return dict(suite=suite, recipe=dataclasses.asdict(cfg), tasks=results, best=best,
                average=suite_average(suite, best))
