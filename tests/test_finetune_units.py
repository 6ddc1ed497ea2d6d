"""Fine-tuning pieces that need no pre-trained checkpoint: dropout in training only, the pad
row of the word embedding, the paper's recipes and per-task warmup, the best epoch's metrics."""

import numpy as np
import pytest

# ---------------------------------------------------------------------------------------------
# Dropout and the pad row, as the paper's fine-tuning (no checkpoint needed: a fresh tiny BERT).


def _tiny_bert():
  import flax.linen as nn
  import jax

  from ntng_jax.models import build_model, model_config

  model_cfg = model_config("bert", "tiny")
  example = dict(input_ids=np.zeros((1, 8), np.int32), mlm_positions=np.zeros((1, 1), np.int32))
  params = nn.unbox(build_model(model_cfg).init(jax.random.PRNGKey(0), example))
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 200, (8, 16)).astype(np.int32)
  mask = np.ones_like(ids)
  ids[:4, 10:], mask[:4, 10:] = 0, 0  # half the rows padded (pad id 0)
  return model_cfg, params, ids, mask


def test_finetuning_applies_attention_dropout_in_training_only():
  import jax
  import jax.numpy as jnp

  from ntng_jax.eval import finetune as F
  from ntng_jax.eval import ft_core
  from ntng_jax.eval.heads import ClassificationHead
  from ntng_jax.models import build_model

  for suite in ("glue", "superglue"):  # the original: 0.1 everywhere (arch/bert-c5.yaml)
    recipe = F.paper_recipe(suite)
    assert (recipe.dropout_rate, recipe.attention_dropout_rate, recipe.head_dropout) == (
      0.1,
      0.1,
      0.1,
    )
    model_cfg = F.finetune_model_config(_tiny_bert()[0], recipe)
    assert (model_cfg.dropout_rate, model_cfg.attention_dropout_rate) == (0.1, 0.1)
  model_cfg, params, ids, mask = _tiny_bert()
  head = ClassificationHead(num_classes=3, hidden=32, dropout_rate=0.0)
  params = {
    "encoder": F.encoder_params(params),
    "head": head.init(jax.random.PRNGKey(1), jnp.zeros((1, 1, 64)))["params"],
  }
  # Only attention dropout on (hidden and head dropout off), against every dropout off.
  attn_only = build_model(
    F.finetune_model_config(model_cfg, F.paper_recipe("glue", dropout_rate=0.0))
  ).module
  no_dropout = build_model(ft_core.model_config(model_cfg, 0.0, 0.0)).module

  def apply(bert, deterministic, seed=None):
    rng = None if seed is None else jax.random.PRNGKey(seed)
    return np.asarray(F.classifier_apply(bert, head, params, ids, mask, deterministic, rng))

  train = [apply(attn_only, False, seed) for seed in (1, 2)]
  assert np.abs(train[0] - train[1]).max() > 1e-6  # the dropout masks differ
  reference = apply(no_dropout, True)
  np.testing.assert_array_equal(apply(no_dropout, False, 1), reference)  # nothing else random
  assert np.abs(train[0] - reference).max() > 1e-6
  np.testing.assert_array_equal(apply(attn_only, True), apply(attn_only, True))
  np.testing.assert_array_equal(apply(attn_only, True), reference)  # eval: no dropout


def test_finetuning_step_leaves_the_pad_embedding_row_unchanged():
  import jax

  from ntng_jax import partitioning
  from ntng_jax.eval import finetune as F

  model_cfg, params, ids, mask = _tiny_bert()
  # A pre-trained pad row is not zero (the tied MLM decoder trains it); give it values.
  emb = params["word_embed"]["embedding"]
  params["word_embed"]["embedding"] = emb.at[0].set(
    jax.random.normal(jax.random.PRNGKey(3), emb.shape[1:]) * 0.02
  )
  pad_row = np.asarray(params["word_embed"]["embedding"][0])
  recipe = F.paper_recipe("glue", learning_rate=1e-2)
  mesh = F.default_mesh()
  programs = F._programs(
    F.finetune_model_config(model_cfg, recipe),
    2,
    recipe.head_hidden,
    recipe.head_dropout,
    recipe.b1,
    recipe.b2,
    recipe.eps,
    recipe.weight_decay,
    mesh,
  )
  enc = jax.device_put(F.encoder_params(params), programs.state_shardings.params["encoder"])
  labels = np.arange(len(ids), dtype=np.int32) % 2
  with partitioning.activate(mesh):
    state = programs.init(enc, jax.random.PRNGKey(0))
    # With the padding mask, and with pad tokens attended (as the original's FlashMHA path
    # did), so that the lookup of pad positions does feed the loss.
    for step, attention_mask in enumerate((mask, np.ones_like(mask))):
      batch = dict(input_ids=ids, attention_mask=attention_mask, labels=labels)
      state, _ = programs.train_step(
        state,
        F.device_batch(mesh, batch, tuple(batch)),
        jax.random.PRNGKey(step),
        np.float32(1e-2),
      )
  table = np.asarray(state.params["encoder"]["word_embed"]["embedding"])
  np.testing.assert_array_equal(table[0], pad_row)
  used = int(ids[0, 0])
  assert not np.allclose(table[used], np.asarray(params["word_embed"]["embedding"][used]))


# ---------------------------------------------------------------------------------------------
# The recipe.


def test_paper_recipes_and_per_task_warmup():
  from ntng_jax.eval.finetune import cosine_warmup_lr, paper_recipe, warmup_steps_for
  from ntng_jax.eval.sni_finetune import SNIConfig

  glue, sg = paper_recipe("glue"), paper_recipe("superglue")
  assert (glue.learning_rate, glue.epochs, glue.batch_size, glue.max_length) == (4e-5, 5, 16, 128)
  assert (sg.learning_rate, sg.epochs) == (5e-5, 10)
  assert (glue.b1, glue.b2, glue.eps, glue.weight_decay, glue.warmup_fraction) == (
    0.9,
    0.98,
    1e-6,
    0.0,
    0.1,
  )
  assert paper_recipe("glue", epochs=1, learning_rate=None).epochs == 1
  sni = SNIConfig()
  assert (
    sni.learning_rate,
    sni.epochs,
    sni.batch_size,
    sni.max_source_len,
    sni.max_target_len,
  ) == (5e-5, 2, 8, 1024, 128)
  # CoLA (8551 // 16 * 5 steps) and RTE (2490 // 16 * 5) each get 10 % of their own steps
  # (the original reused CoLA's warmup for every later task).
  cola, rte = 8551 // 16 * 5, 2490 // 16 * 5
  assert warmup_steps_for(cola, 0.1) == 267 and warmup_steps_for(rte, 0.1) == 78
  lrs = [cosine_warmup_lr(s, rte, 78, 4e-5) for s in range(rte)]
  assert np.argmax(lrs) in (77, 78) and max(lrs) == pytest.approx(4e-5, rel=1e-3)
  assert all(b > a for a, b in zip(lrs[:78], lrs[1:78]))
  assert all(b <= a for a, b in zip(lrs[78:], lrs[79:]))
  assert 0 < lrs[0] < 1e-6 and 0 < lrs[-1] < 1e-9


def test_best_metric_is_the_max_over_epochs():
  from ntng_jax.eval.finetune import best_over_epochs, majority_rate

  epochs = [
    dict(epoch=1, metrics={"mcc": 0.1, "accuracy": 0.8}),
    dict(epoch=2, metrics={"mcc": 0.3, "accuracy": 0.7}),
    dict(epoch=3, metrics={"mcc": float("nan"), "accuracy": 0.75}),
  ]
  best, best_epoch = best_over_epochs(epochs)
  assert best == {"mcc": 0.3, "accuracy": 0.8} and best_epoch == {"mcc": 2, "accuracy": 1}
  assert majority_rate([0, 1, 1, 1], [0, 0, 1]) == (1, pytest.approx(1 / 3))
