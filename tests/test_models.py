"""Tests of ntng_jax.models on CPU with tiny configs (base sizes only through eval_shape)."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntng_jax.models import build_model, greedy_decode, losses, model_config, positions
from ntng_jax.models import layers as L
from ntng_jax.models.bert import BertBlock
from ntng_jax.models.stack import LayerStack
from ntng_jax.models.t5 import EOS_ID, PAD_ID, T5DecoderBlock, T5EncoderBlock

B, S, P, SI, ST = 2, 16, 5, 12, 6


def make_batch(family, vocab, seed=0, batch=B):
  k = jax.random.split(jax.random.key(seed), 4)
  if family == "bert":
    return dict(
      input_ids=jax.random.randint(k[0], (batch, S), 1, vocab),
      mlm_positions=jax.random.randint(k[1], (batch, P), 0, S),
      mlm_labels=jax.random.randint(k[2], (batch, P), 1, vocab),
      mlm_weights=jnp.ones((batch, P), jnp.float32).at[-1, -1].set(0.0),
    )
  targets = jax.random.randint(k[1], (batch, ST), 2, vocab)
  return dict(
    encoder_input_ids=jax.random.randint(k[0], (batch, SI), 2, vocab),
    decoder_input_ids=jnp.pad(targets[:, :-1], ((0, 0), (1, 0))),
    targets=targets,
    target_weights=jnp.ones((batch, ST), jnp.float32).at[-1, -2:].set(0.0),
  )


@functools.lru_cache(maxsize=None)
def tiny(family):
  """(model, boxed params, batch) of a tiny model; init is jitted (eager init is slow)."""
  model = build_model(model_config(family, "tiny"))
  batch = make_batch(family, model.cfg.vocab_size)
  return model, jax.jit(model.init)(jax.random.key(0), batch), batch


@functools.lru_cache(maxsize=None)
def tiny_forward(family):
  """Jitted full-depth logits of the tiny model: fn(params, batch) -> [B, T, V]."""
  model = tiny(family)[0]
  return jax.jit(lambda p, batch: model.logits(p, batch)[0])


@functools.lru_cache(maxsize=None)
def tiny_decoder(use_cache):
  """Jitted greedy decoding of the tiny T5: fn(params, ids, mask) -> [B, 8]."""
  model = tiny("t5")[0]
  return jax.jit(lambda p, ids, mask: greedy_decode(model, p, ids, 8, mask, use_cache=use_cache))


# ---- config -----------------------------------------------------------------------------------


def test_model_config_errors():
  assert model_config("bert", "base").num_layers == 16
  assert model_config("t5", "small", remat=True).remat
  with pytest.raises(ValueError, match="model.size"):
    model_config("bert", "huge")
  with pytest.raises(ValueError, match="model.family"):
    model_config("xlnet", "tiny")
  with pytest.raises(ValueError, match="model.hiden is not a model field"):
    model_config("bert", "tiny", hiden=3)
  with pytest.raises(ValueError, match="model.num_layers"):
    model_config("t5", "tiny", num_layers=0)
  with pytest.raises(ValueError, match="model.hidden_size"):
    model_config("bert", "tiny", hidden_size=100)


# ---- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,expected", [("bert", 120_179_713), ("t5", 247_586_304)])
def test_base_param_count(family, expected):
  model = build_model(model_config(family, "base"))
  shapes = jax.eval_shape(model.init, jax.random.key(0), make_batch(family, 100))
  n = model.param_count(shapes)
  assert abs(n - expected) / expected < 0.005, n
  tiny_model, tiny_params, _ = tiny(family)
  assert 1e5 < tiny_model.param_count(tiny_params) < 1e6


def test_params_have_logical_names():
  _, params, _ = tiny("bert")
  leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(x, nn.Partitioned) for x in leaves)
  qkv = params["encoder"]["layers"]["attn"]["qkv"]["kernel"]
  assert qkv.names == ("layers", "embed", "qkv", "heads", "kv")


# ---- scanned stack ------------------------------------------------------------------------------


def stack_case(kind):
  """(block class, cfg, x, broadcast args) for a stack of 3 layers."""
  family = "bert" if kind == "bert" else "t5"
  cfg = model_config(family, "tiny", num_layers=3, init_std=0.02 if family == "bert" else 1.0)
  k = jax.random.split(jax.random.key(1), 2)
  x = jax.random.normal(k[0], (B, S, cfg.hidden_size))
  mask = jnp.ones((B, S), jnp.int32).at[0, -3:].set(0)
  pos = jnp.arange(S)
  buckets = positions.relative_position_buckets(pos[None] - pos[:, None], kind == "t5_enc", 32, 128)
  if kind == "bert":
    return BertBlock, cfg, x, (L.padding_bias(mask),)
  if kind == "t5_enc":
    return T5EncoderBlock, cfg, x, (buckets, L.padding_bias(mask))
  encoded = jax.random.normal(k[1], (B, SI, cfg.hidden_size))
  return T5DecoderBlock, cfg, x, (buckets, L.causal_bias(S), encoded, None, None)


def loop_reference(block_cls, cfg, params, x, args, keep):
  """Plain Python loop over the layers with sliced parameters."""
  block = block_cls(cfg)
  for i in range(cfg.num_layers):
    if keep[i]:
      layer_params = jax.tree.map(lambda p: p[i], params["layers"])
      x, _ = block.apply({"params": layer_params}, x, None, *args)
  return x


@pytest.mark.parametrize("kind", ["bert", "t5_enc", "t5_dec"])
def test_scan_matches_loop_and_keep(kind):
  block_cls, cfg, x, args = stack_case(kind)
  stack = LayerStack(block_cls, cfg, cfg.num_layers)
  keep_mask = jnp.array([True, False, True])
  # Initialise through the keep (nn.cond) path.
  init = jax.jit(lambda k: stack.init(k, x, *args, keep=keep_mask)["params"])
  params = nn.unbox(init(jax.random.key(2)))
  assert jax.tree.leaves(params)[0].shape[0] == cfg.num_layers
  apply = jax.jit(lambda p, keep: stack.apply({"params": p}, x, *args, keep=keep))
  full = jax.jit(lambda p: stack.apply({"params": p}, x, *args))(params)
  ref = loop_reference(block_cls, cfg, params, x, args, [True] * 3)
  np.testing.assert_allclose(full, ref, atol=1e-5)
  np.testing.assert_allclose(apply(params, jnp.ones(3, bool)), ref, atol=1e-5)
  np.testing.assert_array_equal(apply(params, jnp.zeros(3, bool)), x)  # identity
  ref = loop_reference(block_cls, cfg, params, x, args, [True, False, True])
  np.testing.assert_allclose(apply(params, keep_mask), ref, atol=1e-5)


def test_remat_matches():
  block_cls, _, x, args = stack_case("bert")
  cfg = model_config("bert", "tiny", num_layers=3, remat=True)
  stack = LayerStack(block_cls, cfg, cfg.num_layers)
  params = jax.jit(lambda k: stack.init(k, x, *args)["params"])(jax.random.key(2))
  keep = [True, False, True]
  loss = lambda p: jnp.sum(stack.apply({"params": p}, x, *args, keep=jnp.array(keep)) ** 2)
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  ref = loop_reference(block_cls, cfg, nn.unbox(params), x, args, keep)
  np.testing.assert_allclose(value, jnp.sum(ref**2), rtol=1e-5)
  wo = grads["layers"]["mlp"]["wo"]["kernel"].value
  assert float(jnp.abs(wo[1]).max()) == 0.0 < float(jnp.abs(wo[0]).max())  # layer 1 skipped


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_keep_lowers_to_conditional(family):
  model, params, batch = tiny(family)
  fwd = lambda p, keep: model.logits(p, batch, keep=keep)[0]
  compiled = jax.jit(fwd).lower(params, jnp.array([True, False])).compile()
  assert " conditional(" in compiled.as_text()  # a real branch, not a select
  assert "cond[" not in str(jax.make_jaxpr(lambda p: model.logits(p, batch)[0])(params))
  np.testing.assert_allclose(
    compiled(params, jnp.ones(2, bool)), tiny_forward(family)(params, batch), atol=1e-5
  )
  # keep = [False, True] equals a 1-layer model holding layer 1 of every stacked parameter
  # (for T5 the same vector drops the encoder's and the decoder's block 0).
  one_layer = build_model(model_config(family, "tiny", num_layers=1))
  sliced = jax.tree_util.tree_map_with_path(
    lambda path, x: x[1:2] if any(getattr(k, "key", None) == "layers" for k in path) else x,
    nn.unbox(params),
  )
  np.testing.assert_allclose(
    compiled(params, jnp.array([False, True])),
    jax.jit(one_layer.logits)(sliced, batch)[0],
    atol=1e-5,
  )


# ---- training sanity ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_one_adam_step_decreases_loss(family):
  model, params, batch = tiny(family)
  params = nn.unbox(params)

  def loss_fn(p):
    return losses.mean_token_loss(*model.logits(p, batch))

  tx = optax.adam(1e-2)
  value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
  before, grads = value_and_grad(params)
  updates, _ = tx.update(grads, tx.init(params), params)
  after, _ = value_and_grad(optax.apply_updates(params, updates))
  assert np.isfinite(before) and after < before
  if family == "bert":  # N(0, 0.02) init gives near-uniform predictions
    assert abs(before - math.log(model.cfg.vocab_size)) < 0.1, before


def test_boxed_and_unboxed_params_agree():
  model, params, batch = tiny("t5")
  fwd = jax.jit(model.logits)
  a, labels, weights = fwd(params, batch)
  b, _, _ = fwd(nn.unbox(params), batch)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (B, ST, model.cfg.vocab_size) and a.dtype == jnp.float32
  np.testing.assert_array_equal(labels, batch["targets"])
  np.testing.assert_array_equal(weights, batch["target_weights"])


def test_dropout_active_when_not_deterministic():
  model = build_model(model_config("bert", "tiny", dropout_rate=0.1))
  batch = make_batch("bert", model.cfg.vocab_size)
  params = tiny("bert")[1]  # same parameter tree
  fwd = jax.jit(lambda p, rng: model.logits(p, batch, deterministic=False, rng=rng)[0])
  a, b = fwd(params, jax.random.key(3)), fwd(params, jax.random.key(4))
  assert np.all(np.isfinite(b)) and not np.allclose(a, b)


def test_attention_mask_hides_padding():
  model, params, batch = tiny("bert")
  mask = jnp.ones((B, S), jnp.int32).at[:, -4:].set(0)
  batch = dict(batch, attention_mask=mask, mlm_positions=jnp.zeros((B, P), jnp.int32))
  changed = dict(batch, input_ids=batch["input_ids"].at[:, -4:].set(7))
  fwd = tiny_forward("bert")
  np.testing.assert_allclose(fwd(params, batch), fwd(params, changed), atol=1e-5)


def test_mlm_head_gathers_positions():
  model, params, batch = tiny("bert")
  p = nn.unbox(params)
  hidden = jax.jit(
    lambda p: model.module.apply({"params": p}, batch["input_ids"], method="encode")
  )(p)
  assert hidden.shape == (B, S, model.cfg.hidden_size)
  pos = batch["mlm_positions"]
  h = hidden[jnp.arange(B)[:, None], pos] @ p["head"]["kernel"]
  expected = h @ p["word_embed"]["embedding"].T  # decoder tied to the word embedding
  np.testing.assert_allclose(tiny_forward("bert")(params, batch), expected, atol=1e-4)


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_bf16_compute(family):
  model, params, batch = tiny(family)
  f32 = tiny_forward(family)(params, batch)
  b16 = jax.jit(lambda p: model.logits(p, batch, dtype=jnp.bfloat16)[0])(params)
  grads = jax.eval_shape(
    jax.grad(lambda p: losses.mean_token_loss(*model.logits(p, batch, dtype=jnp.bfloat16))),
    nn.unbox(params),
  )
  assert b16.dtype == jnp.float32 and np.all(np.isfinite(b16))
  assert float(jnp.abs(b16 - f32).max()) < 0.05 * float(jnp.abs(f32).max()) + 0.02
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nn.unbox(params)))


def test_logical_constraints_under_mesh():
  model, params, batch = tiny("bert")
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  rules = (("act_batch", "data"), ("vocab", None), ("embed", None))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    out = jax.jit(lambda p: model.logits(p, batch)[0])(params)
  np.testing.assert_allclose(out, tiny_forward("bert")(params, batch), atol=1e-6)


# ---- losses ------------------------------------------------------------------------------------


def test_losses():
  logits = jnp.log(
    jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]], [[1 / 3, 1 / 3, 1 / 3], [0.2, 0.2, 0.6]]])
  )
  labels = jnp.array([[0, 1], [2, 0]])
  weights = jnp.array([[1.0, 1.0], [0.0, 0.0]])
  tok = losses.token_losses(logits, labels)
  np.testing.assert_allclose(tok, -np.log([[0.5, 0.8], [1 / 3, 0.2]]), rtol=1e-5)
  np.testing.assert_allclose(
    losses.per_example_loss(logits, labels, weights),
    [(-np.log(0.5) - np.log(0.8)) / 2, 0.0],
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    losses.mean_token_loss(logits, labels, weights), (-np.log(0.5) - np.log(0.8)) / 2, rtol=1e-5
  )
  assert float(losses.token_accuracy(logits, labels, weights)) == 1.0
  assert float(losses.mean_token_loss(logits, labels, jnp.zeros((2, 2)))) == 0.0


# ---- T5 decoding --------------------------------------------------------------------------------


def test_greedy_decode_cache_matches_no_cache():
  model, params, batch = tiny("t5")
  ids = batch["encoder_input_ids"]
  mask = jnp.ones_like(ids).at[0, -4:].set(0)
  cached = tiny_decoder(True)(params, ids, mask)
  uncached = tiny_decoder(False)(params, ids, mask)
  assert cached.shape == (B, 8) and cached.dtype == jnp.int32
  np.testing.assert_array_equal(cached, uncached)
  # Teacher-forced logits agree with the decoded ids.
  dec_in = jnp.pad(cached[:, :-1], ((0, 0), (1, 0)))
  logits = tiny_forward("t5")(params, dict(batch, encoder_mask=mask, decoder_input_ids=dec_in))
  np.testing.assert_array_equal(jnp.argmax(logits, -1), cached)


def test_greedy_decode_stops_after_eos():
  model, params, batch = tiny("t5")
  params = nn.unbox(params)
  # With every decoder residual branch zeroed, the decoder's output is the normed embedding of
  # its input token; make that favour EOS after the start token: ids are EOS, then padding.
  dec = jax.tree.map(lambda x: x, params["decoder"])
  layers = dec["blocks"]["layers"]
  for name in ("self_attn", "cross_attn"):
    layers[name]["o"]["kernel"] = jnp.zeros_like(layers[name]["o"]["kernel"])
  layers["mlp"]["wo"]["kernel"] = jnp.zeros_like(layers["mlp"]["wo"]["kernel"])
  d = model.cfg.hidden_size
  dec["final_norm"] = {"scale": jnp.zeros((d,)).at[0].set(1.0)}
  params = dict(params, decoder=dec)
  params["token_embed"] = {"embedding": params["token_embed"]["embedding"].at[PAD_ID, 0].set(5.0)}
  params["lm_head"] = {"kernel": jnp.zeros((d, model.cfg.vocab_size)).at[0, EOS_ID].set(1.0)}
  ids = batch["encoder_input_ids"]
  out = tiny_decoder(True)(params, ids, jnp.ones_like(ids))
  np.testing.assert_array_equal(out[:, 0], EOS_ID)
  np.testing.assert_array_equal(out[:, 1:], PAD_ID)


# ---- fine-tuning fidelity: attention dropout, pad row ---------------------------------------


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_attention_dropout_only_in_training(family):
  model = build_model(model_config(family, "tiny", attention_dropout_rate=0.1))
  params, batch = tiny(family)[1], tiny(family)[2]  # same parameter tree
  fwd = jax.jit(
    lambda p, rng, det: model.logits(p, batch, deterministic=det, rng=rng)[0], static_argnums=2
  )
  a, b = fwd(params, jax.random.key(3), False), fwd(params, jax.random.key(4), False)
  assert np.all(np.isfinite(a)) and not np.allclose(a, b)
  # Evaluation (deterministic) is exactly the rate-0 model; so is training at rate 0.
  np.testing.assert_array_equal(fwd(params, None, True), tiny_forward(family)(params, batch))
  plain = tiny(family)[0]
  train0 = jax.jit(lambda p, rng: plain.logits(p, batch, deterministic=False, rng=rng)[0])
  np.testing.assert_array_equal(
    train0(params, jax.random.key(3)), tiny_forward(family)(params, batch)
  )
  with pytest.raises(ValueError, match="model.attention_dropout_rate"):
    model_config(family, "tiny", attention_dropout_rate=1.0)


def test_attention_dropout_drops_probabilities():
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 5, 2, 4))
  layer = lambda rate, det: L.BertAttention(2, 4, 0.02, dropout_rate=rate, deterministic=det)
  x = q.reshape(2, 5, 8)
  params = layer(0.0, True).init(jax.random.key(1), x)
  base = layer(0.0, True).apply(params, x)
  outs = [
    layer(0.5, False).apply(params, x, rngs={"dropout": jax.random.key(i)}) for i in range(200)
  ]
  assert not np.allclose(outs[0], base)
  # Inverted dropout keeps the expectation: the mean over draws approaches the plain output.
  np.testing.assert_allclose(np.mean(outs, 0), base, atol=0.2 * float(jnp.abs(base).max()))


def test_pad_row_gets_no_gradient_through_the_lookup():
  model, params, batch = tiny("bert")
  params = nn.unbox(params)
  ids = batch["input_ids"].at[:, -3:].set(0)  # pad id 0 as input tokens
  batch = dict(batch, input_ids=ids)

  def encode_loss(p):
    h = model.module.apply({"params": p}, ids, method="encode")
    return jnp.sum(h * jnp.cos(jnp.arange(h.size).reshape(h.shape)))

  g = jax.jit(jax.grad(encode_loss))(params)["word_embed"]["embedding"]
  assert float(jnp.abs(g[0]).max()) == 0.0
  assert float(jnp.abs(g[ids[0, 0]]).max()) > 0.0
  # The tied MLM decoder still trains the pad row, as torch's tied weight does.
  full = jax.jit(jax.grad(lambda p: losses.mean_token_loss(*model.logits(p, batch))))(params)
  assert float(jnp.abs(full["word_embed"]["embedding"][0]).max()) > 0.0
  # The forward pass is the plain lookup.
  emb = jax.jit(
    lambda p: model.module.apply({"params": p}, ids, method=lambda m, i: m.word_embed(i))
  )(params)
  np.testing.assert_array_equal(emb, params["word_embed"]["embedding"][ids])


@pytest.mark.parametrize("in_dims,out", [(1, (6,)), (1, (2, 3)), (2, (5,))])
def test_flat_dot_matches_einsum_with_gradients(in_dims, out):
  """Dense's product (leading axes merged) against a plain dot_general, values and gradients."""
  k = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(k[0], (2, 7, 4, 3) if in_dims == 2 else (2, 7, 4))
  w = jax.random.normal(k[1], x.shape[x.ndim - in_dims :] + out)
  ct = jax.random.normal(k[2], x.shape[: x.ndim - in_dims] + out)

  def ref(x, w):
    c = (tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(in_dims)))
    return jax.lax.dot_general(x, w, (c, ((), ())))

  for f in (ref, functools.partial(L.flat_dot, in_dims=in_dims)):
    y, vjp = jax.vjp(f, x, w)
    got = (y, *vjp(ct))
    if f is ref:
      want = got
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert got[0].shape == x.shape[: x.ndim - in_dims] + out


def test_tied_attend_matches_einsum():
  emb = L.Embed(11, 4, 1.0)
  x = jax.random.normal(jax.random.key(4), (2, 3, 4))
  params = emb.init(jax.random.key(5), x, method=L.Embed.attend)
  got = emb.apply(params, x, method=L.Embed.attend)
  want = jnp.einsum("...d,vd->...v", x, nn.unbox(params)["params"]["embedding"])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
