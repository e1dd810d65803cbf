"""GPP regressors on 90-day windows of daily design columns: the reference's temporal transformer, ridge and
boosted trees, each with the hyper-parameters that nested selection (`evaluation.nested`) tunes.

Dimension letters: b batch (windows), t day in the window (oldest first, last = target day), f column.
Windows (ARCHITECTURE.md h): the `window_days` days ending on the target day, inclusive; a window is used when
every value in it is finite and the target is usable. Ridge and boosted trees see `summary_features` of a
window (the last day, the window mean and the last-30-day mean: 3F inputs), computed from running sums of the
daily table without building windows; the transformer sees the window itself.
* Ridge: standardised inputs and centred target, closed form through one SVD for every alpha of the grid
  `RIDGE_ALPHAS` (so inner folds score all alphas at the price of one fit).
* Boosted trees: sklearn's HistGradientBoostingRegressor (learning rate 0.1, min 20 samples per leaf) with
  `max_leaf_nodes` in `HGB_LEAVES` and the number of iterations (<= `HGB_MAX_ITER`) read off the validation
  curve of `staged_predict`.
* `GPPTemporalTransformer`: Dense f->d_model, post-norm encoder layers (self-attention + residual + LayerNorm,
  ReLU FFN + residual + LayerNorm), last time step, LayerNorm -> Dense d/2 -> GELU -> Dropout -> Dense 1; L1 loss
  on standardised GPP (inputs and GPP standardised with training means/stds), AdamW. Early stopping: the
  validation L1 (windows of held-out sites) every `eval_every` steps; training stops after `patience`
  evaluations without improvement or at `steps`, and the parameters of the best evaluation are kept.
  `losses` (training L1 per step) and `val_losses` ((step, L1)) are the loss curves of the report.
  Columns are zero-padded to a multiple of 16 (one compilation for every feature set). Tokens: with
  `pool_days` p > 1 the window's days before the target become (T - 1) // p means of p days (the oldest
  (T - 1) % p days dropped) and the target day stays a token of its own, so a 90-day window is 30 tokens at
  p = 3: a CPU measure (attention and projections ~5-9x cheaper; at p = 1, the reference's one token per
  day, a step of a 32-wide layer on 64 windows took ~40 ms on one core). `pool_days=1` restores it.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

WINDOW_DAYS = 90
REGRESSORS = ("ridge", "hgb", "transformer")
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 4, 15))
HGB_LEAVES = (7, 15)
HGB_MAX_ITER = 100


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  d_model: int = 32
  heads: int = 4
  layers: int = 1
  ffn: int = 64
  dropout: float = 0.05
  batch: int = 32
  steps: int = 400
  eval_every: int = 20
  patience: int = 5
  val_windows: int = 512
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  pool_days: int = 3
  seed: int = 0

  @property
  def architecture(self) -> tuple:
    """What the compiled functions depend on (not steps, seeds or stopping)."""
    return (self.d_model, self.heads, self.layers, self.ffn, self.dropout, self.learning_rate, self.weight_decay)


def make_windows(features_df: np.ndarray, target_d: np.ndarray, usable_d: np.ndarray,
                 window_days: int = WINDOW_DAYS, stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(D, F) daily features, (D,) target, (D,) usable mask -> windows (B, T, F), targets (B,), end-day index (B,)."""
  ends = window_ends(features_df, target_d, usable_d, window_days, stride)
  return windows_at(features_df, ends, window_days), np.asarray(target_d[ends], np.float32), ends


def complete_windows(features_df: np.ndarray, window_days: int = WINDOW_DAYS) -> np.ndarray:
  """(D,) bool: the `window_days` days ending on each day are all finite."""
  finite_d = np.isfinite(np.asarray(features_df, np.float64)).all(1)
  counts = np.concatenate([[0], np.cumsum(finite_d)])
  out = np.zeros(len(finite_d), bool)
  if len(finite_d) >= window_days:
    ends = np.arange(window_days - 1, len(finite_d))
    out[ends] = counts[ends + 1] - counts[ends + 1 - window_days] == window_days
  return out


def window_ends(features_df: np.ndarray, target_d: np.ndarray, usable_d: np.ndarray,
                window_days: int = WINDOW_DAYS, stride: int = 1) -> np.ndarray:
  ok = complete_windows(features_df, window_days) & np.asarray(usable_d, bool) & np.isfinite(target_d)
  ends = np.flatnonzero(ok)
  return ends[(ends - (window_days - 1)) % stride == 0] if stride > 1 else ends


def windows_at(features_df: np.ndarray, ends: np.ndarray, window_days: int = WINDOW_DAYS) -> np.ndarray:
  offsets = np.arange(-window_days + 1, 1)
  return np.asarray(features_df, np.float32)[ends[:, None] + offsets[None, :]]


def summary_features(features_df: np.ndarray, ends: np.ndarray, window_days: int = WINDOW_DAYS) -> np.ndarray:
  """(D, F) daily table and (B,) end days -> (B, 3F): last day, window mean, last-30-day mean."""
  values = np.asarray(features_df, np.float64)
  sums = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(np.nan_to_num(values), axis=0)])
  short = min(30, window_days)
  mean_all = (sums[ends + 1] - sums[ends + 1 - window_days]) / window_days
  mean_short = (sums[ends + 1] - sums[ends + 1 - short]) / short
  return np.concatenate([values[ends], mean_all, mean_short], axis=1).astype(np.float32)


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
# Ridge and boosted trees (summary features).
# ---------------------------------------------------------------------------------------------
class Ridge:
  """Ridge on standardised inputs; `fit_path` gives the predictions of every alpha at once."""

  def __init__(self, alpha: float = 1.0):
    self.alpha = alpha

  @staticmethod
  def fit_path(x_nf: np.ndarray, y_n: np.ndarray, x_eval: np.ndarray, alphas=RIDGE_ALPHAS) -> np.ndarray:
    """(A, n_eval) predictions of ridge fits on (x_nf, y_n) for each alpha."""
    scale = Standardiser.fit(np.asarray(x_nf, np.float64), (0,))
    xs, xe = scale(x_nf).astype(np.float64), scale(x_eval).astype(np.float64)
    y_mean = float(np.mean(y_n))
    u, s, vt = np.linalg.svd(xs, full_matrices=False)
    uty = u.T @ (np.asarray(y_n, np.float64) - y_mean)
    proj = xe @ vt.T                                          # (n_eval, k)
    return np.stack([proj @ (s / (s ** 2 + a) * uty) for a in alphas]) + y_mean

  def fit(self, x_nf: np.ndarray, y_n: np.ndarray) -> "Ridge":
    self.scale = Standardiser.fit(np.asarray(x_nf, np.float64), (0,))
    xs = self.scale(x_nf).astype(np.float64)
    self.y_mean = float(np.mean(y_n))
    gram = xs.T @ xs + self.alpha * np.eye(xs.shape[1])
    self.coef = np.linalg.solve(gram, xs.T @ (np.asarray(y_n, np.float64) - self.y_mean))
    return self

  def predict(self, x_nf: np.ndarray) -> np.ndarray:
    return (self.scale(x_nf).astype(np.float64) @ self.coef + self.y_mean).astype(np.float32)


def boosted_trees(leaves: int, iterations: int, seed: int = 0):
  from sklearn.ensemble import HistGradientBoostingRegressor
  return HistGradientBoostingRegressor(max_iter=iterations, learning_rate=0.1, max_leaf_nodes=leaves,
                                       min_samples_leaf=20, early_stopping=False, random_state=seed)


def hgb_validation_curve(leaves: int, x_nf, y_n, x_val, y_val, seed: int = 0) -> np.ndarray:
  """(HGB_MAX_ITER,) validation MSE after each boosting iteration."""
  model = boosted_trees(leaves, HGB_MAX_ITER, seed).fit(x_nf, y_n)
  return np.array([np.mean((p - y_val) ** 2) for p in model.staged_predict(x_val)])


# ---------------------------------------------------------------------------------------------
# Transformer (Flax).
# ---------------------------------------------------------------------------------------------
FEATURE_PAD = 16


def pool_window(x_btf: np.ndarray, pool_days: int) -> np.ndarray:
  """(B, T, F) -> (B, (T - 1) // p + 1, F'): p-day means of the days before the target, then the target day;
  F' = F padded with zero columns to a multiple of FEATURE_PAD, so every feature set of up to 16 columns
  shares one compilation (a zero column stays zero after standardising and adds nothing)."""
  if pool_days > 1:
    blocks = (x_btf.shape[1] - 1) // pool_days
    past = x_btf[:, x_btf.shape[1] - 1 - blocks * pool_days:-1]
    past = past.reshape(len(x_btf), blocks, pool_days, x_btf.shape[2]).mean(2)
    x_btf = np.concatenate([past, x_btf[:, -1:]], axis=1)
  pad = -x_btf.shape[2] % FEATURE_PAD
  return np.pad(x_btf, ((0, 0), (0, 0), (0, pad))).astype(np.float32)


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
def _compiled_for(architecture: tuple):
  """(module, optimizer, jitted train_step, jitted apply), cached so folds reuse one compilation per shape."""
  config = TransformerConfig(*architecture[:5], learning_rate=architecture[5], weight_decay=architecture[6])
  import jax
  import jax.numpy as jnp
  import optax
  module = _transformer_module(config)
  optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)

  def loss_fn(params, x_btf, y_b, rng):
    pred_b = module.apply({"params": params}, x_btf, train=True, rngs={"dropout": rng})
    return jnp.mean(jnp.abs(pred_b - y_b))

  @jax.jit
  def train_step(state, x_btf, y_b, rng):
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], x_btf, y_b, rng)
    updates, opt = optimizer.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

  apply = jax.jit(lambda params, x_btf: module.apply({"params": params}, x_btf, train=False))
  return module, optimizer, train_step, apply


class TransformerRegressor:
  """fit(windows, gpp[, validation windows, gpp]) / predict(windows); see the module docstring."""

  def __init__(self, config: TransformerConfig = TransformerConfig()):
    self.config = config
    self.losses: list[float] = []
    self.val_losses: list[tuple[int, float]] = []
    self.best_step = 0

  def _predict_std(self, params, x_btf: np.ndarray) -> np.ndarray:
    import jax
    chunk, out = 256, []
    for i in range(0, len(x_btf), chunk):   # padded to a fixed chunk: one compilation
      part = x_btf[i:i + chunk]
      padded = np.concatenate([part, np.zeros((chunk - len(part),) + part.shape[1:], np.float32)])
      out.append(np.asarray(jax.device_get(self._apply(params, padded)))[:len(part)])
    return np.concatenate(out) if out else np.zeros(0, np.float32)

  def fit(self, windows_btf: np.ndarray, gpp_b: np.ndarray, val_btf: np.ndarray | None = None,
          val_b: np.ndarray | None = None) -> "TransformerRegressor":
    import jax
    import jax.numpy as jnp
    cfg = self.config
    if len(gpp_b) == 0:
      raise ValueError("no training windows")
    windows_btf = pool_window(windows_btf, cfg.pool_days)
    self.x_scale = Standardiser.fit(windows_btf, (0, 1))
    self.y_scale = Standardiser.fit(gpp_b, (0,))
    x_btf, y_b = self.x_scale(windows_btf), self.y_scale(gpp_b)
    module, optimizer, train_step, self._apply = _compiled_for(cfg.architecture)
    key = jax.random.PRNGKey(cfg.seed)
    key, init_key = jax.random.split(key)
    params = module.init(init_key, jnp.asarray(x_btf[:1]))["params"]
    state = {"params": params, "opt": optimizer.init(params)}
    rng = np.random.default_rng(cfg.seed)
    if val_btf is not None and len(val_b):
      pick = rng.choice(len(val_b), min(len(val_b), cfg.val_windows), replace=False)
      val_x, val_y = self.x_scale(pool_window(val_btf[pick], cfg.pool_days)), self.y_scale(val_b[pick])
    else:
      val_x = val_y = None
    losses, best, since_best, self.val_losses, self.params = [], np.inf, 0, [], state["params"]
    for step in range(1, cfg.steps + 1):   # fixed batch shape: one compilation; with replacement if few windows
      idx = rng.choice(len(y_b), cfg.batch, replace=len(y_b) < cfg.batch)
      state, loss = train_step(state, x_btf[idx], y_b[idx], jax.random.fold_in(key, step))
      losses.append(loss)
      if val_x is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
        val = float(np.mean(np.abs(self._predict_std(state["params"], val_x) - val_y)))
        self.val_losses.append((step, val))
        if val < best:
          best, since_best, self.best_step = val, 0, step
          self.params = jax.tree.map(np.asarray, state["params"])
        else:
          since_best += 1
          if since_best >= cfg.patience:
            break
    self.losses = [float(v) for v in jax.device_get(losses)]
    if not np.isfinite(self.losses).all():
      raise FloatingPointError("transformer training produced a non-finite loss")
    if val_x is None:
      self.params, self.best_step = state["params"], len(self.losses)
    return self

  def predict(self, windows_btf: np.ndarray) -> np.ndarray:
    pred = self._predict_std(self.params, self.x_scale(pool_window(windows_btf, self.config.pool_days)))
    return pred * self.y_scale.std + self.y_scale.mean
