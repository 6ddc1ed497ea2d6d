"""T5 fine-tuning and evaluation on Super-NaturalInstructions (docs/paper.md §5, nanoT5 ``ft``).

Data (:mod:`ntng_jax.eval.sni`): definition + 2 positive examples; source ≤ ``max_source_len``
(1024) and target ≤ ``max_target_len`` (128) tokens, EOS-terminated; an instance with several
outputs trains on one drawn anew every epoch (seeded); the split rule is recorded under
``split``. Recipe (:func:`SNIConfig`; step and epoch loop from :mod:`ntng_jax.eval.ft_core`):
AdamW lr 5e-5 constant (betas 0.9/0.999, eps 1e-8, no weight decay or clipping), batch 8, 2
epochs, fp32, the pre-training dropout unless overridden; the last partial batch is padded and
masked; token-weighted mean cross-entropy. Evaluation: greedy decoding with the KV cache, then
Rouge-L ×100 per task and overall (:mod:`ntng_jax.eval.sni_scoring`): ``rouge_l_official``
(best reference) and ``rouge_l_paper`` (one random reference cut to ``max_target_len``; the
paper's figure, also reported as ``rouge_l``).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ntng_jax import partitioning
from ntng_jax.eval import ft_core
from ntng_jax.eval.encoding import encode_seq2seq, encode_targets, iterate_batches, target_width
from ntng_jax.eval.ft_core import default_mesh, device_batch, subsample
from ntng_jax.eval.sni import draw_targets, load_sni, split_tasks
from ntng_jax.eval.sni_scoring import decode_text, score_sni
from ntng_jax.models import build_model, greedy_decode, losses
from ntng_jax.models import t5 as t5_lib
from ntng_jax.train import programs as programs_lib

__all__ = [
  "SNIConfig",
  "load_sni_splits",
  "train_sni",
  "generate",
  "evaluate_sni",
  "run_sni",
  "decode_ids",
]

_TARGET_DRAW_TAG = 0x5E1  # separates the target draws from the shuffling stream
_TRAIN_KEYS = (
  "encoder_input_ids",
  "encoder_mask",
  "decoder_input_ids",
  "targets",
  "target_weights",
  "example_mask",
)


# SNI fields beyond ft_core.COMMON_FIELDS (whose defaults are the paper's SNI recipe).
FIELDS = dict(
  max_source_len=1024,
  max_target_len=128,  # also the greedy decoding length
  max_instances=100,  # per task
  num_pos_examples=2,
  dropout_rate=None,  # None = the pre-training model's (0.0)
)


def SNIConfig(**overrides) -> ml_collections.ConfigDict:  # noqa: N802 -- a config type
  """SNI fine-tuning hyper-parameters as an ml_collections ConfigDict (defaults: the
  paper's); keyword ``overrides`` that are not None replace fields."""
  return ft_core.make_config(FIELDS, **overrides)


def _mesh(mesh):
  return default_mesh() if mesh is None else mesh


def load_sni_splits(
  data_dir,
  tokenizer,
  cfg,
  tasks: Sequence[str] | None = None,
) -> dict[str, list]:
  """``{'train': [...], 'test': [...], 'split': {...}}``: SNI examples, restricted to
  ``tasks`` (task file names without ``.json``) if given, capped by ``max_train_examples``
  (seeded subset) and ``max_eval_examples`` (the first ones of each task); ``split`` says
  which rule chose the train tasks and how many tasks each side has."""
  limit = cfg.max_source_len - 1  # EOS is appended at encoding time
  splits = load_sni(
    data_dir,
    max_instances=cfg.max_instances,
    num_pos_examples=cfg.num_pos_examples,
    seed=cfg.seed,
    fits=lambda text: len(tokenizer.encode(text)) <= limit,
  )
  if tasks:
    known = sorted({ex["task"] for side in splits.values() for ex in side})
    unknown = [t for t in tasks if t not in known]
    if unknown:
      raise ValueError(
        f"Unknown SNI task(s) {', '.join(unknown)}; the tasks in {data_dir} "
        f"are: {', '.join(known)}."
      )
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
    raise ValueError(
      f"no SNI training instances in {data_dir} for the chosen tasks (the "
      f"split file puts every chosen task on the test side)."
    )
  if not test:
    raise ValueError(f"no SNI test instances in {data_dir} for the chosen tasks.")
  names = sorted(p.stem for p in (Path(data_dir) / "tasks").glob("*.json"))
  rule = split_tasks(data_dir, names)
  split = dict(
    rule=rule.rule,
    train_tasks=len({ex["task"] for ex in train}),
    test_tasks=len({ex["task"] for ex in test}),
    missing_test_tasks=len(rule.missing_test),
  )
  return {"train": train, "test": test, "split": split}


def _check_ids(tokenizer) -> None:
  if tokenizer.pad_id != t5_lib.PAD_ID or tokenizer.eos_id != t5_lib.EOS_ID:
    raise ValueError(
      f"the T5 tokenizer has pad id {tokenizer.pad_id} and EOS id "
      f"{tokenizer.eos_id}, but decoding starts from {t5_lib.PAD_ID} and stops "
      f"at {t5_lib.EOS_ID}; retrain it with pad_id=0, eos_id=1."
    )


@functools.lru_cache(maxsize=8)
def _train_program(
  model_cfg: ml_collections.FrozenConfigDict, dropout_rate, b1, b2, eps, weight_decay, mesh
) -> ft_core.Programs:
  model = build_model(ft_core.model_config(model_cfg, dropout_rate))
  deterministic = float(model.cfg.dropout_rate) == 0.0
  example = dict(
    encoder_input_ids=np.zeros((1, 8), np.int32), decoder_input_ids=np.zeros((1, 4), np.int32)
  )

  def loss_fn(params, batch, rng):
    logits, labels, weights = model.logits(
      params, batch, deterministic=deterministic, rng=None if deterministic else rng
    )
    weights = weights * batch["example_mask"][:, None]
    return losses.mean_token_loss(logits, labels, weights)

  return ft_core.build_programs(
    lambda rng: model.init(rng, example),
    lambda params: jax.tree.map(jnp.copy, params),  # the state is donated; keep the originals
    lambda sh, rep: (sh,),
    loss_fn,
    ft_core.adamw(b1, b2, eps, weight_decay),
    mesh,
  )


@functools.lru_cache(maxsize=8)
def _decode_program(
  model_cfg: ml_collections.FrozenConfigDict, max_decode_len: int, use_cache: bool, mesh
):
  model = build_model(model_cfg)
  param_sh = programs_lib.param_shardings(model, mesh)

  def decode(params, encoder_input_ids, encoder_mask):
    return greedy_decode(
      model,
      params,
      encoder_input_ids,
      max_decode_len,
      encoder_mask=encoder_mask,
      use_cache=use_cache,
    )

  return programs_lib.jit_decode(decode, param_sh, mesh), param_sh


def train_sni(
  pretrained, train_examples: Sequence, cfg, mesh=None, log: Callable[[str], None] | None = print
) -> tuple[Any, list[dict]]:
  """Fine-tunes a copy of the pre-trained T5 on ``train_examples``; returns
  ``(params, [{'epoch', 'train_loss', 'steps', 'seconds'}])``."""
  mesh = _mesh(mesh)
  ft_core.check_batch_sizes(
    mesh, ("batch_size", cfg.batch_size), ("eval_batch_size", cfg.eval_batch_size)
  )
  if pretrained.model_cfg.family != "t5":
    raise ValueError(f"SNI fine-tuning needs a T5 checkpoint, not {pretrained.model_cfg.family}.")
  tok = pretrained.tokenizer
  _check_ids(tok)
  arrays = encode_seq2seq(
    train_examples, tok, cfg.max_source_len, cfg.max_target_len, pad_to_max=False
  )
  # Several references: each epoch trains on a fresh random one per example (the original
  # collator's random.choice), padded to one width so that the step compiles once.
  redraw = any(len(ex.get("references") or ()) > 1 for ex in train_examples)
  if redraw:
    width = target_width(
      [r for ex in train_examples for r in ex["references"]], tok, cfg.max_target_len
    )
    draws = np.random.default_rng([cfg.seed, _TARGET_DRAW_TAG])
  programs = _train_program(
    ft_core.model_config(pretrained.model_cfg),
    cfg.dropout_rate,
    cfg.b1,
    cfg.b2,
    cfg.eps,
    cfg.weight_decay,
    mesh,
  )
  rng = jax.random.PRNGKey(cfg.seed)
  shuffle = np.random.default_rng(cfg.seed)
  with partitioning.activate(mesh):
    state = programs.init(jax.device_put(pretrained.params, programs.state_shardings.params))

  def batches(epoch):
    del epoch
    if redraw:
      arrays.update(
        encode_targets(draw_targets(train_examples, draws), tok, cfg.max_target_len, width)
      )
    return iterate_batches(arrays, cfg.batch_size, rng=shuffle, pad_last=True)

  def after_epoch(epoch, state, train_loss, steps, started):
    del state
    if log:
      log(
        f"sni epoch {epoch}/{cfg.epochs}: train loss {train_loss:.4f} "
        f"({steps} steps, {time.time() - started:.1f} s)"
      )
    return dict(epoch=epoch, train_loss=train_loss, steps=steps, seconds=time.time() - started)

  state, history = ft_core.run_epochs(
    programs,
    state,
    mesh,
    cfg.epochs,
    batches,
    _TRAIN_KEYS,
    learning_rate=lambda step: cfg.learning_rate,  # constant rate
    step_rng=lambda step: jax.random.fold_in(rng, step),
    after_epoch=after_epoch,
  )
  return state.params, history


def decode_ids(tokenizer, ids) -> str:
  """Text of generated ids, cut at the first EOS, special tokens dropped, stripped."""
  return decode_text(tokenizer, ids)


def generate(
  pretrained,
  params,
  examples: Sequence,
  cfg,
  mesh=None,
  use_cache: bool = True,
  return_ids: bool = False,
):
  """Greedy predictions (strings; with ``return_ids`` also the ``[N, max_target_len]`` ids)
  for ``examples`` (``source`` fields), ``eval_batch_size`` at a time."""
  mesh = _mesh(mesh)
  tok = pretrained.tokenizer
  _check_ids(tok)
  arrays = encode_seq2seq(examples, tok, cfg.max_source_len, cfg.max_target_len, pad_to_max=False)
  arrays = {k: arrays[k] for k in ("encoder_input_ids", "encoder_mask")}
  decode, param_shardings = _decode_program(
    ft_core.model_config(pretrained.model_cfg), cfg.max_target_len, use_cache, mesh
  )
  params = jax.device_put(params, param_shardings)
  outs = []
  with partitioning.activate(mesh):
    for batch in iterate_batches(arrays, cfg.eval_batch_size, pad_last=True):
      dev_batch = device_batch(mesh, batch, ("encoder_input_ids", "encoder_mask"))
      ids = decode(params, dev_batch["encoder_input_ids"], dev_batch["encoder_mask"])
      outs.append((ids, batch["example_mask"]))
  ids = np.concatenate([np.asarray(jax.device_get(i))[m > 0] for i, m in outs])
  texts = [decode_ids(tok, row) for row in ids]
  return (texts, ids) if return_ids else texts


def evaluate_sni(
  pretrained, params, test_examples: Sequence, cfg, mesh=None, use_cache: bool = True
) -> dict:
  """Scores of greedy decodes of ``test_examples``: ``rouge_l_paper``, ``rouge_l_official``
  and ``rouge_l`` (= ``rouge_l_paper``), overall x100; ``tasks``: the three per task plus
  ``num_examples``; ``num_test``; ``samples``: each task's first (task, prediction,
  references, paper_reference)."""
  preds = generate(pretrained, params, test_examples, cfg, mesh, use_cache)
  scores = score_sni(preds, test_examples, pretrained.tokenizer, cfg.max_target_len, cfg.seed)
  first: dict[str, int] = {}
  for i, ex in enumerate(test_examples):
    first.setdefault(ex["task"], i)
  samples = [
    dict(
      task=t,
      prediction=preds[i],
      references=test_examples[i]["references"],
      paper_reference=scores["paper_references"][i],
    )
    for t, i in first.items()
  ]
  return dict(
    rouge_l=scores["rouge_l"],
    rouge_l_paper=scores["rouge_l_paper"],
    rouge_l_official=scores["rouge_l_official"],
    tasks=scores["tasks"],
    num_test=len(preds),
    samples=samples,
  )


def run_sni(
  pretrained,
  data_dir,
  cfg=None,
  tasks: Sequence[str] | None = None,
  mesh=None,
  log: Callable[[str], None] | None = print,
  return_params: bool = False,
):
  """Loads SNI from ``data_dir``, fine-tunes, decodes the test side and scores it.

  Returns ``{'suite': 'sni', 'recipe', 'split', 'num_train', 'epochs', 'rouge_l',
  'rouge_l_paper', 'rouge_l_official', 'tasks', 'num_test', 'samples', 'seconds'}`` (and the
  fine-tuned params with ``return_params``)."""
  cfg = cfg or SNIConfig()
  mesh = _mesh(mesh)
  t0 = time.time()
  splits = load_sni_splits(data_dir, pretrained.tokenizer, cfg, tasks)
  if log:
    sp = splits["split"]
    log(
      f"SNI: {len(splits['train'])} training instances from {sp['train_tasks']} tasks "
      f"({sp['rule']}), {len(splits['test'])} test instances from {sp['test_tasks']} "
      f"tasks ({sp['missing_test_tasks']} listed test tasks have no file)."
    )
  params, history = train_sni(pretrained, splits["train"], cfg, mesh, log)
  result = evaluate_sni(pretrained, params, splits["test"], cfg, mesh)
  result = dict(
    suite="sni",
    recipe=cfg.to_dict(),
    split=splits["split"],
    num_train=len(splits["train"]),
    epochs=history,
    **result,
    seconds=time.time() - t0,
  )
  if log:
    log(
      f"SNI Rouge-L {result['rouge_l_paper']:.2f} as the paper's code scored it (one "
      f"random reference), {result['rouge_l_official']:.2f} as SNI scores it (best "
      f"reference), over {result['num_test']} test instances."
    )
  return (result, params) if return_params else result
