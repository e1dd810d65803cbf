"""Learning-rate schedule, plateau/early stopping rules and frozen-parameter masking."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from earthrep.training import configs, optim


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


def test_cosine_decay_after_warmup():
  cfg = _cfg(lr=1e-3, warmup_steps=10, warmup_start_factor=0.1, decay="cosine", decay_steps=110, final_lr_factor=0.05)
  lr = lambda step: float(optim.learning_rate(cfg, jnp.asarray(step), jnp.asarray(1.0)))
  assert lr(0) == pytest.approx(1e-4) and lr(10) == pytest.approx(1e-3)
  assert lr(60) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5), rel=1e-6)   # half-way: the mean of the ends
  assert lr(110) == pytest.approx(5e-5, rel=1e-5) and lr(500) == pytest.approx(5e-5, rel=1e-5)
  assert float(optim.learning_rate(_cfg(), jnp.asarray(50_000), jnp.asarray(1.0))) == pytest.approx(1e-4)   # none
  with pytest.raises(ValueError, match="decay 'linear'"):
    optim.learning_rate(_cfg(decay="linear"), jnp.asarray(1), jnp.asarray(1.0))


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
  updates, _ = tx.update(grads, state, params)
  new = optax.apply_updates(params, optim.scale_updates(updates, jnp.asarray(0.1)))
  np.testing.assert_array_equal(new["enc"]["w"], params["enc"]["w"])
  assert not np.array_equal(new["fusion"]["w"], params["fusion"]["w"])
  assert optim.count_params(params, trainable) == 4 and optim.count_params(params) == 16


def test_ema_warms_up_and_leaves_frozen_leaves_bitwise():
  assert float(optim.ema_decay_at(jnp.asarray(0), 0.99)) == pytest.approx(0.1)      # (1 + 0) / (10 + 0)
  assert float(optim.ema_decay_at(jnp.asarray(10_000), 0.99)) == pytest.approx(0.99)
  frozen = jnp.asarray([0.1, 1.0 / 3.0, -7.3e-8], jnp.float32)
  ema = {"frozen": frozen, "trained": jnp.zeros(2)}
  params = {"frozen": frozen, "trained": jnp.ones(2)}
  for step in range(50):
    ema = optim.ema_update(ema, params, jnp.asarray(step), 0.9)
  np.testing.assert_array_equal(ema["frozen"], frozen)
  # the trained leaf moved from 0 towards 1 by prod(d_t) of the remaining weight
  keep = np.prod([min(0.9, (1 + s) / (10 + s)) for s in range(50)])
  np.testing.assert_allclose(ema["trained"], 1.0 - keep, rtol=1e-5)


@pytest.mark.parametrize("clip_norm", [0.0, 1.0])
def test_learning_rate_scaled_updates_are_optax_adamw_bitwise(clip_norm):
  """make_optimizer + scale_updates(lr) == optax.adamw(lr) with float32 hyper-parameters (after the same
  clipping), bit for bit, over steps whose learning rate changes (warm-up, plateau): optax.adamw keeps no
  lr in its state, so a fresh one per step continues from the same moments."""
  cfg = _cfg(weight_decay=0.01, clip_norm=clip_norm)
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=3), jnp.float32)}
  ours = optim.make_optimizer(cfg)
  p_ours = p_ref = params
  ours_state = ours.init(params)
  for step, lr in enumerate([1e-3, 5e-4, 2e-3, 2e-3]):
    grads = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params)
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    ref = optax.adamw(lr, b1=f32(0.9), b2=f32(0.999), eps=f32(1e-8), weight_decay=f32(cfg.weight_decay))
    ref = optax.chain(optax.clip_by_global_norm(clip_norm), ref) if clip_norm else ref
    if step == 0:
      ref_state = ref.init(params)
    updates, ours_state = ours.update(grads, ours_state, p_ours)
    p_ours = optax.apply_updates(p_ours, optim.scale_updates(updates, jnp.asarray(lr, jnp.float32)))
    ref_updates, ref_state = ref.update(grads, ref_state, p_ref)
    p_ref = optax.apply_updates(p_ref, ref_updates)
    for k in params:
      np.testing.assert_array_equal(p_ours[k], p_ref[k], err_msg=f"step {step} {k}")


def test_first_adamw_step_is_minus_lr_times_sign():
  params = {"w": jnp.ones((2,))}
  tx = optim.make_optimizer(_cfg(weight_decay=0.0, clip_norm=1.0))
  updates, _ = tx.update({"w": jnp.asarray([1.0, -1.0])}, tx.init(params), params)
  np.testing.assert_allclose(optim.scale_updates(updates, jnp.asarray(0.5))["w"], [-0.5, 0.5], rtol=2e-7)
