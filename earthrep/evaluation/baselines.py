"""Baseline feature series from the Sentinel cube itself: S2 bands, spectral indices, S1 backscatter.

Per acquisition date and footprint (the same disc as the embeddings, `features.footprint_mask`):
* S2: pixels are used where `data.preprocess.prepare_s2` keeps them (clear class, reflectance clipped to [0, 1]);
  a date counts only when >= `MIN_CLEAR_FRACTION` (0.5) of the footprint is clear, so a half-clouded
  footprint does not bias the mean towards its clear side. Bands are footprint means; indices are computed
  per pixel, then averaged.
* Indices follow the Awesome Spectral Indices catalogue (Montero et al. 2023, Sci. Data 10, 197;
  github.com/awesome-spectral-indices): NDVI (N-R)/(N+R); NIRv NDVI*N; kNDVI tanh(((N-R)/(2 sigma))^2) with
  the catalogue's sigma = 0.5 (N+R), which equals tanh(NDVI^2); EVI 2.5 (N-R)/(N+6R-7.5B+1); SAVI
  1.5 (N-R)/(N+R+0.5); NDMI (N-S1)/(N+S1); NDREI (N-RE1)/(N+RE1); with N=B08, R=B04, B=B02, RE1=B05,
  S1=B11. (spyndex would give the same formulas; they are written out to avoid a dependency.)
* S1: footprint mean of gamma0 in linear power (speckle averages in power), then dB: VV, VH and the ratio
  VH-VV (dB), all orbits.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from earthrep.data.preprocess import prepare_s2
from earthrep.evaluation.features import footprint_mask, footprint_mean
from earthrep.io.cube import pixel_centre_coords
from earthrep.schema import S1_BANDS, S2_BANDS, SiteCube

MIN_CLEAR_FRACTION = 0.5
INDEX_NAMES = ("NDVI", "NIRv", "kNDVI", "EVI", "SAVI", "NDMI", "NDREI")
BASELINE_SETS = {
    "bands": tuple(S2_BANDS),
    "ndvi": ("NDVI",),
    "indices": INDEX_NAMES,
    "s1": ("VV_db", "VH_db", "VH_VV_db"),
    "s2s1": tuple(S2_BANDS) + ("VV_db", "VH_db", "VH_VV_db"),
}


def spectral_indices(bands: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Reflectance arrays keyed by S2 band name -> the INDEX_NAMES arrays (NaN where undefined)."""
  n, r, b = bands["B08"], bands["B04"], bands["B02"]
  re1, s1 = bands["B05"], bands["B11"]
  with np.errstate(divide="ignore", invalid="ignore"):
    ndvi = (n - r) / (n + r)
    return {
        "NDVI": ndvi,
        "NIRv": ndvi * n,
        "kNDVI": np.tanh(((n - r) / (2 * 0.5 * (n + r))) ** 2),
        "EVI": 2.5 * (n - r) / (n + 6.0 * r - 7.5 * b + 1.0),
        "SAVI": 1.5 * (n - r) / (n + r + 0.5),
        "NDMI": (n - s1) / (n + s1),
        "NDREI": (n - re1) / (n + re1),
    }


def s2_series(cube: SiteCube, mask_hw: np.ndarray) -> pd.DataFrame:
  """Per S2 date: footprint means of the 10 bands and the indices; dates with too few clear pixels dropped."""
  s2_thwc = prepare_s2(cube.s2_reflectance, cube.cloud_mask)
  inside_tnc = s2_thwc[:, mask_hw, :]                      # (t, n footprint pixels, 10)
  clear_tn = np.isfinite(inside_tnc).all(-1)
  keep_t = clear_tn.mean(1) >= MIN_CLEAR_FRACTION
  bands = {name: inside_tnc[..., i] for i, name in enumerate(S2_BANDS)}
  columns = dict(bands, **spectral_indices(bands))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    table = {name: np.nanmean(np.where(clear_tn, values, np.nan), axis=1) for name, values in columns.items()}
  frame = pd.DataFrame(table, index=pd.DatetimeIndex(cube.s2_time, name="time"))
  return frame[keep_t]


def s1_series(cube: SiteCube, mask_hw: np.ndarray) -> pd.DataFrame:
  """Per S1 date: footprint VV, VH (dB) and VH-VV (dB); linear values <= 0 are not backscatter."""
  gamma0_tchw = np.where(cube.s1_gamma0 > 0, cube.s1_gamma0, np.nan)
  power_tc = footprint_mean(gamma0_tchw, mask_hw)
  with np.errstate(divide="ignore", invalid="ignore"):
    db_tc = 10.0 * np.log10(power_tc)
  vv, vh = db_tc[:, S1_BANDS.index("VV")], db_tc[:, S1_BANDS.index("VH")]
  frame = pd.DataFrame({"VV_db": vv, "VH_db": vh, "VH_VV_db": vh - vv},
                       index=pd.DatetimeIndex(cube.s1_time, name="time"))
  return frame.dropna(how="all")


def cube_footprint(cube: SiteCube, centre_xy: tuple[float, float] | None, radius_m: float | None) -> np.ndarray:
  h, w = cube.shape_hw
  x, y = pixel_centre_coords(cube.transform, h, w)
  if centre_xy is None:
    centre_xy = (float(x[w // 2]), float(y[h // 2]))
  return footprint_mask(x, y, centre_xy, radius_m)


def baseline_series(cube: SiteCube, names: tuple[str, ...], mask_hw: np.ndarray) -> pd.DataFrame:
  """Observation-date series of the named baseline columns (S2 and S1 columns each on their own dates)."""
  parts = []
  if any(n not in ("VV_db", "VH_db", "VH_VV_db") for n in names):
    s2 = s2_series(cube, mask_hw)
    parts.append(s2[[n for n in names if n in s2.columns]])
  if any(n in ("VV_db", "VH_db", "VH_VV_db") for n in names):
    s1 = s1_series(cube, mask_hw)
    parts.append(s1[[n for n in names if n in s1.columns]])
  unknown = [n for n in names if all(n not in p.columns for p in parts)]
  if unknown:
    raise ValueError(f"unknown baseline columns {unknown}")
  # Outer join on time: each column is NaN on the other sensor's dates; daily interpolation skips NaN.
  return pd.concat(parts, axis=1).sort_index()
