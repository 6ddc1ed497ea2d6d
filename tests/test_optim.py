"""Optimizers: Lion and AdamWScale against hand-written numpy references, the config builder
(masks, recipes, names), and an 8-device run. Sophia-G and its GNB estimator: test_optim_sophia."""

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
  lion,
  scale_by_param_rms,
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
