"""Optimizers: Lion, AdamWScale and Sophia-G against hand-written numpy references, the GNB
estimator against the exact Gauss-Newton diagonal, the config builder, and an 8-device run."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ntng_jax.optim import (
  PAPER_RECIPES,
  adamw_scale,
  build_optimizer,
  gnb_estimate,
  gnb_hessian_diagonal,
  is_hessian_refresh_step,
  lion,
  scale_by_param_rms,
  sophia_g,
  weight_decay_mask,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------------------------
# Shared fixtures: a small pytree with a decayed and an undecayed leaf, a tiny-RMS leaf (hits the
# 1e-3 floor) and a stacked leaf (axis 0 = layers, per-layer RMS).


def make_params():
  r = np.random.RandomState(0)
  return {
    "w": r.normal(size=(3, 4)).astype(np.float32),
    "bias": r.normal(size=(4,)).astype(np.float32),
    "tiny": (1e-4 * r.normal(size=(5,))).astype(np.float32),
    "layers": (r.normal(size=(2, 3)) * np.array([[0.1], [2.0]])).astype(np.float32),
  }


MASK = {"w": True, "bias": False, "tiny": True, "layers": True}  # True = decayed
STACKED = {"w": False, "bias": False, "tiny": False, "layers": True}


def grad_seq(params, n, seed=1):
  r = np.random.RandomState(seed)
  return [
    {k: r.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(n)
  ]


def rms_np(p, stacked):
  p = p.astype(np.float64)
  if stacked:
    return np.sqrt(np.mean(p**2, axis=tuple(range(1, p.ndim)), keepdims=True))
  return np.sqrt(np.mean(p**2))


def run_tx(tx, params, grads, extras=None):
  """Applies `tx` for len(grads) steps under jit; returns the params after each step."""
  state = tx.init(params)

  @jax.jit
  def step(params, state, g, extra):
    u, state = tx.update(g, state, params, **extra)
    return optax.apply_updates(params, u), state

  out = []
  for t, g in enumerate(grads):
    params, state = step(params, state, g, extras[t] if extras else {})
    out.append(jax.tree.map(np.asarray, params))
  return out, state


def assert_trees_close(a, b, rtol=1e-5, atol=1e-7):
  for k in b:
    np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


# ---------------------------------------------------------------------------------------------
# Lion


@pytest.mark.parametrize("rms", [False, True])
def test_lion_matches_formula(rms):
  lr, b1, b2, wd = 3e-2, 0.9, 0.99, 0.5
  params, grads = make_params(), grad_seq(make_params(), 6)
  got, _ = run_tx(
    lion(lr, b1, b2, wd, MASK, scale_by_param_rms=rms, stacked=STACKED), params, grads
  )
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  for t, g in enumerate(grads):
    for k in p:
      lr_k = lr * np.maximum(1e-3, rms_np(p[k], STACKED[k])) if rms else lr
      u = np.sign(b1 * m[k] + (1 - b1) * g[k])
      p[k] = p[k] * (1 - lr_k * wd * MASK[k]) - lr_k * u
      m[k] = b2 * m[k] + (1 - b2) * g[k]
    assert_trees_close(got[t], p)


# ---------------------------------------------------------------------------------------------
# AdamWScale


def test_adamw_scale_matches_hf_reference():
  lr, b1, b2, eps, wd = 1e-2, 0.9, 0.999, 1e-6, 0.1
  params = make_params()
  # Small gradients make HF's eps placement (eps / sqrt(1 - b2^t) in optax terms) visible.
  grads = [jax.tree.map(lambda g: 1e-5 * g, g) for g in grad_seq(params, 5)]
  got, _ = run_tx(adamw_scale(lr, b1, b2, eps, wd, MASK, stacked=STACKED), params, grads)
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, g in enumerate(grads, start=1):
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k].astype(np.float64) ** 2
      step = lr * np.sqrt(1 - b2**t) / (1 - b1**t) * np.maximum(1e-3, rms_np(p[k], STACKED[k]))
      p[k] = p[k] - step * m[k] / (np.sqrt(v[k]) + eps) - lr * wd * MASK[k] * p[k]
    assert_trees_close(got[t - 1], p)
  # optax.scale_by_adam's eps placement differs measurably here (so the test has teeth).
  alt = optax.chain(
    optax.scale_by_adam(b1, b2, eps),
    scale_by_param_rms(1e-3, STACKED),
    optax.add_decayed_weights(wd, MASK),
    optax.scale_by_learning_rate(lr),
  )
  alt_out, _ = run_tx(alt, params, grads)
  assert not np.allclose(alt_out[0]["w"], got[0]["w"], rtol=1e-4, atol=0)


# ---------------------------------------------------------------------------------------------
# Sophia-G with a deterministic stub estimator


def stub_estimator(params, *, gnb_batch, **_):
  """ĥ = (p² + 0.05)·c: deterministic, depends on the params and on an extra arg."""
  return jax.tree.map(lambda p: (jnp.square(p) + 0.05) * gnb_batch, params)


def sophia_reference(params, grads, cs, *, lr, b1, b2, rho, wd, k, eps, rms, at_zero):
  """The paper's update in numpy; h = EMA of the stub estimate, refreshed every k steps."""
  p = {key: v.astype(np.float64) for key, v in params.items()}
  m = {key: np.zeros_like(v) for key, v in p.items()}
  h = {key: np.zeros_like(v) for key, v in p.items()}
  outs, ratios = [], []
  for t, g in enumerate(grads):
    if t % k == 0 and (at_zero or t > 0):
      h = {key: b2 * h[key] + (1 - b2) * (p[key] ** 2 + 0.05) * cs[t] for key in p}
    for key in p:
      p_dec = p[key] * (1 - lr * wd * MASK[key])
      m[key] = b1 * m[key] + (1 - b1) * g[key]
      ratio = np.minimum(np.abs(m[key]) / (rho * h[key] + eps), 1.0)
      s = np.maximum(1e-3, rms_np(p_dec, STACKED[key])) if rms else 1.0
      p[key] = p_dec - lr * s * np.sign(m[key]) * ratio
      ratios.append(ratio)
    outs.append({key: v.copy() for key, v in p.items()})
  return outs, np.concatenate([r.ravel() for r in ratios])


@pytest.mark.parametrize("rms,at_zero", [(False, True), (True, True), (False, False)])
def test_sophia_matches_reference(rms, at_zero):
  hp = dict(lr=2e-2, b1=0.965, b2=0.9, rho=2.0, wd=0.3, k=10, eps=1e-15)
  params, n = make_params(), 25
  grads = grad_seq(params, n)
  cs = [1.0 + 0.1 * t for t in range(n)]
  tx = sophia_g(
    hp["lr"],
    hp["b1"],
    hp["b2"],
    hp["rho"],
    hp["wd"],
    hp["k"],
    hp["eps"],
    mask=MASK,
    scale_by_param_rms=rms,
    refresh_at_zero=at_zero,
    hessian_estimator=stub_estimator,
    stacked=STACKED,
  )
  got, state = run_tx(tx, params, grads, [{"gnb_batch": jnp.float32(c)} for c in cs])
  want, ratios = sophia_reference(params, grads, cs, rms=rms, at_zero=at_zero, **hp)
  for t in range(n):
    assert_trees_close(got[t], want[t], rtol=2e-5, atol=1e-6)
  assert int(state.count) == n
  assert (ratios < 1).any() and (ratios == 1).any()  # both branches of the clip were exercised

  # No blow-up: each step moves p by at most lr·s beyond the decay (|sign·min(.,1)| ≤ 1), also
  # while h = 0 (before the first refresh when refresh_at_zero=False).
  prev = {k: v.astype(np.float64) for k, v in params.items()}
  for t in range(n):
    for k in prev:
      p_dec = prev[k] * (1 - hp["lr"] * hp["wd"] * MASK[k])
      s = np.maximum(1e-3, rms_np(p_dec, STACKED[k])) if rms else 1.0
      step = np.abs(got[t][k] - p_dec)
      assert np.all(step <= hp["lr"] * s * (1 + 1e-4) + 1e-7), (t, k)
      if not at_zero and t < hp["k"]:  # h = 0: pure sign steps of size exactly lr·s
        np.testing.assert_allclose(step, hp["lr"] * s * np.ones_like(step), rtol=1e-3)
    prev = {k: v.astype(np.float64) for k, v in got[t].items()}


def test_is_hessian_refresh_step():
  assert [is_hessian_refresh_step(t, 10) for t in (0, 1, 9, 10, 20)] == [
    True,
    False,
    False,
    True,
    True,
  ]
  assert [is_hessian_refresh_step(t, 10, refresh_at_zero=False) for t in (0, 10)] == [False, True]
  arr = jax.jit(lambda c: is_hessian_refresh_step(c, 10))(jnp.arange(21))
  assert np.flatnonzero(np.asarray(arr)).tolist() == [0, 10, 20]


# ---------------------------------------------------------------------------------------------
# GNB estimator on softmax regression: logits[b, t] = x[b, t] @ W


def softmax_regression(seed=0, B=2, T=3, D=3, V=4, w_scale=0.8):
  r = np.random.RandomState(seed)
  x = r.normal(size=(B, T, D)).astype(np.float32)
  w = (w_scale * r.normal(size=(D, V))).astype(np.float32)
  weights = np.ones((B, T), np.float32)
  weights[1, 2] = 0.0  # a padding token: must not contribute
  labels = r.randint(V, size=(B, T)).astype(np.int32)
  return {"W": w}, {"x": x, "labels": labels, "weights": weights}


def logits_fn(params, batch):
  return batch["x"] @ params["W"], batch["labels"], batch["weights"]


def exact_gn_diagonal(params, batch):
  """diag of (1/N) Σ_t w_t J_tᵀ (diag p_t − p_t p_tᵀ) J_t, J_t = ∂logits_t/∂vec(W)."""
  x, w = batch["x"].reshape(-1, batch["x"].shape[-1]), batch["weights"].reshape(-1)
  W = params["W"]
  jac = jax.jacobian(lambda W, xt: xt @ W)
  gn = np.zeros((W.size, W.size))
  for xt, wt in zip(x, w):
    p = np.asarray(jax.nn.softmax(xt @ W), np.float64)
    J = np.asarray(jac(W, xt), np.float64).reshape(W.shape[1], -1)  # [V, D·V]
    gn += wt * J.T @ (np.diag(p) - np.outer(p, p)) @ J
  diag = np.diag(gn / w.sum()).reshape(W.shape)
  # The same in closed form: x_d² p_v (1 − p_v) averaged over weighted tokens.
  p = np.asarray(jax.nn.softmax(x @ W), np.float64)
  closed = np.einsum("t,td,tv->dv", w, x.astype(np.float64) ** 2, p * (1 - p)) / w.sum()
  np.testing.assert_allclose(diag, closed, rtol=1e-5)
  return diag


def test_gnb_converges_to_gauss_newton_diagonal():
  """Mean of 50k GNB samples vs the exact GN diagonal. Tolerance: every entry within 4 Monte-Carlo
  standard errors (estimated from the samples, at most ≈2 % of the entry here) and within 8 %
  relative. The keys are fixed, so the test is deterministic."""
  params, batch = softmax_regression(V=3, w_scale=0.4)
  exact = exact_gn_diagonal(params, batch)
  keys = jax.random.split(jax.random.key(0), 50_000)

  def check(samples):
    samples = np.asarray(samples, np.float64)
    mean, se = samples.mean(0), samples.std(0) / np.sqrt(len(samples))
    assert np.all(np.abs(mean - exact) <= 4 * se), (mean, exact, se)
    np.testing.assert_allclose(mean, exact, rtol=0.08)

  check(jax.jit(jax.vmap(lambda k: gnb_estimate(params, logits_fn, batch, k)["W"]))(keys))
  # Micro-batched Hessian batch ([n=2, B/2, ...]): all micro-batches count (the paper's BERT code
  # kept only the last one's gradient).
  micro = jax.tree.map(lambda a: a.reshape(2, 1, *a.shape[1:]), batch)
  check(
    jax.jit(jax.vmap(lambda k: gnb_estimate(params, logits_fn, micro, k, microbatched=True)["W"]))(
      keys
    )
  )

  # The paper's scale: num_tokens = bs instead of N = 5 label tokens.
  k0 = jax.random.key(1)
  np.testing.assert_allclose(
    gnb_estimate(params, logits_fn, batch, k0, num_tokens=196608)["W"],
    gnb_estimate(params, logits_fn, batch, k0)["W"] * 196608 / 5,
    rtol=1e-5,
  )


def test_gnb_microbatched_equals_hand_accumulation():
  """Micro-batched ĝ = token-weighted mean over all micro-batches of the sampled-CE gradients,
  micro-batch i drawn with fold_in(rng, i); the estimate is N·ĝ²."""
  params, batch = softmax_regression()
  micro = jax.tree.map(lambda a: a.reshape(2, 1, *a.shape[1:]), batch)

  @jax.jit
  def both(params, micro, rng):
    got = gnb_estimate(params, logits_fn, micro, rng, microbatched=True)["W"]
    g_sum, n = 0.0, 0.0
    for i in range(2):
      mb = jax.tree.map(lambda a: a[i], micro)
      y = jax.random.categorical(jax.random.fold_in(rng, i), logits_fn(params, mb)[0])
      f = lambda W: jnp.sum(
        optax.softmax_cross_entropy_with_integer_labels(mb["x"] @ W, y) * mb["weights"]
      )
      g_sum, n = g_sum + jax.grad(f)(params["W"]), n + mb["weights"].sum()
    return got, n * (g_sum / n) ** 2

  got, want = both(params, micro, jax.random.key(3))
  np.testing.assert_allclose(got, want, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Integration: optax.chain + clip + jit + apply_updates; GNB inside sophia; optax.contrib plug-in


def test_transformations_in_clipped_chain_under_jit():
  params, batch = softmax_regression(B=4)
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
    logits_fn(p, batch)[0], batch["labels"]
  ).mean()
  txs = {
    "lion": lion(1e-2, weight_decay=0.1, scale_by_param_rms=True),
    "adamw_scale": adamw_scale(1e-1),
    "sophia": sophia_g(1e-2, rho=0.05, update_interval=2, weight_decay=0.1),
  }
  for name, inner in txs.items():
    tx = optax.chain(optax.clip_by_global_norm(1.0), inner)

    @jax.jit
    def step(p, s, rng):
      g = jax.grad(loss)(p)
      u, s = tx.update(g, s, p, logits_fn=logits_fn, gnb_batch=batch, gnb_rng=rng)
      return optax.apply_updates(p, u), s

    @jax.jit
    def step_ref(p, s, rng):  # clip by hand, then the bare transformation
      g = jax.grad(loss)(p)
      g = jax.tree.map(lambda x: x * jnp.minimum(1.0, 1.0 / optax.tree.norm(g)), g)
      u, s = inner.update(g, s, p, logits_fn=logits_fn, gnb_batch=batch, gnb_rng=rng)
      return optax.apply_updates(p, u), s

    p, s, p_ref, s_ref = params, tx.init(params), params, inner.init(params)
    l0 = loss(params)
    for t in range(6):
      rng = jax.random.key(t)
      p, s = step(p, s, rng)
      p_ref, s_ref = step_ref(p_ref, s_ref, rng)
    np.testing.assert_allclose(p["W"], p_ref["W"], rtol=1e-5, atol=1e-7, err_msg=name)
    assert np.isfinite(p["W"]).all() and loss(p) < l0, name
  # Sophia's h was refreshed (steps 0, 2, 4) from the real GNB estimate.
  h = s[1].hessian["W"]
  assert (np.asarray(h) > 0).all()


def test_sophia_refreshes_with_gnb_estimate():
  """h after the refresh at step 0 is (1-b2)·gnb_estimate (paper scale: num_tokens = bs, ĝ
  clipped, micro-batched); the non-refresh step 1 leaves h alone; gnb_batch=None never refreshes."""
  params, batch = softmax_regression()
  micro = jax.tree.map(lambda a: a.reshape(2, 1, *a.shape[1:]), batch)
  tx = sophia_g(
    1e-2, b2=0.99, update_interval=2, batch_tokens=1000, gnb_microbatched=True, gnb_clip_norm=0.1
  )
  update = jax.jit(
    lambda g, s, p, b, k: tx.update(g, s, p, logits_fn=logits_fn, gnb_batch=b, gnb_rng=k)
  )
  s = tx.init(params)
  _, s = update(params, s, params, micro, jax.random.key(0))
  want = (
    0.01
    * gnb_estimate(
      params, logits_fn, micro, jax.random.key(0), microbatched=True, num_tokens=1000, clip_norm=0.1
    )["W"]
  )
  np.testing.assert_allclose(s.hessian["W"], want, rtol=1e-5)
  _, s1 = update(params, s, params, micro, jax.random.key(1))
  np.testing.assert_array_equal(s1.hessian["W"], s.hessian["W"])
  _, s0 = jax.jit(lambda g, s, p: tx.update(g, s, p, gnb_batch=None))(
    params, tx.init(params), params
  )
  assert not np.asarray(s0.hessian["W"]).any()


def test_gnb_plugs_into_optax_contrib_sophia():
  params, batch = softmax_regression()
  tx = optax.contrib.sophia(1e-2, gamma=0.05, hessian_diagonal_fn=gnb_hessian_diagonal(logits_fn))
  s = tx.init(params)
  u, s = jax.jit(lambda p, s: tx.update(p, s, p, gnb_batch=batch, gnb_rng=jax.random.key(0)))(
    params, s
  )
  assert np.isfinite(u["W"]).all() and (np.asarray(s[0].nu["W"]) > 0).all()


# ---------------------------------------------------------------------------------------------
# build_optimizer: masks, injected learning rate, per-layer RMS from the path


def flax_like_params():
  r = np.random.RandomState(0)
  f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
  return {
    "params": {
      "embed": {"embedding": f(8, 4)},
      "encoder": {
        "layers": {"norm1": {"scale": f(2, 4), "bias": f(2, 4)}, "attn": {"kernel": f(2, 4, 4)}},
        "final_norm": {"scale": f(4), "bias": f(4)},
      },
    }
  }


def test_weight_decay_mask_policies():
  params = flax_like_params()
  flat = lambda tree: {
    "/".join(str(k.key) for k in path): v
    for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  paper = flat(weight_decay_mask("bias")(params))
  assert paper == {
    "params/embed/embedding": True,
    "params/encoder/layers/norm1/scale": True,
    "params/encoder/layers/norm1/bias": False,
    "params/encoder/layers/attn/kernel": True,
    "params/encoder/final_norm/scale": True,
    "params/encoder/final_norm/bias": False,
  }
  intended = flat(weight_decay_mask("bias_and_norm")(params))
  assert {k for k, v in intended.items() if not v} == {
    "params/encoder/layers/norm1/bias",
    "params/encoder/layers/norm1/scale",
    "params/encoder/final_norm/bias",
    "params/encoder/final_norm/scale",
  }
  assert all(flat(weight_decay_mask("none")(params)).values())


@pytest.mark.parametrize("name", ["adamw", "adamw_scale", "lion", "sophia"])
def test_build_optimizer(name):
  cfg = ml_collections.ConfigDict(
    dict(
      name=name,
      learning_rate=1e-3,
      weight_decay=0.1,
      clip_norm=0.5,
      scale_by_param_rms=True,
      schedule="triangle",
    )
  )
  tx = build_optimizer(cfg)
  params = flax_like_params()
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  assert float(state.hyperparams["learning_rate"]) == pytest.approx(1e-3)
  # lr = 0 → no change at all (the injected lr reaches the decay as well).
  state = state._replace(hyperparams={"learning_rate": jnp.float32(0.0)})
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, logits_fn=None, unused_extra=1)[0])
  u = update(grads, state, params)
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(u))
  # Doubling the lr doubles the step (linear in lr for a fixed state; Sophia's T5 variant takes
  # the RMS of the decayed tensor p·(1 - lr·wd), a 1e-4 relative effect here).
  s1 = state._replace(hyperparams={"learning_rate": jnp.float32(1e-3)})
  s2 = state._replace(hyperparams={"learning_rate": jnp.float32(2e-3)})
  u1, u2 = update(grads, s1, params), update(grads, s2, params)
  for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
    np.testing.assert_allclose(2 * np.asarray(a), b, rtol=5e-4, atol=1e-12)
  # Bias leaves are exempt from decay: with clipped unit grads, Lion moves the bias by exactly
  # lr·s and the norm scale by lr·s·(1 + wd·p) (T5 RMS variant on a stacked leaf: s per layer).
  if name == "lion":
    enc = params["params"]["encoder"]["layers"]["norm1"]
    s = np.maximum(1e-3, np.sqrt(np.mean(np.asarray(enc["bias"]) ** 2, axis=1, keepdims=True)))
    ub = u1["params"]["encoder"]["layers"]["norm1"]["bias"]
    np.testing.assert_allclose(ub, -1e-3 * s * np.ones((2, 4)), rtol=1e-5)
    s = np.maximum(1e-3, np.sqrt(np.mean(np.asarray(enc["scale"]) ** 2, axis=1, keepdims=True)))
    us = u1["params"]["encoder"]["layers"]["norm1"]["scale"]
    np.testing.assert_allclose(us, -1e-3 * s * (1 + 0.1 * np.asarray(enc["scale"])), rtol=1e-5)


def test_paper_recipes_build():
  params = flax_like_params()
  for family, recipes in PAPER_RECIPES.items():
    for name, recipe in recipes.items():
      tx = build_optimizer(ml_collections.ConfigDict(recipe))
      lr = float(tx.init(params).hyperparams["learning_rate"])
      assert lr == pytest.approx(recipe["learning_rate"]), (family, name)


def test_build_optimizer_rejects_unknown_name():
  with pytest.raises(ValueError, match="optim.name"):
    build_optimizer({"name": "sgd", "learning_rate": 1.0})


# ---------------------------------------------------------------------------------------------
# 8 simulated CPU devices: sharded batch, replicated params == single device

MULTI_DEVICE_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from ntng_jax.optim import gnb_estimate, sophia_g, lion, adamw_scale

    assert jax.device_count() == 8, jax.devices()
    r = np.random.RandomState(0)
    B, T, D, V = 16, 5, 6, 11
    batch = {"x": r.normal(size=(B, T, D)).astype(np.float32),
             "labels": r.randint(V, size=(B, T)).astype(np.int32),
             "weights": (r.uniform(size=(B, T)) > 0.2).astype(np.float32)}
    params = {"W": (0.5 * r.normal(size=(D, V))).astype(np.float32),
              "b": np.zeros((V,), np.float32)}

    def logits_fn(p, b):
        return b["x"] @ p["W"] + p["b"], b["labels"], b["weights"]

    def loss(p, b):
        lg, y, w = logits_fn(p, b)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(lg, y) * w) / w.sum()

    txs = {"sophia": sophia_g(1e-2, rho=0.05, update_interval=2, weight_decay=0.1,
                              batch_tokens=4096, scale_by_param_rms=True),
           "lion": lion(1e-3, weight_decay=0.1, scale_by_param_rms=True),
           "adamw_scale": adamw_scale(1e-2)}

    def run(params, batch, rng, in_sh):
        out = {"gnb": jax.jit(lambda p, b, k: gnb_estimate(p, logits_fn, b, k),
                              in_shardings=in_sh)(params, batch, rng)}
        for name, inner in txs.items():
            tx = optax.chain(optax.clip_by_global_norm(1.0), inner)
            def step(p, s, b, k):
                g = jax.grad(loss)(p, b)
                u, s = tx.update(g, s, p, logits_fn=logits_fn, gnb_batch=b, gnb_rng=k)
                return optax.apply_updates(p, u), s
            step = jax.jit(step, in_shardings=(in_sh[0], in_sh[0], in_sh[1], in_sh[2]))
            p, s = params, jax.device_put(tx.init(params), in_sh[0])
            for t in range(3):
                p, s = step(p, s, batch, jax.random.fold_in(rng, t))
            out[name] = p
        return jax.tree.map(np.asarray, out)

    rng = jax.random.key(42)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    sharded = run(jax.device_put(params, rep), jax.device_put(batch, data),
                  jax.device_put(rng, rep), (rep, data, rep))
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    single = run(jax.device_put(params, one), jax.device_put(batch, one),
                 jax.device_put(rng, one), (one, one, one))
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(sharded)[0],
                            jax.tree.leaves(single)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=str(path))
    assert np.abs(sharded["gnb"]["W"]).max() > 0
    print("OK")
""")


def test_eight_device_sharded_batch_matches_single_device():
  env = dict(
    os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
  )
  proc = subprocess.run(
    [sys.executable, "-c", MULTI_DEVICE_SCRIPT],
    env=env,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
