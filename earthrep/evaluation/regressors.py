"""GPP regressors on 90-day windows of daily features: the reference's temporal transformer, ridge, boosted trees.

Dimension letters: b batch (windows), t day in the window (oldest first, last = target day), f feature.
Windows (ARCHITECTURE.md h): the `window_days` days ending on the target day, inclusive; a window is used when
every feature value in it is finite and the target is present (training also needs qc_ok). Features are
standardised with training means/stds (the reference feeds raw embeddings; standardising lets one config
serve bands, indices, dB and embeddings), GPP with training mean/std (the reference used fixed 4.042 / 4.386).
`GPPTemporalTransformer`: Dense f->d_model, post-norm encoder layers (self-attention + residual + LayerNorm,
ReLU FFN + residual + LayerNorm), last time step, LayerNorm -> Dense d/2 -> GELU -> Dropout -> Dense 1; L1 loss
on standardised GPP, AdamW, a fixed number of steps (deterministic given the seed; the reference's learned time
table is unused there, so it is left out). Ridge (RidgeCV) and HistGradientBoostingRegressor see the last day's
features, the 90-day mean and the last-30-day mean (3F inputs).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

WINDOW_DAYS = 90
REGRESSORS = ("transformer", "ridge", "hgb")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  d_model: int = 32
  heads: int = 4
  layers: int = 2
  ffn: int = 64
  dropout: float = 0.05
  batch: int = 32
  steps: int = 300
  learning_rate: float = 1e-3
  weight_decay: float = 1e-6
  seed: int = 0


def make_windows(features_df: np.ndarray, target_d: np.ndarray, usable_d: np.ndarray,
                 window_days: int = WINDOW_DAYS, stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(D, F) daily features, (D,) target, (D,) usable mask -> windows (B, T, F), targets (B,), end-day index (B,)."""
  features_df = np.asarray(features_df, np.float32)
  finite_d = np.isfinite(features_df).all(1)
  # A window [e-T+1, e] is complete when the running count of finite days over it equals T.
  counts = np.concatenate([[0], np.cumsum(finite_d)])
  ends = np.arange(window_days - 1, len(target_d), stride)
  complete = counts[ends + 1] - counts[ends + 1 - window_days] == window_days
  ends = ends[complete & usable_d[ends] & np.isfinite(target_d[ends])]
  offsets = np.arange(-window_days + 1, 1)
  windows_btf = features_df[ends[:, None] + offsets[None, :]]
  return windows_btf, np.asarray(target_d[ends], np.float32), ends


def summary_features(windows_btf: np.ndarray) -> np.ndarray:
  """(B, T, F) -> (B, 3F): last day, window mean, last-30-day mean."""
  return np.concatenate([windows_btf[:, -1], windows_btf.mean(1), windows_btf[:, -30:].mean(1)], axis=1)


@dataclasses.dataclass
class Standardiser:
  mean: np.ndarray
  std: np.ndarray

  @classmethod
  def fit(cls, values: np.ndarray, axes: tuple[int, ...]) -> "Standardiser":
    std = values.std(axis=axes)
    return cls(values.mean(axis=axes), np.where(std > 1e-8, std, 1.0))

  def __call__(self, values: np.ndarray) -> np.ndarray:
    return ((values - self.mean) / self.std).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Transformer (Flax).
# ---------------------------------------------------------------------------------------------
def _transformer_module(config: TransformerConfig):
  import flax.linen as nn
  import jax.numpy as jnp

  class EncoderLayer(nn.Module):
    @nn.compact
    def __call__(self, x_btd, train: bool):
      attended = nn.MultiHeadDotProductAttention(num_heads=config.heads, dropout_rate=config.dropout,
                                                 deterministic=not train)(x_btd, x_btd)
      x_btd = nn.LayerNorm()(x_btd + nn.Dropout(config.dropout, deterministic=not train)(attended))
      hidden = nn.Dense(config.d_model)(nn.Dropout(config.dropout, deterministic=not train)(
          nn.relu(nn.Dense(config.ffn)(x_btd))))
      return nn.LayerNorm()(x_btd + nn.Dropout(config.dropout, deterministic=not train)(hidden))

  class GPPTemporalTransformer(nn.Module):
    @nn.compact
    def __call__(self, x_btf, train: bool = False):
      x_btd = nn.Dense(config.d_model)(x_btf)
      for _ in range(config.layers):
        x_btd = EncoderLayer()(x_btd, train)
      h_bd = nn.LayerNorm()(x_btd[:, -1])
      h_bd = nn.Dropout(config.dropout, deterministic=not train)(nn.gelu(nn.Dense(config.d_model // 2)(h_bd)))
      return jnp.squeeze(nn.Dense(1)(h_bd), -1)

  return GPPTemporalTransformer()


@functools.lru_cache(maxsize=8)
def _compiled(config: TransformerConfig):
  """(module, optimizer, jitted train_step, jitted apply), cached so LOSO folds reuse one compilation."""
  import jax
  import jax.numpy as jnp
  import optax
  module = _transformer_module(config)
  optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)

  def loss_fn(params, x_btf, y_b, rng):
    pred_b = module.apply({"params": params}, x_btf, train=True, rngs={"dropout": rng})
    return jnp.mean(jnp.abs(pred_b - y_b))

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, x_btf, y_b, rng):
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], x_btf, y_b, rng)
    updates, opt = optimizer.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

  apply = jax.jit(lambda params, x_btf: module.apply({"params": params}, x_btf, train=False))
  return module, optimizer, train_step, apply


class TransformerRegressor:
  """fit(windows, gpp) / predict(windows); `losses` holds the training L1 per step."""

  def __init__(self, config: TransformerConfig = TransformerConfig()):
    self.config = config
    self.losses: list[float] = []

  def fit(self, windows_btf: np.ndarray, gpp_b: np.ndarray) -> "TransformerRegressor":
    import jax
    import jax.numpy as jnp
    cfg = self.config
    if len(gpp_b) == 0:
      raise ValueError("no training windows")
    self.x_scale = Standardiser.fit(windows_btf, (0, 1))
    self.y_scale = Standardiser.fit(gpp_b, (0,))
    x_btf, y_b = self.x_scale(windows_btf), self.y_scale(gpp_b)
    module, optimizer, train_step, self._apply = _compiled(cfg)
    key = jax.random.PRNGKey(cfg.seed)
    key, init_key = jax.random.split(key)
    params = module.init(init_key, jnp.asarray(x_btf[:1]))["params"]
    state = {"params": params, "opt": optimizer.init(params)}
    order_rng = np.random.default_rng(cfg.seed)
    losses = []
    for step in range(cfg.steps):   # fixed batch shape: one compilation; with replacement if few windows
      idx = order_rng.choice(len(y_b), cfg.batch, replace=len(y_b) < cfg.batch)
      state, loss = train_step(state, x_btf[idx], y_b[idx], jax.random.fold_in(key, step))
      losses.append(loss)
    self.losses = [float(v) for v in jax.device_get(losses)]
    if not np.isfinite(self.losses).all():
      raise FloatingPointError("transformer training produced a non-finite loss")
    self.params = state["params"]
    return self

  def predict(self, windows_btf: np.ndarray) -> np.ndarray:
    import jax
    x_btf = self.x_scale(windows_btf)
    chunk = 256
    out = []
    for i in range(0, len(x_btf), chunk):   # padded to a fixed chunk: one compilation
      part = x_btf[i:i + chunk]
      padded = np.concatenate([part, np.zeros((chunk - len(part),) + part.shape[1:], np.float32)])
      out.append(np.asarray(jax.device_get(self._apply(self.params, padded)))[:len(part)])
    pred = np.concatenate(out) if out else np.zeros(0, np.float32)
    return pred * self.y_scale.std + self.y_scale.mean


class SummaryRegressor:
  """Ridge or gradient-boosted trees on `summary_features`."""

  def __init__(self, kind: str, seed: int = 0):
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    if kind == "ridge":
      self.model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 4, 11)))
    elif kind == "hgb":
      self.model = HistGradientBoostingRegressor(max_iter=100, learning_rate=0.1, max_leaf_nodes=15,
                                                 min_samples_leaf=20, random_state=seed)
    else:
      raise ValueError(f"regressor {kind!r}: expected one of {REGRESSORS}")

  def fit(self, windows_btf: np.ndarray, gpp_b: np.ndarray) -> "SummaryRegressor":
    self.model.fit(summary_features(windows_btf), gpp_b)
    return self

  def predict(self, windows_btf: np.ndarray) -> np.ndarray:
    return self.model.predict(summary_features(windows_btf)).astype(np.float32)


def make_regressor(kind: str, seed: int = 0, transformer: TransformerConfig | None = None) -> Any:
  if kind == "transformer":
    return TransformerRegressor(dataclasses.replace(transformer or TransformerConfig(), seed=seed))
  return SummaryRegressor(kind, seed)
