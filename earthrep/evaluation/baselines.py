"""Baseline feature series from the Sentinel cube itself: S2 bands, spectral indices, S1 backscatter.

Per acquisition date and footprint (the same disc as the embeddings, `features.footprint_mask`):
* S2: pixels are used where `data.preprocess.prepare_s2` keeps them (clear class, reflectance clipped to [0, 1]);
  a date counts only when it passes the clear-share rule of `features` (>= 0.5 of the footprint clear; the
  caller may narrow the days further so every S2-derived set sees the same dates). Bands are footprint means;
  indices are computed per pixel, then averaged.
* Indices follow the Awesome Spectral Indices catalogue, the one spyndex implements (Montero et al. 2023,
  Sci. Data 10, 197; github.com/awesome-spectral-indices), written out here to avoid the dependency:
  NDVI (N-R)/(N+R); NIRv NDVI*N; kNDVI tanh(((N-R)/(2 sigma))^2) with the catalogue's sigma = 0.5 (N+R), which
  equals tanh(NDVI^2); EVI 2.5 (N-R)/(N+6R-7.5B+1); SAVI 1.5 (N-R)/(N+R+0.5); NDMI (N-S1)/(N+S1); NDREI
  (N-RE1)/(N+RE1); GNDVI (N-G)/(N+G); CIRE RE3/RE1 - 1; MTCI (RE2-RE1)/(RE1-R); NBR (N-S2)/(N+S2); NDWI
  (G-N)/(G+N) (McFeeters); with B=B02, G=B03, R=B04, RE1..3=B05..B07, N=B08, S1=B11, S2=B12.
* S1: footprint mean of gamma0 in linear power (speckle averages in power), then dB: VV, VH and the ratio
  VH-VV (dB), all orbits.
Feature sets (`BASELINE_SETS`): `bands`, `ndvi`, `nirv`, `kndvi`, `indices` (all of them), `s1`, `s2s1`.
`pixel_baselines` gives the same columns per pixel and date for the probes.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from earthrep.data.preprocess import prepare_s2
from earthrep.evaluation.features import footprint_mean
from earthrep.schema import S1_BANDS, S2_BANDS, SiteCube

INDEX_NAMES = ("NDVI", "NIRv", "kNDVI", "EVI", "SAVI", "NDMI", "NDREI", "GNDVI", "CIRE", "MTCI", "NBR", "NDWI")
S1_COLUMNS = ("VV_db", "VH_db", "VH_VV_db")
BASELINE_SETS = {
    "bands": tuple(S2_BANDS),
    "ndvi": ("NDVI",),
    "nirv": ("NIRv",),
    "kndvi": ("kNDVI",),
    "indices": INDEX_NAMES,
    "s1": S1_COLUMNS,
    "s2s1": tuple(S2_BANDS) + S1_COLUMNS,
}


def spectral_indices(bands: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Reflectance arrays keyed by S2 band name -> the INDEX_NAMES arrays (NaN where undefined)."""
  b, g, r, n = bands["B02"], bands["B03"], bands["B04"], bands["B08"]
  re1, re2, re3, s1, s2 = bands["B05"], bands["B06"], bands["B07"], bands["B11"], bands["B12"]
  with np.errstate(divide="ignore", invalid="ignore"):
    ndvi = (n - r) / (n + r)
    out = {
        "NDVI": ndvi,
        "NIRv": ndvi * n,
        "kNDVI": np.tanh(((n - r) / (2 * 0.5 * (n + r))) ** 2),
        "EVI": 2.5 * (n - r) / (n + 6.0 * r - 7.5 * b + 1.0),
        "SAVI": 1.5 * (n - r) / (n + r + 0.5),
        "NDMI": (n - s1) / (n + s1),
        "NDREI": (n - re1) / (n + re1),
        "GNDVI": (n - g) / (n + g),
        "CIRE": re3 / re1 - 1.0,
        "MTCI": (re2 - re1) / (re1 - r),
        "NBR": (n - s2) / (n + s2),
        "NDWI": (g - n) / (g + n),
    }
  return {k: np.where(np.isfinite(v), v, np.nan) for k, v in out.items()}


def s2_series(cube: SiteCube, mask_hw: np.ndarray, keep_days: pd.DatetimeIndex) -> pd.DataFrame:
  """Per S2 date on `keep_days`: footprint means of the 10 bands and the indices over the clear pixels."""
  s2_thwc = prepare_s2(cube.s2_reflectance, cube.cloud_mask)
  inside_tnc = s2_thwc[:, mask_hw, :]                      # (t, n footprint pixels, 10)
  clear_tn = np.isfinite(inside_tnc).all(-1)
  bands = {name: inside_tnc[..., i] for i, name in enumerate(S2_BANDS)}
  columns = dict(bands, **spectral_indices(bands))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    table = {name: np.nanmean(np.where(clear_tn, values, np.nan), axis=1) for name, values in columns.items()}
  frame = pd.DataFrame(table, index=pd.DatetimeIndex(cube.s2_time, name="time"))
  return frame[frame.index.normalize().isin(keep_days)]


def _db(power: np.ndarray) -> np.ndarray:
  with np.errstate(divide="ignore", invalid="ignore"):
    return 10.0 * np.log10(power)


def s1_series(cube: SiteCube, mask_hw: np.ndarray) -> pd.DataFrame:
  """Per S1 date: footprint VV, VH (dB) and VH-VV (dB); linear values <= 0 are not backscatter."""
  gamma0_tchw = np.where(cube.s1_gamma0 > 0, cube.s1_gamma0, np.nan)
  db_tc = _db(footprint_mean(gamma0_tchw, mask_hw))
  vv, vh = db_tc[:, S1_BANDS.index("VV")], db_tc[:, S1_BANDS.index("VH")]
  frame = pd.DataFrame({"VV_db": vv, "VH_db": vh, "VH_VV_db": vh - vv},
                       index=pd.DatetimeIndex(cube.s1_time, name="time"))
  return frame.dropna(how="all")


def baseline_series(cube: SiteCube, names: tuple[str, ...], mask_hw: np.ndarray,
                    keep_days: pd.DatetimeIndex) -> pd.DataFrame:
  """Observation-date series of the named baseline columns (S2 and S1 columns each on their own dates)."""
  parts = []
  if any(n not in S1_COLUMNS for n in names):
    s2 = s2_series(cube, mask_hw, keep_days)
    parts.append(s2[[n for n in names if n in s2.columns]])
  if any(n in S1_COLUMNS for n in names):
    s1 = s1_series(cube, mask_hw)
    parts.append(s1[[n for n in names if n in s1.columns]])
  unknown = [n for n in names if all(n not in p.columns for p in parts)]
  if unknown:
    raise ValueError(f"unknown baseline columns {unknown}")
  # Outer join on time: each column is NaN on the other sensor's dates; daily interpolation skips NaN.
  return pd.concat(parts, axis=1).sort_index()


def pixel_baselines(cube: SiteCube, s2_index: np.ndarray) -> dict[str, np.ndarray]:
  """Per baseline set, (t, h, w, F) values on the S2 dates `s2_index` (NaN where the pixel is not clear);
  S1 columns from the acquisition nearest each date (single-pixel dB: speckled, as the sensor sees it)."""
  s2_thwc = prepare_s2(cube.s2_reflectance[s2_index], cube.cloud_mask[s2_index])
  clear = np.isfinite(s2_thwc).all(-1, keepdims=True)
  s2_thwc = np.where(clear, s2_thwc, np.nan)
  bands = {name: s2_thwc[..., i] for i, name in enumerate(S2_BANDS)}
  columns = dict(bands, **spectral_indices(bands))
  s2_days = np.asarray(cube.s2_time, "datetime64[s]")[s2_index].astype(np.int64)
  s1_seconds = np.asarray(cube.s1_time, "datetime64[s]").astype(np.int64)
  if len(s1_seconds):
    nearest = np.abs(s1_seconds[None, :] - s2_days[:, None]).argmin(1)
    power = np.where(cube.s1_gamma0[nearest] > 0, cube.s1_gamma0[nearest], np.nan)
    vv, vh = _db(power[:, S1_BANDS.index("VV")]), _db(power[:, S1_BANDS.index("VH")])
    columns.update(VV_db=vv, VH_db=vh, VH_VV_db=vh - vv)
  return {name: np.stack([columns[c] for c in cols], -1).astype(np.float32)
          for name, cols in BASELINE_SETS.items() if all(c in columns for c in cols)}
