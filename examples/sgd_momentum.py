"""An example optimizer recipe kept outside the package: SGD with heavy-ball momentum.

  PYTHONPATH=examples python -m launch.pretrain --config=configs/bert.py:size=tiny \\
      --config.optim.name=sgd_momentum:sgd --config.optim.learning_rate=0.1 --workdir=runs/sgd

`ntng_jax.optim.build_optimizer` calls `sgd(learning_rate, optim_cfg)` and wraps the result like a
built-in optimizer (`optim.clip_norm` first, the learning rate injected so the trainer can set it
every step). `learning_rate` may be a traced scalar: pass it on, do not convert it to a float.
"""

import optax


def sgd(learning_rate, optim_cfg) -> optax.GradientTransformation:
  """optax.sgd with momentum `optim.b1` (default 0.9); Nesterov if `optim.nesterov`."""
  momentum = optim_cfg.get("b1", None)
  return optax.sgd(
    learning_rate,
    momentum=0.9 if momentum is None else float(momentum),
    nesterov=bool(optim_cfg.get("nesterov", False)),
  )
