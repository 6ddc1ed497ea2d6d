"""Attention implementations and layer-stack loops against the reference path (einsum
attention, scanned layers): outputs and gradients agree in float32 (issue 16, issue 17.1)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntng_jax.models import build_model, greedy_decode, losses, model_config, stack
from ntng_jax.models import layers as L

B, S, P, SI, ST = 2, 16, 5, 12, 6
TOL = dict(rtol=1e-5, atol=1e-5)


def on_gpu() -> bool:
  return jax.devices()[0].platform == "gpu"


IMPLS = [
  "xla",
  pytest.param(
    "cudnn", marks=pytest.mark.skipif(not on_gpu(), reason="cuDNN attention needs an NVIDIA GPU")
  ),
]


def batch_of(family, vocab):
  k = jax.random.split(jax.random.key(0), 4)
  if family == "bert":
    return dict(
      input_ids=jax.random.randint(k[0], (B, S), 1, vocab),
      mlm_positions=jax.random.randint(k[1], (B, P), 0, S),
      mlm_labels=jax.random.randint(k[2], (B, P), 1, vocab),
      mlm_weights=jnp.ones((B, P), jnp.float32),
      attention_mask=jnp.ones((B, S), jnp.int32).at[0, -4:].set(0),
    )
  targets = jax.random.randint(k[1], (B, ST), 2, vocab)
  return dict(
    encoder_input_ids=jax.random.randint(k[0], (B, SI), 2, vocab),
    decoder_input_ids=jnp.pad(targets[:, :-1], ((0, 0), (1, 0))),
    targets=targets,
    target_weights=jnp.ones((B, ST), jnp.float32),
    encoder_mask=jnp.ones((B, SI), jnp.int32).at[1, -3:].set(0),
  )


@functools.lru_cache(maxsize=None)
def case(family, **overrides):
  """(model, unboxed params, batch) of a 3-layer tiny model with `overrides`."""
  model = build_model(model_config(family, "tiny", num_layers=3, **overrides))
  batch = batch_of(family, model.cfg.vocab_size)
  params = nn.unbox(
    jax.jit(build_model(model_config(family, "tiny", num_layers=3)).init)(jax.random.key(1), batch)
  )
  return model, params, batch


def loss_and_grads(model, params, batch, keep=None):
  """(logits, grads of the mean token loss), one compiled program."""

  def fn(p):
    logits, labels, weights = model.logits(p, batch, keep=keep)
    return losses.mean_token_loss(logits, labels, weights), logits

  grads, logits = jax.jit(jax.grad(fn, has_aux=True))(params)
  return logits, grads


def assert_same(a, b):
  (la, ga), (lb, gb) = a, b
  np.testing.assert_allclose(la, lb, **TOL)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, **TOL)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", ["bert", "t5"])
def test_attention_impl_matches_einsum(family, impl):
  model, params, batch = case(family, attention_impl=impl)
  ref, _, _ = case(family, attention_impl="einsum")
  keep = jnp.array([True, False, True])
  assert_same(loss_and_grads(model, params, batch, keep), loss_and_grads(ref, params, batch, keep))


@pytest.mark.parametrize("impl", IMPLS)
def test_attention_function_matches_reference(impl):
  k = jax.random.split(jax.random.key(2), 5)
  q, kk, v = (jax.random.normal(k[i], (2, 7, 3, 8)) for i in range(3))
  bias = jax.random.normal(k[3], (1, 3, 7, 7))  # a learned bias gets its gradient too
  mask_bias = L.padding_bias(jnp.ones((2, 7)).at[1, -2:].set(0))

  def run(fn):
    out = lambda q, kk, v, b: fn(q, kk, v, b)
    val = out(q, kk, v, bias)
    grads = jax.grad(lambda *a: jnp.sum(jnp.sin(out(*a))), argnums=(0, 1, 2, 3))(q, kk, v, bias)
    return val, grads

  ref = run(lambda q, kk, v, b: L.dot_product_attention(q, kk, v, L.add_biases(b, mask_bias), 0.3))
  got = run(lambda q, kk, v, b: L.attention(q, kk, v, b, mask_bias, 0.3, impl=impl))
  assert_same(got, ref)


@pytest.mark.parametrize("impl", IMPLS)
def test_greedy_decode_with_impl_matches_einsum(impl):
  model, params, batch = case("t5", attention_impl=impl)
  ref, _, _ = case("t5", attention_impl="einsum")
  ids, mask = batch["encoder_input_ids"], batch["encoder_mask"]
  decode = lambda m: jax.jit(lambda p: greedy_decode(m, p, ids, 6, mask))(params)
  np.testing.assert_array_equal(decode(model), decode(ref))


def test_attention_dropout_uses_a_path_that_supports_it():
  model, params, batch = case("bert", attention_impl="xla", attention_dropout_rate=0.2)
  fwd = jax.jit(lambda p, rng: model.logits(p, batch, deterministic=False, rng=rng)[0])
  a, b = fwd(params, jax.random.key(3)), fwd(params, jax.random.key(4))
  assert np.all(np.isfinite(a)) and not np.allclose(a, b)


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_unrolled_layer_loop_matches_scan(family):
  model, params, batch = case(family, layer_loop="unroll")
  ref, _, _ = case(family, layer_loop="scan")
  assert_same(loss_and_grads(model, params, batch), loss_and_grads(ref, params, batch))
  keep = jnp.array([False, True, True])  # layer dropping still runs layers under lax.cond
  fwd = jax.jit(lambda p, k: model.logits(p, batch, keep=k)[0]).lower(params, keep).compile()
  assert " conditional(" in fwd.as_text() and " while(" not in fwd.as_text()
  np.testing.assert_allclose(
    fwd(params, keep), jax.jit(lambda p, k: ref.logits(p, batch, keep=k)[0])(params, keep), **TOL
  )
  # Parameters stay stacked along 'layers', so stacking and checkpoints see one layout.
  shapes = jax.eval_shape(model.init, jax.random.key(0), batch)
  assert jax.tree.map(lambda x: x.shape, nn.unbox(shapes)) == jax.tree.map(
    lambda x: x.shape, params
  )


def test_auto_choices_and_config_errors():
  cpu = jax.devices()[0].platform == "cpu"
  assert L.resolve_attention_impl("xla", jnp.float32) == "xla"
  if cpu:
    assert L.resolve_attention_impl("auto", jnp.bfloat16) == "einsum"
    assert stack.resolve_layer_loop("auto", 256) == "unroll"
    assert stack.resolve_layer_loop("auto", 768) == "scan"
  assert stack.resolve_layer_loop("scan", 64) == "scan"
  assert model_config("t5", "tiny").attention_impl == "auto"
  with pytest.raises(ValueError, match="model.attention_impl must be one of"):
    model_config("bert", "tiny", attention_impl="flash")
  with pytest.raises(ValueError, match="model.layer_loop must be one of"):
    model_config("t5", "tiny", layer_loop="loop")


def test_position_bias_gradient_matches_plain_broadcast():
  """The einsum path broadcasts T5's [1, H, Q, K] bias with `broadcast_leading` (gradient summed
  as a product with ones); outputs and gradients equal the plain broadcasting reference."""
  k = jax.random.split(jax.random.key(7), 5)
  q, kk, v = (jax.random.normal(k[i], (3, 5, 2, 4)) for i in range(3))
  bias = jax.random.normal(k[3], (1, 2, 5, 5))
  mask = L.padding_bias(jnp.ones((3, 5)).at[1, -2:].set(0))
  ct = jax.random.normal(k[4], (3, 5, 2, 4))

  def ours(q, k, v, b):
    return L.attention(q, k, v, b, mask, impl="einsum")

  def reference(q, k, v, b):
    return L.dot_product_attention(q, k, v, L.add_biases(b, mask))

  got, want = (jax.vjp(f, q, kk, v, bias) for f in (ours, reference))
  np.testing.assert_allclose(got[0], want[0], **TOL)
  for a, b in zip(got[1](ct), want[1](ct)):
    np.testing.assert_allclose(a, b, **TOL)
