"""Issue 13.1: after layer stacking, the new layers run a fresh, bias-corrected optimizer (the
paper's torch optimizers keep a step counter per parameter), the old layers are unaffected, and a
checkpoint round trip keeps the per-layer counts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config
from test_stacking import make_batch, random_params

from ntng_jax.methods import stacking as st
from ntng_jax.optim import build_optimizer
from ntng_jax.optim.layer_count import has_layer_count
from ntng_jax.train import checkpoint as ckpt_lib
from ntng_jax.train import programs
from ntng_jax.train import state as state_lib

WARM_STEPS = 30  # updates before growth: the global count is far from 1


def _grads(params, rng):
  return jax.tree.map(lambda x: jnp.asarray(0.01 * rng.standard_normal(x.shape), x.dtype), params)


def _split(tree, n_old):
  """(old-layer slices, new-layer slices) of every stacked leaf, as flat lists."""
  flat = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if st.is_layer_path(p)]
  return [np.asarray(x[:n_old]) for _, x in flat], [np.asarray(x[n_old:]) for _, x in flat]


def _with_global_counts(opt_state):
  """The pre-fix semantics: every layer counted with the global count."""
  return jax.tree.map(
    lambda n: (
      n._replace(layer_count=jnp.full_like(n.layer_count, n.count)) if has_layer_count(n) else n
    ),
    opt_state,
    is_leaf=has_layer_count,
  )


def _layer_counts(opt_state):
  return [
    np.asarray(n.layer_count)
    for n in jax.tree.leaves(opt_state, is_leaf=has_layer_count)
    if has_layer_count(n)
  ]


def _roundtrip(tmp_path, params, opt_state):
  """Saves (params, opt_state) with the trainer's Orbax checkpointer and reads it back."""
  state = state_lib.TrainState(
    step=jnp.zeros([], jnp.int32), params=params, opt_state=opt_state, method_state={}
  )
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "run"), keep=1)
  ckpt.save(1, state, {"step": 1})
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding), state
  )
  restored = ckpt.read_state(1, abstract)
  ckpt.close()
  return restored.params, restored.opt_state


@pytest.mark.parametrize("family, optimizer", [("bert", "adamw"), ("t5", "adamw_scale")])
def test_new_layers_start_a_fresh_optimizer(family, optimizer, tmp_path):
  # The family's recipe (BERT AdamW, T5 AdamWScale, with clipping and decay) under stacking.
  config = tiny_config(family, "size=tiny,method=stacking")
  assert config.optim.name == optimizer and config.optim.per_layer_step_counts is True
  tx = build_optimizer(config.optim)
  update = jax.jit(tx.update)
  batch = make_batch(family, config.model.vocab_size)
  params = random_params(programs.model_at_depth(config, 1), batch)
  opt_state = tx.init(params)
  rng = np.random.default_rng(0)
  for _ in range(WARM_STEPS):
    u, opt_state = update(_grads(params, rng), opt_state, params)
    params = optax.apply_updates(params, u)

  grown_params = st.grow_params(params, 1)
  grown = st.grow_opt_state(opt_state, tx, params, 1, copy=False)
  assert [c.tolist() for c in _layer_counts(grown)] == [[WARM_STEPS, 0]]
  runs = {
    "grown": (grown_params, grown),
    "fresh": (grown_params, tx.init(grown_params)),  # a new optimizer for all layers
    "global": (grown_params, _with_global_counts(grown)),
  }  # what main did: shared count
  restored = None
  deviation = []
  for i in range(3):
    g = _grads(grown_params, rng)
    out = {}
    for name, (p, s) in runs.items():
      u, s = update(g, s, p)
      out[name] = u
      runs[name] = (optax.apply_updates(p, u), s)
    old_g, new_g = _split(out["grown"], 1)
    old_f, new_f = _split(out["fresh"], 1)
    old_s, new_s = _split(out["global"], 1)
    for a, b in zip(new_g, new_f):  # new layers: exactly a fresh optimizer's updates
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
      assert np.abs(b).max() > 1e-5  # (updates are not vanishing)
    for a, b in zip(old_g, old_s):  # old layers: bitwise what they were before the fix
      np.testing.assert_array_equal(a, b)
    deviation.append(
      max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(new_s, new_f))
    )
    if i == 0:  # checkpoint round trip after the first update; continue both ways
      restored = _roundtrip(tmp_path, *runs["grown"])
      assert [c.tolist() for c in _layer_counts(restored[1])] == [[WARM_STEPS + 1, 1]]
      runs["restored"] = restored
    elif "restored" in runs:
      for a, b in zip(jax.tree.leaves(out["restored"]), jax.tree.leaves(out["grown"])):
        np.testing.assert_array_equal(a, b)
  # The shared count (main before this fix) misses the fresh updates by far more than 1e-6.
  assert max(deviation) > 0.05, deviation
  assert [c.tolist() for c in _layer_counts(runs["grown"][1])] == [[WARM_STEPS + 3, 3]]


def test_copied_optimizer_state_carries_the_source_count():
  config = tiny_config("t5", "size=tiny,method=stacking")
  tx = build_optimizer(config.optim)
  batch = make_batch("t5", config.model.vocab_size)
  params = st.grow_params(random_params(programs.model_at_depth(config, 1), batch), 1)
  opt_state = tx.init(params)
  opt_state = jax.tree.map(
    lambda n: (
      n._replace(count=n.count + 9, layer_count=jnp.asarray([9, 4], jnp.int32))
      if has_layer_count(n)
      else n
    ),
    opt_state,
    is_leaf=has_layer_count,
  )
  grown = st.grow_opt_state(opt_state, tx, params, 3, copy=True)
  assert [c.tolist() for c in _layer_counts(grown)] == [[9, 4, 9, 4, 9]]
  fresh = st.grow_opt_state(opt_state, tx, params, 2, copy=False)
  assert [c.tolist() for c in _layer_counts(fresh)] == [[9, 4, 0, 0]]


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_runs_without_stacking_keep_plain_optax(family):
  """Without stacking the optimizers are what they were (no per-layer counts: bitwise the same
  updates, the same checkpoint layout); the layered AdamW without stacked leaves is optax.adamw."""
  config = tiny_config(family)
  assert not config.optim.get("per_layer_step_counts", False)
  batch = make_batch(family, config.model.vocab_size)
  params = random_params(programs.model_at_depth(config, 2), batch)
  assert not _layer_counts(build_optimizer(config.optim).init(params))
  layered = build_optimizer({**dict(config.optim), "per_layer_step_counts": True})
  assert [c.tolist() for c in _layer_counts(layered.init(params))] == [[0, 0]]
  from ntng_jax.optim.layer_count import adamw_layered

  ref_tx = optax.adamw(1e-3, b1=0.9, b2=0.98, eps=1e-12, weight_decay=0.01)
  our_tx = adamw_layered(1e-3, b1=0.9, b2=0.98, eps=1e-12, weight_decay=0.01, stacked=None)
  s_ref, s_our = ref_tx.init(params), our_tx.init(params)
  ref_update, our_update = jax.jit(ref_tx.update), jax.jit(our_tx.update)
  rng = np.random.default_rng(1)
  p_ref = p_our = params
  for _ in range(3):
    g = _grads(params, rng)
    u_ref, s_ref = ref_update(g, s_ref, p_ref)
    u_our, s_our = our_update(g, s_our, p_our)
    for a, b in zip(jax.tree.leaves(u_ref), jax.tree.leaves(u_our)):
      np.testing.assert_array_equal(a, b)
    p_ref, p_our = optax.apply_updates(p_ref, u_ref), optax.apply_updates(p_our, u_our)
