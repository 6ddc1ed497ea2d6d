"""T5 fine-tuning and evaluation on Super-NaturalInstructions (paper-facts §5, nanoT5 ``ft``).

Data: :func:`ntng_jax.eval.sni.load_sni` (definition + 2 positive examples, no task name, no
negatives, no explanations; ≤100 instances per task; a positive example that would push the
source past ``max_source_len`` tokens is left out). Source ≤1024 tokens and target ≤128 (both
EOS-terminated; smaller caps are allowed for CPU runs).

Recipe (:class:`SNIConfig` defaults): AdamW lr 5e-5 constant (no warmup, no weight decay, no
clipping; HF betas 0.9/0.999, eps 1e-8), batch 8, 2 epochs, fp32, the pre-training dropout
(0.0) unless overridden. Training batches are shuffled; the last partial batch is padded and
masked (no example is dropped). The loss is the token-weighted mean cross-entropy.

Evaluation: greedy decoding up to ``max_target_len`` tokens with the KV cache
(:func:`ntng_jax.models.greedy_decode`), then Rouge-L (rouge_score, Porter stemming) x100 of
each prediction against its best reference, averaged over the test examples of each task and
over all test examples (``rouge_l``, the paper's number).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ntng_jax import partitioning
from ntng_jax.eval.encoding import encode_seq2seq, iterate_batches
from ntng_jax.eval.finetune import default_mesh, local_rows, subsample
from ntng_jax.eval.metrics import rouge_l
from ntng_jax.eval.sni import load_sni
from ntng_jax.models import build_model, greedy_decode, losses
from ntng_jax.train.state import TrainState
from ntng_jax.train.step import set_learning_rate

__all__ = ["SNIConfig", "load_sni_splits", "train_sni", "generate", "evaluate_sni", "run_sni",
           "decode_ids"]

_TRAIN_KEYS = ("encoder_input_ids", "encoder_mask", "decoder_input_ids", "targets",
               "target_weights", "example_mask")


@dataclasses.dataclass(frozen=True)
class SNIConfig:
    """SNI fine-tuning hyper-parameters (defaults: the paper's)."""

    learning_rate: float = 5e-5
    epochs: int = 2
    batch_size: int = 8
    eval_batch_size: int = 8
    max_source_len: int = 1024
    max_target_len: int = 128      # also the greedy decoding length
    max_instances: int = 100       # per task
    num_pos_examples: int = 2
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    dropout_rate: float | None = None  # None = the pre-training model's (0.0)
    seed: int = 0
    max_train_examples: int = 0    # 0 = all; else a seeded random subset
    max_eval_examples: int = 0     # 0 = all; else the first that many per task

    def replace(self, **changes) -> "SNIConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _mesh(mesh):
    return default_mesh() if mesh is None else mesh


def load_sni_splits(data_dir, tokenizer, cfg: SNIConfig, tasks: Sequence[str] | None = None,
                    ) -> dict[str, list]:
    """``{'train': [...], 'test': [...]}`` SNI examples, restricted to ``tasks`` (task file
    names without ``.json``) if given, capped by ``max_train_examples`` (seeded subset) and
    ``max_eval_examples`` (the first ones of each task)."""
    limit = cfg.max_source_len - 1  # EOS is appended at encoding time
    splits = load_sni(data_dir, max_instances=cfg.max_instances,
                      num_pos_examples=cfg.num_pos_examples, seed=cfg.seed,
                      fits=lambda text: len(tokenizer.encode(text)) <= limit)
    if tasks:
        known = sorted({ex["task"] for side in splits.values() for ex in side})
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise ValueError(f"Unknown SNI task(s) {', '.join(unknown)}; the tasks in {data_dir} "
                             f"are: {', '.join(known)}.")
        splits = {k: [ex for ex in v if ex["task"] in tasks] for k, v in splits.items()}
    train = subsample(splits["train"], cfg.max_train_examples, cfg.seed)
    test = splits["test"]
    if cfg.max_eval_examples > 0:
        kept, seen = [], {}
        for ex in test:
            seen[ex["task"]] = seen.get(ex["task"], 0) + 1
            if seen[ex["task"]] <= cfg.max_eval_examples:
                kept.append(ex)
        test = kept
    if not train:
        raise ValueError(f"no SNI training instances in {data_dir} for the chosen tasks (the "
                         f"split file puts every chosen task on the test side).")
    if not test:
        raise ValueError(f"no SNI test instances in {data_dir} for the chosen tasks.")
    return {"train": train, "test": test}


def _check_ids(tokenizer) -> None:
    from ntng_jax.models import t5 as t5_lib
    if tokenizer.pad_id != t5_lib.PAD_ID or tokenizer.eos_id != t5_lib.EOS_ID:
        raise ValueError(f"the T5 tokenizer has pad id {tokenizer.pad_id} and EOS id "
                         f"{tokenizer.eos_id}, but decoding starts from {t5_lib.PAD_ID} and stops "
                         f"at {t5_lib.EOS_ID}; retrain it with pad_id=0, eos_id=1.")


def _model(model_cfg, dropout_rate):
    cfg = ml_collections.ConfigDict(dict(model_cfg))
    if dropout_rate is not None:
        cfg.dropout_rate = float(dropout_rate)
    return build_model(cfg)


@functools.lru_cache(maxsize=8)
def _train_program(model_cfg: ml_collections.FrozenConfigDict, dropout_rate, b1, b2, eps,
                   weight_decay, mesh):
    model = _model(model_cfg, dropout_rate)
    deterministic = float(model.cfg.dropout_rate) == 0.0
    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, b1=b1, b2=b2, eps=eps,
                                               weight_decay=weight_decay)
    example = dict(encoder_input_ids=np.zeros((1, 8), np.int32),
                   decoder_input_ids=np.zeros((1, 4), np.int32))

    def boxed_state(rng):
        params = model.init(rng, example)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), method_state={})

    with partitioning.rules_context():
        abstract = jax.eval_shape(boxed_state, jax.random.PRNGKey(0))
        shardings = partitioning.logical_shardings(mesh, abstract)
    rep, batch_sh = partitioning.replicated(mesh), partitioning.batch_sharding(mesh)

    def init(params):
        params = jax.tree.map(jnp.copy, params)  # the state is donated; keep the originals
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), method_state={})

    def loss_fn(params, batch, rng):
        logits, labels, weights = model.logits(params, batch, deterministic=deterministic,
                                               rng=None if deterministic else rng)
        weights = weights * batch["example_mask"][:, None]
        return losses.mean_token_loss(logits, labels, weights)

    def train_step(state, batch, rng, learning_rate):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng)
        opt_state = set_learning_rate(state.opt_state, learning_rate)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), \
            {"loss": loss}

    return (jax.jit(init, in_shardings=(shardings.params,), out_shardings=shardings),
            jax.jit(train_step, in_shardings=(shardings, batch_sh, rep, rep),
                    out_shardings=(shardings, rep), donate_argnums=(0,)),
            shardings.params)


@functools.lru_cache(maxsize=8)
def _decode_program(model_cfg: ml_collections.FrozenConfigDict, max_decode_len: int,
                    use_cache: bool, mesh):
    model = build_model(model_cfg)
    example = dict(encoder_input_ids=np.zeros((1, 8), np.int32),
                   decoder_input_ids=np.zeros((1, 4), np.int32))
    with partitioning.rules_context():
        abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), example)
        param_sh = partitioning.logical_shardings(mesh, abstract)
    batch_sh, rep = partitioning.batch_sharding(mesh), partitioning.replicated(mesh)

    def decode(params, encoder_input_ids, encoder_mask):
        return greedy_decode(model, params, encoder_input_ids, max_decode_len,
                             encoder_mask=encoder_mask, use_cache=use_cache)

    return jax.jit(decode, in_shardings=(param_sh, batch_sh, batch_sh), out_shardings=rep), \
        param_sh


def _frozen(model_cfg) -> ml_collections.FrozenConfigDict:
    return ml_collections.FrozenConfigDict(ml_collections.ConfigDict(dict(model_cfg)))


def train_sni(pretrained, train_examples: Sequence, cfg: SNIConfig, mesh=None,
              log: Callable[[str], None] | None = print) -> tuple[Any, list[dict]]:
    """Fine-tunes a copy of the pre-trained T5 on ``train_examples``; returns
    ``(params, [{'epoch', 'train_loss', 'steps', 'seconds'}])``."""
    mesh = _mesh(mesh)
    divisor = partitioning.batch_divisor(mesh)
    if cfg.batch_size % divisor or cfg.eval_batch_size % divisor:
        raise ValueError(f"batch sizes must be multiples of the number of data-parallel "
                         f"devices ({divisor}).")
    if pretrained.model_cfg.family != "t5":
        raise ValueError(f"SNI fine-tuning needs a T5 checkpoint, not "
                         f"{pretrained.model_cfg.family}.")
    tok = pretrained.tokenizer
    _check_ids(tok)
    arrays = encode_seq2seq(train_examples, tok, cfg.max_source_len, cfg.max_target_len,
                            pad_to_max=False)
    init, train_step, param_shardings = _train_program(
        _frozen(pretrained.model_cfg), cfg.dropout_rate, cfg.b1, cfg.b2, cfg.eps,
        cfg.weight_decay, mesh)
    rng = jax.random.PRNGKey(cfg.seed)
    shuffle = np.random.default_rng(cfg.seed)
    history, step = [], 0
    with partitioning.activate(mesh):
        state = init(jax.device_put(pretrained.params, param_shardings))
        for epoch in range(1, cfg.epochs + 1):
            t0, epoch_losses = time.time(), []
            for batch in iterate_batches(arrays, cfg.batch_size, rng=shuffle, pad_last=True):
                batch = partitioning.global_batch(
                    mesh, local_rows({k: batch[k] for k in _TRAIN_KEYS}))
                state, metrics = train_step(state, batch, jax.random.fold_in(rng, step),
                                            np.float32(cfg.learning_rate))  # constant rate
                epoch_losses.append(metrics["loss"])
                step += 1
            loss = float(np.mean(jax.device_get(epoch_losses)))
            history.append(dict(epoch=epoch, train_loss=loss, steps=len(epoch_losses),
                                seconds=time.time() - t0))
            if log:
                log(f"sni epoch {epoch}/{cfg.epochs}: train loss {loss:.4f} "
                    f"({len(epoch_losses)} steps, {time.time() - t0:.1f} s)")
    return state.params, history


def decode_ids(tokenizer, ids) -> str:
    """Text of generated ids, cut at the first EOS."""
    ids = [int(i) for i in ids]
    if tokenizer.eos_id in ids:
        ids = ids[: ids.index(tokenizer.eos_id)]
    return tokenizer.decode([i for i in ids if i != tokenizer.pad_id])


def generate(pretrained, params, examples: Sequence, cfg: SNIConfig, mesh=None,
             use_cache: bool = True, return_ids: bool = False):
    """Greedy predictions (strings; with ``return_ids`` also the ``[N, max_target_len]`` ids)
    for ``examples`` (``source`` fields), ``eval_batch_size`` at a time."""
    mesh = _mesh(mesh)
    tok = pretrained.tokenizer
    _check_ids(tok)
    arrays = encode_seq2seq(examples, tok, cfg.max_source_len, cfg.max_target_len,
                            pad_to_max=False)
    arrays = {k: arrays[k] for k in ("encoder_input_ids", "encoder_mask")}
    decode, param_shardings = _decode_program(_frozen(pretrained.model_cfg), cfg.max_target_len,
                                              use_cache, mesh)
    params = jax.device_put(params, param_shardings)
    outs = []
    with partitioning.activate(mesh):
        for batch in iterate_batches(arrays, cfg.eval_batch_size, pad_last=True):
            dev_batch = partitioning.global_batch(
                mesh, local_rows({k: batch[k] for k in ("encoder_input_ids", "encoder_mask")}))
            ids = decode(params, dev_batch["encoder_input_ids"], dev_batch["encoder_mask"])
            outs.append((ids, batch["example_mask"]))
    ids = np.concatenate([np.asarray(jax.device_get(i))[m > 0] for i, m in outs])
    texts = [decode_ids(tok, row) for row in ids]
    return (texts, ids) if return_ids else texts


def evaluate_sni(pretrained, params, test_examples: Sequence, cfg: SNIConfig, mesh=None,
                 use_cache: bool = True) -> dict:
    """``{'rouge_l': overall x100, 'tasks': {task: {'rouge_l', 'num_examples'}},
    'num_test', 'samples': the first few (task, source tail, prediction, references)}``."""
    preds = generate(pretrained, params, test_examples, cfg, mesh, use_cache)
    refs = [ex["references"] for ex in test_examples]
    by_task: dict[str, list[int]] = {}
    for i, ex in enumerate(test_examples):
        by_task.setdefault(ex["task"], []).append(i)
    tasks = {t: dict(rouge_l=rouge_l([preds[i] for i in idx], [refs[i] for i in idx]),
                     num_examples=len(idx)) for t, idx in by_task.items()}
    samples = [dict(task=test_examples[idx[0]]["task"], prediction=preds[idx[0]],
                    references=refs[idx[0]]) for idx in by_task.values()]
    return dict(rouge_l=rouge_l(preds, refs), tasks=tasks, num_test=len(preds),
                samples=samples)


def run_sni(pretrained, data_dir, cfg: SNIConfig | None = None,
            tasks: Sequence[str] | None = None, mesh=None,
            log: Callable[[str], None] | None = print, return_params: bool = False):
    """Loads SNI from ``data_dir``, fine-tunes, decodes the test side and scores it.

    Returns ``{'suite': 'sni', 'recipe', 'num_train', 'epochs', 'rouge_l', 'tasks', 'num_test',
    'samples', 'seconds'}`` (and the fine-tuned params with ``return_params``)."""
    cfg = cfg or SNIConfig()
    mesh = _mesh(mesh)
    t0 = time.time()
    splits = load_sni_splits(data_dir, pretrained.tokenizer, cfg, tasks)
    if log:
        log(f"SNI: {len(splits['train'])} training and {len(splits['test'])} test instances.")
    params, history = train_sni(pretrained, splits["train"], cfg, mesh, log)
    result = evaluate_sni(pretrained, params, splits["test"], cfg, mesh)
    result = dict(suite="sni", recipe=dataclasses.asdict(cfg), num_train=len(splits["train"]),
                  epochs=history, **result, seconds=time.time() - t0)
    if log:
        log(f"SNI Rouge-L {result['rouge_l']:.2f} over {result['num_test']} test instances.")
    return (result, params) if return_params else result
