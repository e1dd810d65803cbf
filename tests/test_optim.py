"""Learning-rate schedule, plateau/early stopping rules and frozen-parameter masking."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from earthrep import configs, optim


def _cfg(**kw):
  c = configs.optimizer_config("stage1", "")
  c.update(kw)
  return c


def test_warmup_matches_torch_linear_lr():
  # torch LinearLR(start_factor=1e-3, total_iters=35000): factor = s + (1 - s) * min(step, n) / n
  for step, want in [(0, 1e-3), (17_500, 1e-3 + (1 - 1e-3) * 0.5), (35_000, 1.0), (90_000, 1.0)]:
    got = float(optim.warmup_factor(jnp.asarray(step), 35_000, 1e-3))
    assert got == pytest.approx(want, rel=1e-6)
  assert float(optim.learning_rate(_cfg(), jnp.asarray(35_000), jnp.asarray(0.35))) == pytest.approx(3.5e-5)


def test_plateau_reduces_after_patience_and_respects_min_lr():
  cfg = _cfg(plateau_patience=2, plateau_factor=0.5, plateau_threshold=1e-3, min_lr=3e-5, lr=1e-4,
             early_stopping_patience=0)
  s = optim.PlateauState()
  s, _ = optim.plateau_update(s, 1.0, cfg)            # improvement: best = 1.0
  for _ in range(2):                                   # 2 bad epochs: not yet more than patience
    s, _ = optim.plateau_update(s, 0.9995, cfg)        # within the abs threshold -> not an improvement
  assert s.lr_scale == 1.0 and s.num_bad == 2
  s, _ = optim.plateau_update(s, 0.9995, cfg)          # 3rd bad epoch > patience -> reduce, reset
  assert s.lr_scale == 0.5 and s.num_bad == 0
  for _ in range(3):
    s, _ = optim.plateau_update(s, 0.9995, cfg)
  assert s.lr_scale == pytest.approx(0.3)             # floored at min_lr / lr, not 0.25
  s, _ = optim.plateau_update(s, 0.5, cfg)
  assert s.best == 0.5 and s.num_bad == 0


def test_early_stopping_after_patience():
  cfg = _cfg(early_stopping_patience=3)
  s, stops = optim.PlateauState(), []
  for metric in [1.0, 0.9, 0.95, 0.95, 0.91]:
    s, stop = optim.plateau_update(s, metric, cfg)
    stops.append(stop)
  assert stops == [False, False, False, False, True]
  assert optim.PlateauState.from_dict(s.to_dict()) == s


def test_frozen_params_get_no_update_and_no_state():
  params = {"enc": {"w": jnp.ones((3, 4))}, "fusion": {"w": jnp.ones((4,))}}
  trainable = {"enc": {"w": False}, "fusion": {"w": True}}
  tx = optim.make_optimizer(_cfg(), trainable)
  state = tx.init(params)
  n_state = sum(x.size for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) > 0)
  assert n_state == 2 * 4  # Adam mu and nu of the trained (4,) leaf only
  grads = jax.tree.map(jnp.ones_like, params)
  state = optim.set_learning_rate(state, jnp.asarray(0.1))
  updates, _ = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["enc"]["w"], params["enc"]["w"])
  assert not np.array_equal(new["fusion"]["w"], params["fusion"]["w"])
  assert optim.count_params(params, trainable) == 4 and optim.count_params(params) == 16


@pytest.mark.parametrize("clip_norm", [0.0, 1.0])
def test_set_learning_rate_drives_adamw(clip_norm):
  params = {"w": jnp.ones((2,))}
  tx = optim.make_optimizer(_cfg(weight_decay=0.0, clip_norm=clip_norm))
  state = optim.set_learning_rate(tx.init(params), jnp.asarray(0.5))
  updates, _ = tx.update({"w": jnp.asarray([1.0, -1.0])}, state, params)
  np.testing.assert_allclose(updates["w"], [-0.5, 0.5], rtol=1e-6)  # first Adam step = -lr * sign(g)
