"""Skill metrics of the GPP evaluation, per site and pooled, with bootstrap intervals over sites.

Metrics (gC m-2 d-1) of predictions against observed daily GPP: R2 = squared Pearson correlation; RMSE;
bias = mean(pred - obs); NRMSE = RMSE / (max(obs) - min(obs)) as the reference; NSE = 1 - SSE / sum((obs -
mean obs)^2); r2_anom = R2 of the anomalies of obs and pred from the site's mean seasonal cycle (the
per-site day-of-year mean of the scored observations, smoothed by a 31-day circular moving mean: in-sample,
so r2_anom measures how well day-to-day and inter-annual departures are tracked).
Intervals: sites are resampled with replacement (`n_boot` draws, seeded) and the pooled R2, RMSE and bias are
recomputed from per-site sums; the 2.5 and 97.5 percentiles are the 95 % interval. `paired_differences`
resamples the same sites for two models, so the interval of a difference accounts for the shared sites.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

METRICS = ("n", "r2", "rmse", "bias", "nrmse", "nse", "r2_anom")
CI_METRICS = ("r2", "rmse", "bias")
SEASONAL_WINDOW_DAYS = 31
N_BOOT = 1000
# per-site sufficient statistics: n, sum o, sum p, sum o^2, sum p^2, sum o p
_STATS = 6


def _r2(a: np.ndarray, b: np.ndarray) -> float:
  if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
    return float("nan")
  return float(np.corrcoef(a, b)[0, 1] ** 2)


def seasonal_cycle(dates: pd.DatetimeIndex, gpp: np.ndarray, window: int = SEASONAL_WINDOW_DAYS) -> pd.Series:
  """Day-of-year (1..366) mean of finite gpp, circularly smoothed with a `window`-day moving mean."""
  frame = pd.Series(np.asarray(gpp, float), index=pd.DatetimeIndex(dates).day_of_year).dropna()
  by_doy = frame.groupby(level=0).mean().reindex(np.arange(1, 367))
  half = window // 2
  padded = np.concatenate([by_doy.values[-half:], by_doy.values, by_doy.values[:half]])
  smooth = pd.Series(padded).rolling(window, center=True, min_periods=1).mean().to_numpy()[half:-half]
  return pd.Series(smooth, index=by_doy.index)


def metrics(obs: np.ndarray, pred: np.ndarray, climatology: np.ndarray | None = None) -> dict[str, float]:
  """`climatology`: the seasonal-cycle value of each observation's day (for r2_anom), or None."""
  obs, pred = np.asarray(obs, float), np.asarray(pred, float)
  n = len(obs)
  if n == 0:
    return {"n": 0, **{k: float("nan") for k in METRICS[1:]}}
  err = pred - obs
  rmse = float(np.sqrt(np.mean(err ** 2)))
  spread = float(obs.max() - obs.min())
  sst = float(np.sum((obs - obs.mean()) ** 2))
  r2_anom = float("nan")
  if climatology is not None:
    ok = np.isfinite(climatology)
    r2_anom = _r2(obs[ok] - climatology[ok], pred[ok] - climatology[ok])
  return {"n": n, "r2": _r2(obs, pred), "rmse": rmse, "bias": float(err.mean()),
          "nrmse": rmse / spread if spread > 0 else float("nan"),
          "nse": 1.0 - float(np.sum(err ** 2)) / sst if sst > 0 else float("nan"), "r2_anom": r2_anom}


def score(predictions: pd.DataFrame) -> pd.DataFrame:
  """Per-site rows and one pooled row (site "pooled") of METRICS for one model's predictions
  (columns site, date, obs, pred)."""
  rows, pooled = [], []
  for sid, part in predictions.groupby("site", sort=True):
    obs, pred = part["obs"].to_numpy(), part["pred"].to_numpy()
    dates = pd.DatetimeIndex(part["date"])
    clim = seasonal_cycle(dates, obs).reindex(dates.day_of_year).to_numpy()
    rows.append({"site": sid, **metrics(obs, pred, clim)})
    pooled.append((obs, pred, clim))
  if pooled:
    obs, pred, clim = (np.concatenate(v) for v in zip(*pooled))
    rows.insert(0, {"site": "pooled", **metrics(obs, pred, clim)})
  return pd.DataFrame(rows, columns=["site", *METRICS])


def site_stats(predictions: pd.DataFrame, sites: Sequence[str]) -> np.ndarray:
  """(S, 6) sufficient statistics per site (zeros for a site without predictions)."""
  out = np.zeros((len(sites), _STATS))
  index = {s: i for i, s in enumerate(sites)}
  for sid, part in predictions.groupby("site"):
    o, p = part["obs"].to_numpy(float), part["pred"].to_numpy(float)
    out[index[sid]] = (len(o), o.sum(), p.sum(), (o * o).sum(), (p * p).sum(), (o * p).sum())
  return out


def from_stats(stats: np.ndarray) -> dict[str, np.ndarray]:
  """R2, RMSE and bias from summed statistics (..., 6)."""
  n, so, sp, soo, spp, sop = np.moveaxis(stats, -1, 0)
  with np.errstate(invalid="ignore", divide="ignore"):
    mo, mp = so / n, sp / n
    var_o, var_p, cov = soo / n - mo ** 2, spp / n - mp ** 2, sop / n - mo * mp
    r2 = np.where((var_o > 0) & (var_p > 0), cov ** 2 / (var_o * var_p), np.nan)
    mse = (soo - 2 * sop + spp) / n
    return {"r2": r2, "rmse": np.sqrt(np.maximum(mse, 0)), "bias": mp - mo}


def bootstrap_draws(n_sites: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
  """(n_boot, S) how often each site is drawn (sites resampled with replacement)."""
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, n_sites, (n_boot, n_sites))
  return np.stack([np.bincount(d, minlength=n_sites) for d in draws]).astype(np.float64)


def intervals(stats_ms: np.ndarray, counts_bs: np.ndarray) -> dict[str, np.ndarray]:
  """Per model (M), the 95 % interval of each CI metric: {metric_lo: (M,), metric_hi: (M,)}."""
  boot = from_stats(np.einsum("bs,msk->bmk", counts_bs, stats_ms))
  out = {}
  for name in CI_METRICS:
    out[f"{name}_lo"] = np.nanpercentile(boot[name], 2.5, axis=0)
    out[f"{name}_hi"] = np.nanpercentile(boot[name], 97.5, axis=0)
  return out


def paired_differences(stats_a: np.ndarray, stats_b: np.ndarray, counts_bs: np.ndarray) -> dict[str, float]:
  """Pooled metric of A minus that of B, with its 95 % interval over the same resampled sites."""
  point = {k: from_stats(stats_a.sum(0))[k] - from_stats(stats_b.sum(0))[k] for k in CI_METRICS}
  boot_a, boot_b = from_stats(counts_bs @ stats_a), from_stats(counts_bs @ stats_b)
  out = {}
  for name in CI_METRICS:
    diff = boot_a[name] - boot_b[name]
    out[name] = float(point[name])
    out[f"{name}_lo"], out[f"{name}_hi"] = (float(v) for v in np.nanpercentile(diff, [2.5, 97.5]))
  return out
