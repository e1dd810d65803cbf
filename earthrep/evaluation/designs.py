"""Model designs: what a GPP model sees of a feature set X and of the tower's meteorology.

Every design is a daily table of columns on the site's days (the regressors then see windows of it):
* `met`: meteorology only (SW_IN W m-2, TA deg C, VPD hPa; the same for every X, so it runs once);
* `x`: the feature set alone;
* `x_met`: the feature set and the meteorology side by side;
* `lue`: a light-use-efficiency form, GPP ~ sum_i w_i X_i S + w_0 S + b with S = SW_IN f(TA) f(VPD), i.e. the
  columns S and X_i S (Monteith 1972; MOD17, Running et al. 2004). The scalars are MOD17's, from the
  Collection 6 BPLUT for croplands (Running & Zhao 2015, MOD17 User's Guide): f(TA) ramps from 0 at -8 deg C
  to 1 at 12.02 deg C, f(VPD) from 1 at 650 Pa to 0 at 4300 Pa. MOD17 ramps daily minimum temperature;
  FLUXNET DD files carry the daily mean, so the ramp is applied to it (it saturates a little earlier). The
  scalars are fixed, not fitted: they were chosen from the literature before any model was scored.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

DESIGNS = ("met", "x", "x_met", "lue")
DESIGN_LABELS = {"met": "meteorology only", "x": "X only", "x_met": "X + meteorology",
                 "lue": "LUE form X x SW_IN x f(TA) x f(VPD)"}
MET_COLUMNS = ("sw_in_w_m2", "ta_c", "vpd_hpa")
T_RAMP_C = (-8.0, 12.02)
VPD_RAMP_HPA = (6.5, 43.0)


def lue_scalar(met: pd.DataFrame) -> np.ndarray:
  """(D,) SW_IN x f(TA) x f(VPD) in W m-2 (NaN where a driver is missing)."""
  ta, vpd = met["ta_c"].to_numpy(np.float64), met["vpd_hpa"].to_numpy(np.float64)
  f_t = np.clip((ta - T_RAMP_C[0]) / (T_RAMP_C[1] - T_RAMP_C[0]), 0.0, 1.0)
  f_vpd = np.clip((VPD_RAMP_HPA[1] - vpd) / (VPD_RAMP_HPA[1] - VPD_RAMP_HPA[0]), 0.0, 1.0)
  return met["sw_in_w_m2"].to_numpy(np.float64) * f_t * f_vpd


def design_table(design: str, features: pd.DataFrame | None, met: pd.DataFrame | None,
                 days: pd.DatetimeIndex) -> pd.DataFrame:
  """The daily columns of `design` on `days` (features and meteorology are reindexed to them)."""
  if design not in DESIGNS:
    raise ValueError(f"design {design!r}: expected one of {DESIGNS}")
  if design != "x":
    if met is None:
      raise ValueError(f"design {design!r} needs meteorology")
    met = met.reindex(days)[list(MET_COLUMNS)].astype(np.float64)
  if design == "met":
    return met
  if features is None:
    raise ValueError(f"design {design!r} needs a feature set")
  x = features.reindex(days).astype(np.float64)
  if design == "x":
    return x
  if design == "x_met":
    return pd.concat([x, met], axis=1)
  scalar = lue_scalar(met)
  return pd.DataFrame({"S": scalar, **{f"{c}*S": x[c].to_numpy() * scalar for c in x.columns}}, index=days)
