"""The site-cube contract checks shared by every cube reader and writer (Zarr and GeoTIFF).

`validate_cube` checks a `schema.SiteCube` against the contract and raises `CubeError` with a message that
starts `<file>: <field>:` (`cube_error` builds one). Also here: the grid helpers every georeferenced output
uses (`pixel_centre_coords`, `grid_mapping_attrs`: the CF grid-mapping attributes of a CRS and affine), and
the constants of the on-disk forms (cloud classes, the `site.json` marker of a GeoTIFF stack).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from rasterio.crs import CRS

from earthrep.errors import EarthrepError
from earthrep.schema import (
    CLOUD_CLEAR, CLOUD_NODATA, CLOUD_SHADOW, CLOUD_THICK, CLOUD_THIN, DIM_T1, DIM_T2, ORBIT_DIRECTIONS,
    PIXEL_SIZE_M, S1_BANDS, S2_BANDS, VAR_CLOUD, VAR_ORBIT, VAR_REL_ORBIT, VAR_S1, VAR_S2, SiteCube)

CUBE_VERSION = 1
GRID_MAPPING = "spatial_ref"
CLOUD_CLASSES = (CLOUD_CLEAR, CLOUD_THICK, CLOUD_THIN, CLOUD_SHADOW, CLOUD_NODATA)
# Values above this (in more than REFLECTANCE_DN_FRACTION of the data) mean digital numbers, not reflectance;
# a few saturated L2A pixels ((65535 - 1000) / 10000) are legitimate. Below the minimum is a fill value.
REFLECTANCE_DN_SUSPECT, REFLECTANCE_DN_FRACTION, REFLECTANCE_MIN = 1.5, 0.01, -0.5
SITE_JSON = "site.json"   # marks a GeoTIFF stack site folder (see geotiff.py)

Transform = tuple[float, float, float, float, float, float]


class CubeError(EarthrepError):
  """A cube, store or raster violates the contract; the message starts with `<file>: <field>:`."""


def cube_error(where: Any, field: str, message: str) -> CubeError:
  return CubeError(f"{where}: {field}: {message}")


def as_str(values: Any) -> np.ndarray:
  """Any array of strings (incl. numpy StringDType, which zarr 3 returns) -> fixed-width str array."""
  values = np.asarray(values)
  return np.array([str(v) for v in values.ravel()], dtype=str).reshape(values.shape)


# ---------------------------------------------------------------------------------------------
# Validation (shared by every reader and writer).
# ---------------------------------------------------------------------------------------------
def _check_times(times: np.ndarray, n: int, where: Any, field: str) -> None:
  if times.shape != (n,):
    raise cube_error(where, field, f"shape {times.shape}, expected ({n},)")
  if not np.issubdtype(times.dtype, np.datetime64):
    raise cube_error(where, field, f"dtype {times.dtype}, expected datetime64")
  if np.isnat(times).any():
    raise cube_error(where, field, f"NaT at index {int(np.flatnonzero(np.isnat(times))[0])}")
  steps = np.diff(times.astype("datetime64[ns]").astype(np.int64))
  if (steps <= 0).any():
    i = int(np.flatnonzero(steps <= 0)[0])
    kind = "duplicated" if steps[i] == 0 else "out of order"
    raise cube_error(where, field, f"timestamps {kind}: [{i}] {times[i]} then [{i + 1}] {times[i + 1]}")


def _check_finite_or_nan(values: np.ndarray, where: Any, field: str) -> None:
  infinite = np.isinf(values)
  if infinite.any():
    first = tuple(int(i) for i in np.argwhere(infinite)[0])
    raise cube_error(where, field, f"{int(infinite.sum())} infinite value(s), first at {first} "
                 "(use NaN for no data)")


def _check_reflectance(s2_reflectance: np.ndarray, where: Any) -> None:
  finite = s2_reflectance[np.isfinite(s2_reflectance)]
  if finite.size == 0:
    return
  too_high = float(np.mean(finite > REFLECTANCE_DN_SUSPECT))
  if too_high > REFLECTANCE_DN_FRACTION:
    raise cube_error(where, VAR_S2, f"{too_high:.1%} of values > {REFLECTANCE_DN_SUSPECT} (max {finite.max():g}): "
                 "looks like digital numbers; scale to reflectance with (DN + offset) / 10000 "
                 "(offset -1000 from processing baseline 04.00, else 0)")
  if finite.min() < REFLECTANCE_MIN:
    raise cube_error(where, VAR_S2, f"minimum {finite.min():g} < {REFLECTANCE_MIN}: a fill value? use NaN for no data")


def _check_grid(crs: str, transform: Sequence[float], where: Any) -> None:
  try:
    parsed = CRS.from_user_input(crs)
  except Exception as e:  # rasterio raises CRSError, but anything unparsable is the same problem
    raise cube_error(where, "crs", f"cannot parse {crs!r} ({e})") from e
  if not parsed.is_projected:
    raise cube_error(where, "crs", f"{crs!r} is not projected; cubes live on a UTM grid")
  if len(transform) != 6:
    raise cube_error(where, "transform", f"{len(transform)} values, expected 6 (a, b, c, d, e, f)")
  a, b, _, d, e, _ = (float(v) for v in transform)
  if not (b == 0 and d == 0 and abs(a - PIXEL_SIZE_M) < 1e-6 and abs(e + PIXEL_SIZE_M) < 1e-6):
    raise cube_error(where, "transform", f"{tuple(transform)} is not a north-up {PIXEL_SIZE_M:g} m grid")


def validate_cube(cube: SiteCube, where: Any = "SiteCube") -> None:
  """Raises CubeError naming `where` and the field for any violation of the cube contract."""
  _check_grid(cube.crs, cube.transform, where)
  s2, cloud, s1 = cube.s2_reflectance, cube.cloud_mask, cube.s1_gamma0
  if s2.ndim != 4 or s2.shape[1] != len(S2_BANDS):
    raise cube_error(where, VAR_S2, f"shape {s2.shape}, expected (time_s2, {len(S2_BANDS)}, y, x)")
  t2, _, h, w = s2.shape
  if t2 == 0:
    raise cube_error(where, VAR_S2, "no S2 acquisition")
  if cloud.shape != (t2, h, w):
    raise cube_error(where, VAR_CLOUD, f"shape {cloud.shape}, expected {(t2, h, w)} (same grid as {VAR_S2})")
  unknown = np.setdiff1d(np.unique(cloud), CLOUD_CLASSES)
  if unknown.size:
    raise cube_error(where, VAR_CLOUD, f"unknown class(es) {unknown.tolist()}, expected {CLOUD_CLASSES}")
  _check_times(np.asarray(cube.s2_time), t2, where, DIM_T2)
  if s1.ndim != 4 or s1.shape[1] != len(S1_BANDS):
    raise cube_error(where, VAR_S1, f"shape {s1.shape}, expected (time_s1, {len(S1_BANDS)}, y, x)")
  if s1.shape[2:] != (h, w):
    raise cube_error(where, VAR_S1, f"grid {s1.shape[2:]} differs from the S2 grid {(h, w)}")
  t1 = s1.shape[0]
  _check_times(np.asarray(cube.s1_time), t1, where, DIM_T1)
  orbit = as_str(cube.s1_orbit_direction)
  if orbit.shape != (t1,):
    raise cube_error(where, VAR_ORBIT, f"shape {orbit.shape}, expected ({t1},)")
  bad = sorted(set(orbit.tolist()) - set(ORBIT_DIRECTIONS))
  if bad:
    raise cube_error(where, VAR_ORBIT, f"unknown orbit direction(s) {bad}, expected {ORBIT_DIRECTIONS}")
  if cube.s1_relative_orbit is not None and np.shape(cube.s1_relative_orbit) != (t1,):
    raise cube_error(where, VAR_REL_ORBIT, f"shape {np.shape(cube.s1_relative_orbit)}, expected ({t1},)")
  _check_finite_or_nan(s2, where, VAR_S2)
  _check_finite_or_nan(s1, where, VAR_S1)
  _check_reflectance(s2, where)
  finite_s1 = s1[np.isfinite(s1)]
  if finite_s1.size and np.mean(finite_s1 < 0) > 0.5:
    raise cube_error(where, VAR_S1, "mostly negative: looks like dB; store linear power (10 ** (dB / 10))")
  clear = (cloud == CLOUD_CLEAR) & np.isfinite(s2).any(axis=1)
  if not clear.any():
    raise cube_error(where, VAR_CLOUD, f"no S2 date has a clear (class {CLOUD_CLEAR}) pixel with data")



# ---------------------------------------------------------------------------------------------
# Grids.
# ---------------------------------------------------------------------------------------------
def pixel_centre_coords(transform: Sequence[float], h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """(x (w,), y (h,)) of pixel centres for a north-up affine (a, b, c, d, e, f)."""
  a, _, c, _, e, f = (float(v) for v in transform)
  return c + (np.arange(w) + 0.5) * a, f + (np.arange(h) + 0.5) * e


def grid_mapping_attrs(crs: str, transform: Sequence[float]) -> dict[str, str]:
  wkt = CRS.from_user_input(crs).to_wkt()
  a, b, c, d, e, f = (float(v) for v in transform)
  return {"crs_wkt": wkt, "spatial_ref": wkt, "GeoTransform": " ".join(repr(v) for v in (c, a, b, f, d, e))}


