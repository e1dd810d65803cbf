"""Optimiser, learning-rate schedule and the reference's plateau/early-stopping logic.

The reference (section f) trains with AdamW, a per-step LinearLR warm-up from `warmup_start_factor`
to 1 and a per-validation ReduceLROnPlateau (abs threshold) on the selection metric, plus early
stopping. Here the learning rate is a function of the step (warm-up) and of the plateau scale, a scalar
updated on the host after each validation and passed to the jitted update; the step and the plateau
state are saved with the checkpoint, so a resumed run follows exactly the same learning-rate path.
Frozen parameters get `optax.set_to_zero` through `optax.multi_transform`, which keeps no optimiser state
for them. With `ema_decay` > 0 (not the reference) the trainer also keeps an exponential moving average of
the params (`ema_update`), validates it and saves it as the best checkpoints.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def warmup_factor(step: jax.Array, warmup_steps: int, start_factor: float) -> jax.Array:
  """torch LinearLR: factor goes linearly from start_factor to 1 over warmup_steps, then stays 1."""
  if warmup_steps <= 0:
    return jnp.ones((), jnp.float32)
  frac = jnp.minimum(step.astype(jnp.float32), warmup_steps) / warmup_steps
  return start_factor + (1.0 - start_factor) * frac


def make_optimizer(cfg: ml_collections.ConfigDict, trainable: Any | None = None
                   ) -> optax.GradientTransformation:
  """AdamW (torch's decoupled decay) after global-norm clipping, at a learning rate of 1.

  The learning rate of a step (`learning_rate`) multiplies the updates afterwards (`scale_updates`): the
  same numbers as `optax.adamw(lr)`, whose last stage is a multiplication by -lr, with no hyper-parameter
  kept inside the optimiser state. `trainable` is a pytree of bools shaped like the params; False leaves
  are frozen (zero update, no Adam moments).
  """
  # float32 hyper-parameters, not Python floats: with a float b2 optax computes (1 - b2) in float64 for the
  # second moment but (1 - b2**t) in float32 for its bias correction, a 6e-6 error in the first steps.
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  adamw = optax.chain(
      optax.scale_by_adam(b1=f32(cfg.get("b1", 0.9)), b2=f32(cfg.get("b2", 0.999)), eps=f32(cfg.get("eps", 1e-8))),
      optax.add_decayed_weights(f32(cfg.weight_decay)), optax.scale(-1.0))
  tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw) if cfg.clip_norm else adamw
  if trainable is None:
    return tx
  labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable)
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """Decay of the params' moving average after update number `step` (0-based): min(decay, (1 + step) /
  (10 + step)), so that the first updates are not averaged with the initial params for long."""
  s = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + s) / (10.0 + s))


def ema_update(ema: Any, params: Any, step: jax.Array, decay: float) -> Any:
  """ema + (1 - d) (params - ema) leaf by leaf: a leaf equal to its average (a frozen one) stays bitwise."""
  keep = 1.0 - ema_decay_at(step, decay)
  return jax.tree.map(lambda e, p: e + keep.astype(e.dtype) * (p - e), ema, params)


def scale_updates(updates: Any, lr: jax.Array) -> Any:
  """The updates of `make_optimizer` at learning rate `lr`."""
  return jax.tree.map(lambda u: lr.astype(u.dtype) * u, updates)


def decay_factor(step: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
  """`cfg.decay`: "none" (the reference: constant after warm-up, only the plateau rule lowers it) or
  "cosine": from the end of the warm-up to `decay_steps`, half a cosine from 1 to `final_lr_factor`."""
  decay = cfg.get("decay", "none")
  if decay == "none":
    return jnp.ones((), jnp.float32)
  if decay != "cosine":
    raise ValueError(f"optimizer.decay {decay!r}: expected 'none' or 'cosine'")
  start, end = cfg.warmup_steps, max(int(cfg.decay_steps), cfg.warmup_steps + 1)
  frac = jnp.clip((step.astype(jnp.float32) - start) / (end - start), 0.0, 1.0)
  final = cfg.get("final_lr_factor", 0.0)
  return final + (1.0 - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


def learning_rate(cfg: ml_collections.ConfigDict, step: jax.Array, lr_scale: jax.Array) -> jax.Array:
  # lr_scale is already floored at min_lr / lr by plateau_update (torch's min_lr).
  return cfg.lr * warmup_factor(step, cfg.warmup_steps, cfg.warmup_start_factor) * decay_factor(step, cfg) * lr_scale


@dataclasses.dataclass
class PlateauState:
  """Host-side state of ReduceLROnPlateau (mode min, abs threshold) and early stopping."""
  best: float = float("inf")
  num_bad: int = 0
  lr_scale: float = 1.0
  stop_best: float = float("inf")
  stop_bad: int = 0

  def to_dict(self) -> dict[str, float]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "PlateauState":
    return cls(**{k: d[k] for k in dataclasses.asdict(cls()) if k in d})


def plateau_update(state: PlateauState, metric: float, cfg: ml_collections.ConfigDict
                   ) -> tuple[PlateauState, bool]:
  """One validation result -> (new state, stop?). Mirrors torch ReduceLROnPlateau(threshold_mode='abs')
  and Lightning EarlyStopping(min_delta=0)."""
  s = dataclasses.replace(state)
  if metric < s.best - cfg.plateau_threshold:
    s.best, s.num_bad = metric, 0
  else:
    s.num_bad += 1
  if s.num_bad > cfg.plateau_patience:
    s.lr_scale = max(s.lr_scale * cfg.plateau_factor, cfg.min_lr / cfg.lr)
    s.num_bad = 0
  if metric < s.stop_best:
    s.stop_best, s.stop_bad = metric, 0
  else:
    s.stop_bad += 1
  patience = cfg.get("early_stopping_patience", 0)
  return s, bool(patience and s.stop_bad >= patience)


def count_params(tree: Any, mask: Any | None = None) -> int:
  leaves = jax.tree.leaves(tree)
  if mask is None:
    return int(sum(x.size for x in leaves))
  return int(sum(x.size for x, m in zip(leaves, jax.tree.leaves(mask)) if m))
