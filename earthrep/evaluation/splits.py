"""Splits, metrics and the experiment loop of the GPP evaluation.

Splits: `loso` (leave one site out: one fold per site, trained on all other sites; standard for flux upscaling)
and `temporal` (the reference's: train on windows whose target day is before the last calendar year present,
test on that year, all sites pooled in one model). Training windows: target day `qc_ok`, stride
`train_stride` days (the reference used 10); test windows: stride 1, target day `qc_ok` (the reference scores
all days; days failing QC are mostly gap-filled GPP, i.e. a model, not a measurement).
Metrics (gC m-2 d-1), per site and pooled over all test windows of a split:
R2 = squared Pearson correlation; RMSE; bias = mean(pred - obs); NRMSE = RMSE / (max(obs) - min(obs)) as the
reference; NSE = 1 - SSE / sum((obs - mean obs)^2); r2_anom = R2 of the anomalies of obs and pred from the
site's mean seasonal cycle. The seasonal cycle is the per-site day-of-year mean of qc_ok observed GPP, smoothed
by a 31-day circular moving mean (NaN-skipping); for `temporal` it is computed from the training years of that
site only; for `loso` the held-out site has no training data, so its own observations are used (in-sample:
r2_anom then measures only how well day-to-day and inter-annual departures are tracked).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from earthrep.evaluation.regressors import WINDOW_DAYS, make_windows

log = logging.getLogger(__name__)
SPLITS = ("loso", "temporal")
METRICS = ("n", "r2", "rmse", "bias", "nrmse", "nse", "r2_anom")
SEASONAL_WINDOW_DAYS = 31


@dataclasses.dataclass
class SiteData:
  site_id: str
  days: pd.DatetimeIndex           # every day
  gpp: np.ndarray                  # (D,) gC m-2 d-1, NaN missing
  qc_ok: np.ndarray                # (D,) bool
  features: dict[str, pd.DataFrame]   # feature set -> (D, F) daily features on `days`


# ---------------------------------------------------------------------------------------------
# Metrics.
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Windows per site and folds.
# ---------------------------------------------------------------------------------------------
def site_windows(site: SiteData, feature_set: str, stride: int, window_days: int = WINDOW_DAYS):
  """(windows (B, T, F), gpp (B,), target dates (B,)) of one site; targets must be qc_ok."""
  features = site.features[feature_set].reindex(site.days).to_numpy(np.float32)
  x_btf, y_b, ends = make_windows(features, site.gpp, site.qc_ok, window_days, stride)
  return x_btf, y_b, site.days[ends]


def folds(sites: Sequence[SiteData], split: str) -> list[tuple[str, Callable[[str, pd.Timestamp], bool]]]:
  """[(fold name, is_test(site_id, target date))]; training uses everything that is not test."""
  if split == "loso":
    return [(s.site_id, lambda sid, date, held=s.site_id: np.asarray(sid) == held) for s in sites]
  if split == "temporal":
    last_year = max(int(s.days[np.isfinite(s.gpp)].year.max()) for s in sites)
    return [(f"test_{last_year}", lambda sid, date, y=last_year: pd.DatetimeIndex(date).year == y)]
  raise ValueError(f"split {split!r}: expected one of {SPLITS}")


def run_split(sites: Sequence[SiteData], feature_set: str, regressor_factory: Callable[[], object], split: str,
              train_stride: int = 5, window_days: int = WINDOW_DAYS) -> pd.DataFrame:
  """Predictions of every fold: rows (fold, site, date, obs, pred)."""
  test_windows = {s.site_id: site_windows(s, feature_set, 1, window_days) for s in sites}
  train_windows = {s.site_id: site_windows(s, feature_set, train_stride, window_days) for s in sites}
  rows = []
  for fold, is_test in folds(sites, split):
    x_train, y_train = [], []
    for sid, (x, y, dates) in train_windows.items():
      train = ~np.asarray(is_test(np.full(len(dates), sid), dates), bool)
      x_train.append(x[train])
      y_train.append(y[train])
    x_train, y_train = np.concatenate(x_train), np.concatenate(y_train)
    test_parts = []
    for sid, (x, y, dates) in test_windows.items():
      test = np.asarray(is_test(np.full(len(dates), sid), dates), bool)
      if test.any():
        test_parts.append((sid, x[test], y[test], dates[test]))
    if len(y_train) < 10 or not test_parts:
      log.warning("%s/%s fold %s: %d training windows, %d test sites; skipped", feature_set, split, fold,
                  len(y_train), len(test_parts))
      continue
    model = regressor_factory().fit(x_train, y_train)
    for sid, x, y, dates in test_parts:
      rows.append(pd.DataFrame({"fold": fold, "site": sid, "date": dates, "obs": y, "pred": model.predict(x)}))
  if not rows:
    return pd.DataFrame(columns=["fold", "site", "date", "obs", "pred"])
  return pd.concat(rows, ignore_index=True)


def _climatology_for(site: SiteData, split: str, test_dates: pd.DatetimeIndex) -> np.ndarray:
  use = site.qc_ok & np.isfinite(site.gpp)
  if split == "temporal" and len(test_dates):
    use &= site.days.year < pd.DatetimeIndex(test_dates).year.min()
  cycle = seasonal_cycle(site.days[use], site.gpp[use])
  return cycle.reindex(pd.DatetimeIndex(test_dates).day_of_year).to_numpy()


def score(predictions: pd.DataFrame, sites: Sequence[SiteData], split: str) -> pd.DataFrame:
  """Per-site rows and one pooled row (site "pooled") of METRICS."""
  by_id = {s.site_id: s for s in sites}
  rows, pooled = [], []
  for sid, part in predictions.groupby("site", sort=True):
    clim = _climatology_for(by_id[sid], split, pd.DatetimeIndex(part["date"]))
    rows.append({"site": sid, **metrics(part["obs"].to_numpy(), part["pred"].to_numpy(), clim)})
    pooled.append((part["obs"].to_numpy(), part["pred"].to_numpy(), clim))
  if pooled:
    obs, pred, clim = (np.concatenate(v) for v in zip(*pooled))
    rows.insert(0, {"site": "pooled", **metrics(obs, pred, clim)})
  return pd.DataFrame(rows, columns=["site", *METRICS])
