"""Per-site daily feature series: footprint statistics of a feature cube, made daily.

A feature cube is the Zarr format of `earthrep.io.feature_cube` (written by `earthrep.embed` or the
evaluation's own crops): `features` float32 `(feature, time, y, x)` on UTM pixel centres, NaN where no
embedding. The footprint is the set of pixels whose centres lie within `radius_m` of the tower:
* demo worlds: `DEMO_RADIUS_M` = 28.3 m, exactly the 5 x 5 pixels whose GPP the simulator writes (the disc
  through the corner pixel centres, 2 sqrt(2) x 10 m);
* real towers: `DEFAULT_RADIUS_M` = 250 m unless `--radius-m` says otherwise (the 70-80 % daily source area of
  a tower a few metres above short vegetation or a forest canopy lies within a few hundred metres, and a
  250 m disc still holds ~1960 pixels of 10 m, so one cloud-free patch suffices).
Clear-share rule, the same for every S2-derived feature set (bands, indices, clear-date embeddings): a date
counts when >= `MIN_CLEAR_FRACTION` (0.5) of the footprint's pixels are clear in the cube (all 10 bands valid
after `data.preprocess.prepare_s2`), so a half-clouded footprint does not bias the mean towards its clear
side (`clear_days`); a feature cube's footprint mean on such a date averages its valid pixels.
Daily series (ARCHITECTURE.md g):
* `linear`: per-date mean, duplicates of one day averaged, reindexed to every day, linear interpolation with
  the ends held constant (the reference's linear.py; over the whole requested span, not per calendar year).
* `ucm`: per feature and calendar year, standardised, statsmodels `UnobservedComponents(level="local level",
  freq_seasonal=[{period 365, harmonics 3}])`, fits tried with lbfgs (600 it), powell (900), nm (900) and any
  run with a convergence warning rejected; output the in-sample `predict()` de-standardised; 29 Feb modelled
  out and filled with the mean of 28 Feb and 1 Mar. Fewer than 5 observations or no converged fit ->
  fallback: PCHIP for gaps <= 20 days, longer gaps from the day-of-year median climatology of the series
  (7-day smoothed), else linear (the reference's 21-35 day climatology+residual and 3-day blends are not
  reproduced). No radiation feature is appended.
* `reindex`: for cubes already written with daily dates (any-day embeddings): dates averaged per day and
  reindexed, days without an embedding stay NaN.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from earthrep.data.preprocess import prepare_s2
from earthrep.io import feature_cube
from earthrep.io.cube import pixel_centre_coords
from earthrep.schema import SiteCube

DEFAULT_RADIUS_M = 250.0
DEMO_RADIUS_M = 28.3
MIN_CLEAR_FRACTION = 0.5
DAILY_METHODS = ("linear", "ucm", "reindex")
UCM_MIN_OBS = 5
UCM_FITS = (("lbfgs", 600), ("powell", 900), ("nm", 900))
PCHIP_MAX_GAP_DAYS = 20


# ---------------------------------------------------------------------------------------------
# Footprints.
# ---------------------------------------------------------------------------------------------
def footprint_mask(x: np.ndarray, y: np.ndarray, centre_xy: tuple[float, float],
                   radius_m: float | None) -> np.ndarray:
  """(h, w) bool: pixel centres within radius_m of centre_xy; everything when radius_m is None."""
  dx_hw = np.asarray(x)[None, :] - centre_xy[0]
  dy_hw = np.asarray(y)[:, None] - centre_xy[1]
  if radius_m is None:
    return np.ones(dy_hw.shape[:1] + dx_hw.shape[1:], bool)
  mask = dx_hw ** 2 + dy_hw ** 2 <= radius_m ** 2
  if not mask.any():   # radius below half a pixel: the nearest pixel
    mask[np.unravel_index(np.argmin(dx_hw ** 2 + dy_hw ** 2), mask.shape)] = True
  return mask


def footprint_mean(values_tchw: np.ndarray, mask_hw: np.ndarray) -> np.ndarray:
  """(t, c, h, w) -> (t, c) NaN-skipping mean over the footprint pixels (NaN where none is valid)."""
  inside = np.asarray(values_tchw)[..., mask_hw]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return np.nanmean(inside, axis=-1)


def tower_xy(crs: str, lon: float, lat: float) -> tuple[float, float]:
  import rasterio.warp
  xs, ys = rasterio.warp.transform("EPSG:4326", crs, [lon], [lat])
  return float(xs[0]), float(ys[0])


def cube_footprint(cube: SiteCube, centre_xy: tuple[float, float], radius_m: float | None) -> np.ndarray:
  """(h, w) footprint mask on the cube grid."""
  h, w = cube.shape_hw
  x, y = pixel_centre_coords(cube.transform, h, w)
  return footprint_mask(x, y, centre_xy, radius_m)


def clear_share(cube: SiteCube, mask_hw: np.ndarray) -> pd.Series:
  """Per S2 date (normalised day, duplicates: the larger share): share of footprint pixels that are clear."""
  clear_tn = np.isfinite(prepare_s2(cube.s2_reflectance, cube.cloud_mask)[:, mask_hw, :]).all(-1)
  share = pd.Series(clear_tn.mean(1), index=pd.DatetimeIndex(cube.s2_time).normalize())
  return share.groupby(level=0).max()


def clear_days(cube: SiteCube, mask_hw: np.ndarray, min_fraction: float = MIN_CLEAR_FRACTION) -> pd.DatetimeIndex:
  """Days whose footprint passes the clear-share rule."""
  share = clear_share(cube, mask_hw)
  return pd.DatetimeIndex(share.index[share.to_numpy() >= min_fraction])


def feature_cube_series(source: str | Path | feature_cube.FeatureCube, centre_xy: tuple[float, float] | None,
                        radius_m: float | None = DEFAULT_RADIUS_M,
                        keep_days: pd.DatetimeIndex | None = None) -> pd.DataFrame:
  """Date footprint means of a feature cube (only `keep_days` if given); index time, one column per feature."""
  fc = source if isinstance(source, feature_cube.FeatureCube) else feature_cube.read(source)
  if centre_xy is None:   # the tower sits at the cube centre pixel
    centre_xy = (float(fc.x[len(fc.x) // 2]), float(fc.y[len(fc.y) // 2]))
  mean_tf = footprint_mean(np.moveaxis(fc.values_fthw, 0, 1), footprint_mask(fc.x, fc.y, centre_xy, radius_m))
  frame = pd.DataFrame(mean_tf, index=pd.DatetimeIndex(fc.time, name="time"), columns=fc.names)
  if keep_days is not None:
    frame = frame[frame.index.normalize().isin(keep_days)]
  return frame


# ---------------------------------------------------------------------------------------------
# Daily series.
# ---------------------------------------------------------------------------------------------
def _per_day(series: pd.DataFrame) -> pd.DataFrame:
  series = series.copy()
  series.index = pd.DatetimeIndex(series.index).normalize()
  return series.groupby(level=0).mean()


def daily_linear(series: pd.DataFrame, days: pd.DatetimeIndex) -> pd.DataFrame:
  per_day = _per_day(series)
  t_obs = per_day.index.values.astype("datetime64[D]").astype(np.int64)
  t_out = pd.DatetimeIndex(days).values.astype("datetime64[D]").astype(np.int64)
  out = {}
  for name in per_day.columns:
    v = per_day[name].to_numpy(np.float64)
    ok = np.isfinite(v)
    out[name] = np.interp(t_out, t_obs[ok], v[ok]) if ok.any() else np.full(t_out.shape, np.nan)
  return pd.DataFrame(out, index=pd.DatetimeIndex(days), dtype=np.float32)


def daily_reindex(series: pd.DataFrame, days: pd.DatetimeIndex) -> pd.DataFrame:
  return _per_day(series).reindex(pd.DatetimeIndex(days)).astype(np.float32)


def _fallback(daily: pd.Series) -> pd.Series:
  """PCHIP across gaps <= 20 days; longer gaps: 7-day smoothed day-of-year median climatology, else linear."""
  from scipy.interpolate import PchipInterpolator
  values = daily.to_numpy(np.float64)
  ok = np.isfinite(values)
  if ok.sum() == 0:
    return daily
  t = np.arange(values.size, dtype=float)
  filled = (PchipInterpolator(t[ok], values[ok], extrapolate=False)(t) if ok.sum() >= 2
            else np.full(values.size, values[ok][0]))
  # Gap length of every missing day.
  idx_ok = np.flatnonzero(ok)
  prev = np.maximum.accumulate(np.where(ok, np.arange(values.size), -1))
  nxt = np.minimum.accumulate(np.where(ok, np.arange(values.size), values.size)[::-1])[::-1]
  gap = np.where(ok, 0, nxt - prev - 1)
  long_gap = ~ok & ((gap > PCHIP_MAX_GAP_DAYS) | (prev < 0) | (nxt >= values.size))
  doy = daily.index.day_of_year.to_numpy()
  clim = pd.Series(values).groupby(doy).median().reindex(np.arange(1, 367))
  clim = clim.rolling(7, center=True, min_periods=1).mean()
  from_clim = clim.reindex(doy).to_numpy()
  linear = np.interp(t, t[idx_ok], values[idx_ok])
  long_fill = np.where(np.isfinite(from_clim), from_clim, linear)
  out = np.where(ok, values, np.where(long_gap | ~np.isfinite(filled), long_fill, filled))
  return pd.Series(out, index=daily.index)


def _ucm_year(daily: pd.Series) -> pd.Series | None:
  """One feature, one calendar year (29 Feb removed) -> in-sample prediction, or None if no fit converged."""
  import statsmodels.api as sm
  values = daily.to_numpy(np.float64)
  ok = np.isfinite(values)
  if ok.sum() < UCM_MIN_OBS:
    return None
  mean, std = values[ok].mean(), values[ok].std() or 1.0
  model = sm.tsa.UnobservedComponents((values - mean) / std, level="local level",
                                      freq_seasonal=[{"period": 365, "harmonics": 3}])
  for method, maxiter in UCM_FITS:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      try:
        result = model.fit(method=method, maxiter=maxiter, disp=False)
      except Exception:   # numerical failure of one optimiser: try the next
        continue
    if any("converge" in str(w.message).lower() for w in caught):
      continue
    prediction = np.asarray(result.predict())
    if np.isfinite(prediction).all():
      return pd.Series(prediction * std + mean, index=daily.index)
  return None


def daily_ucm(series: pd.DataFrame, days: pd.DatetimeIndex, fit: bool = True) -> tuple[pd.DataFrame, int]:
  """Returns (daily features, number of (feature, year) series that used the fallback). fit=False: fallback only."""
  per_day = _per_day(series)
  days = pd.DatetimeIndex(days)
  n_fallback = 0
  out = pd.DataFrame(index=days, columns=per_day.columns, dtype=np.float64)
  for year in sorted(set(days.year)):
    full_year = pd.date_range(f"{year}-01-01", f"{year}-12-31", freq="D")
    no_leap = full_year[~((full_year.month == 2) & (full_year.day == 29))]
    for name in per_day.columns:
      daily = per_day[name].reindex(no_leap)
      smoothed = _ucm_year(daily) if fit else None
      if smoothed is None:
        n_fallback += 1
        smoothed = _fallback(per_day[name].reindex(pd.date_range(days.min(), days.max()).union(no_leap)))
        smoothed = smoothed.reindex(no_leap)
      smoothed = smoothed.reindex(full_year)
      leap = (full_year.month == 2) & (full_year.day == 29)
      if leap.any():
        smoothed[leap] = 0.5 * (smoothed[f"{year}-02-28"] + smoothed[f"{year}-03-01"])
      in_year = days[days.year == year]
      out.loc[in_year, name] = smoothed.reindex(in_year).to_numpy()
  return out.astype(np.float32), n_fallback


def make_daily(series: pd.DataFrame, days: pd.DatetimeIndex, method: str) -> pd.DataFrame:
  if method == "linear":
    return daily_linear(series, days)
  if method == "reindex":
    return daily_reindex(series, days)
  if method == "ucm":
    try:
      import statsmodels.api  # noqa: F401
    except ImportError as e:
      raise ImportError("daily method 'ucm' needs statsmodels (pip install statsmodels)") from e
    return daily_ucm(series, days)[0]
  raise ValueError(f"daily method {method!r}: expected one of {DAILY_METHODS}")


def site_days(*indexes: Sequence[pd.DatetimeIndex]) -> pd.DatetimeIndex:
  """Every day from the first to the last date of the given indexes."""
  first = min(pd.DatetimeIndex(i).min() for i in indexes).normalize()
  last = max(pd.DatetimeIndex(i).max() for i in indexes).normalize()
  return pd.date_range(first, last, freq="D")
