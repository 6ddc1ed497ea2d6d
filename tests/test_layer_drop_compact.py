"""The compact layer-drop path (`model.layer_drop_impl='compact'`): a loop over the kept layers
only, with the same losses and gradients as the full-depth cond path, one program for every keep
pattern, and zero gradients for the dropped layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from test_stacking import layer_leaves, make_batch, random_params

from ntng_jax.models import build_model, model_config, stack
from ntng_jax.optim import build_optimizer
from ntng_jax.train import state as state_lib
from ntng_jax.train import step as step_lib

L = 4
KEEPS = [
  [True] * L,
  [False] * L,
  [True, False, True, False],
  [False, False, False, True],
  [True, True, False, True],
]


def _models(family):
  config = tiny_config(family, **{"model.num_layers": L})
  cfg = config.model.to_dict()
  cond = build_model({**cfg, "layer_drop_impl": "cond"})
  compact = build_model({**cfg, "layer_drop_impl": "compact"})
  batch = make_batch(family, cfg["vocab_size"])
  return cond, compact, batch, random_params(cond, batch)


def _loss_and_grad(model, batch, traces=None):
  def loss(p, keep):
    if traces is not None:
      traces.append(keep.shape)
    logits, labels, weights = model.logits(p, batch, keep=keep)
    return step_lib.losses.mean_token_loss(logits, labels, weights)

  return jax.jit(jax.value_and_grad(loss))


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_compact_matches_cond_losses_and_gradients(family):
  cond, compact, batch, params = _models(family)
  traces = []
  f_cond, f_compact = _loss_and_grad(cond, batch), _loss_and_grad(compact, batch, traces)
  for keep in KEEPS:
    keep = np.array(keep)
    want, got = f_cond(params, keep), f_compact(params, keep)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    for (path, a), b in zip(
      jax.tree_util.tree_flatten_with_path(got[1])[0], jax.tree.leaves(want[1])
    ):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    grads = {name: np.asarray(g) for name, g in layer_leaves(got[1]).items()}
    assert len(grads) >= 4
    for name, g in grads.items():
      assert not g[~keep].any(), name  # a dropped layer gets exactly zero gradient
    for i in np.flatnonzero(keep):  # every kept layer's weights get a gradient
      assert all(g[i].any() for name, g in grads.items() if "kernel" in name), i
  assert len(traces) == 1  # one program for every keep pattern


def test_compact_train_step_matches_cond_per_micro_batch_keeps():
  """The whole train step with a keep row per micro-batch: same loss, gradient norm, params."""
  config = tiny_config("bert", "size=tiny,method=layer_drop", **{"model.num_layers": L})
  tx = build_optimizer(config.optim)
  batch = make_batch("bert", config.model.vocab_size, batch=8)
  keep = np.array([KEEPS[2], KEEPS[3]])
  out = {}
  for impl in ("cond", "compact"):
    model = build_model({**config.model.to_dict(), "layer_drop_impl": impl})
    state = state_lib.create(random_params(model, batch), tx)
    step = jax.jit(step_lib.make_train_step(model, tx, 2, "float32"))
    controls = {"learning_rate": np.float32(1e-3), "keep": keep}
    out[impl] = step(state, batch, jax.random.PRNGKey(0), controls)
  (s_a, m_a), (s_b, m_b) = out["cond"], out["compact"]
  for k in m_a:
    np.testing.assert_allclose(m_b[k], m_a[k], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s_b.params), jax.tree.leaves(s_a.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_compact_layers_scatters_gradients_to_the_kept_slots():
  """`compact_layers` on a plain function: layer i is h -> tanh(w_i h + c), c broadcast."""

  def layer(p, h, c):
    return jnp.tanh(p["w"] * h + c)

  w = jnp.arange(1.0, 6.0) / 5
  keep = np.array([False, True, True, False, True])
  c, x = jnp.float32(0.3), jnp.float32(0.7)

  def by_hand(w, x, c):
    for i in np.flatnonzero(keep):
      x = layer({"w": w[i]}, x, c)
    return x

  def compact(w, x, c):
    return stack.compact_layers(layer, {"w": w}, x, (c,), jnp.asarray(keep))

  np.testing.assert_allclose(compact(w, x, c), by_hand(w, x, c), rtol=1e-6)
  got = jax.grad(compact, argnums=(0, 1, 2))(w, x, c)
  want = jax.grad(by_hand, argnums=(0, 1, 2))(w, x, c)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5)
  assert got[0][~keep].tolist() == [0.0, 0.0]


def test_layer_drop_impl_config():
  assert model_config("bert", "tiny").layer_drop_impl == "auto"
  with pytest.raises(ValueError, match="model.layer_drop_impl must be one of"):
    model_config("bert", "tiny", layer_drop_impl="switch")
  assert stack.resolve_layer_drop_impl("compact") == "compact"
  want = "cond" if jax.devices()[0].platform == "cpu" else "compact"
  assert stack.resolve_layer_drop_impl("auto") == want
