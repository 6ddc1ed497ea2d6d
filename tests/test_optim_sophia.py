"""Sophia-G against a hand-written reference, its GNB estimator against the exact Gauss-Newton
diagonal, and every optimizer in a clipped, jitted optax chain."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_optim import MASK, STACKED, assert_trees_close, grad_seq, make_params, rms_np, run_tx

from ntng_jax.optim import (
  adamw_scale,
  gnb_estimate,
  gnb_hessian_diagonal,
  is_hessian_refresh_step,
  lion,
  sophia_g,
)

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
