"""Loads one site's S2 L2A and S1 RTC items onto its 10 m UTM grid as lazy Dask arrays (odc-stac).

Grid: the WGS84 UTM zone of the site (EPSG:326xx north, 327xx south), 10 m, north up, `size` x `size` px,
snapped to multiples of 10 m with the site inside pixel (size // 2, size // 2) (as `demo_world`).
S2: items grouped per solar day (tiles of one overpass merged, first valid pixel wins); DNs loaded as
float32 (DN 0 -> NaN), bilinear for the reflectance bands (20 m and reprojected ones), nearest for SCL;
reflectance = (DN + BOA offset) * raster:bands scale, offset -1000 DN where the processing baseline is
>= 04.00 (`stac_catalogs.boa_offset_dn`). Items of one day with different offsets keep the majority.
Cloud mask: `CloudDetector` (reflectance, SCL) -> classes; the default `SclDetector` maps SCL:
  0 no data, 1 saturated/defective      -> 255 nodata
  2 dark area pixels, 3 cloud shadow     -> 3 shadow   (dark areas: unreliable, often terrain shadow)
  4 vegetation, 5 bare, 6 water          -> 0 clear
  7 unclassified                         -> 0 clear    (mostly valid mixed pixels; the old "low cloud
                                                        probability" class is gone since Sen2Cor 2.8)
  8 cloud medium, 9 cloud high prob.     -> 1 thick
  10 thin cirrus                         -> 2 thin
  11 snow/ice                            -> 0 clear    (a surface state the model should see in winter)
  anything else, or all bands NaN        -> 255 nodata
S1: RTC gamma0 VV/VH (linear power) grouped per (solar day, orbit direction, relative orbit), bilinear;
values <= 0 or nodata -> NaN; orbit direction and relative orbit are kept per acquisition.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Protocol, Sequence

import numpy as np
import xarray as xr

from data_prep import stac_catalogs as cat
from earthrep.io import cube as cube_lib
from earthrep.io import geotiff
from earthrep.schema import (CLOUD_CLEAR, CLOUD_NODATA, CLOUD_SHADOW, CLOUD_THICK, CLOUD_THIN, ORBIT_DIRECTIONS,
                             PIXEL_SIZE_M, S1_BANDS, S2_BANDS)

SCL_TO_CLOUD = np.full(256, CLOUD_NODATA, np.uint8)
SCL_TO_CLOUD[[4, 5, 6, 7, 11]] = CLOUD_CLEAR
SCL_TO_CLOUD[[2, 3]] = CLOUD_SHADOW
SCL_TO_CLOUD[[8, 9]] = CLOUD_THICK
SCL_TO_CLOUD[10] = CLOUD_THIN
S2_CHUNKS = {"time": 32, "x": 2048, "y": 2048}   # a site tile is small: few, larger tasks


@dataclasses.dataclass(frozen=True)
class SiteGrid:
  crs: str
  transform: tuple[float, float, float, float, float, float]
  size: int

  def geobox(self) -> Any:
    from affine import Affine
    from odc.geo.geobox import GeoBox
    return GeoBox((self.size, self.size), Affine(*self.transform), self.crs)

  def bbox_lonlat(self, margin_m: float = 0.0) -> tuple[float, float, float, float]:
    import rasterio.warp
    a, _, c, _, e, f = self.transform
    left, top = c - margin_m, f + margin_m
    right, bottom = c + a * self.size + margin_m, f + e * self.size - margin_m
    return tuple(rasterio.warp.transform_bounds(self.crs, "EPSG:4326", left, bottom, right, top))


def utm_epsg(lon: float, lat: float) -> int:
  zone = min(int((lon + 180.0) // 6.0) + 1, 60)
  return (32600 if lat >= 0 else 32700) + zone


def site_grid(lon: float, lat: float, size: int) -> SiteGrid:
  if size < 1:
    raise cat.BuildError(f"--size-px {size}: must be >= 1")
  if not (-180 <= lon <= 180 and -80 <= lat <= 84):
    raise cat.BuildError(f"site at lon {lon}, lat {lat}: outside the UTM zones (lat -80..84)")
  import rasterio.warp
  crs = f"EPSG:{utm_epsg(lon, lat)}"
  xs, ys = rasterio.warp.transform("EPSG:4326", crs, [lon], [lat])
  centre = size // 2
  left = math.floor(xs[0] / PIXEL_SIZE_M) * PIXEL_SIZE_M - centre * PIXEL_SIZE_M
  top = (math.floor(ys[0] / PIXEL_SIZE_M) + 1) * PIXEL_SIZE_M + centre * PIXEL_SIZE_M
  return SiteGrid(crs, (PIXEL_SIZE_M, 0.0, float(left), 0.0, -PIXEL_SIZE_M, float(top)), size)


# ---------------------------------------------------------------------------------------------
# Cloud detection.
# ---------------------------------------------------------------------------------------------
class CloudDetector(Protocol):
  """(reflectance (t, band, y, x) in S2_BANDS order, SCL (t, y, x) uint8) -> cloud classes (t, y, x) uint8.

  Both inputs are lazy (Dask-backed) DataArrays; return one too (e.g. with xr.apply_ufunc(dask=...)).
  """

  def __call__(self, s2_reflectance: xr.DataArray, scl: xr.DataArray) -> xr.DataArray: ...


def scl_classes(scl: np.ndarray, all_nan: np.ndarray) -> np.ndarray:
  scl = np.where(np.isfinite(scl), scl, 0).astype(np.uint8)
  return np.where(all_nan, CLOUD_NODATA, SCL_TO_CLOUD[scl]).astype(np.uint8)


class SclDetector:
  """The Sen2Cor scene classification, mapped as in the module docstring."""

  def __call__(self, s2_reflectance: xr.DataArray, scl: xr.DataArray) -> xr.DataArray:
    all_nan = s2_reflectance.isnull().all("band")
    return xr.apply_ufunc(scl_classes, scl, all_nan, dask="parallelized", output_dtypes=[np.uint8])


DETECTORS: dict[str, CloudDetector] = {"scl": SclDetector()}


# ---------------------------------------------------------------------------------------------
# Grouping and loading.
# ---------------------------------------------------------------------------------------------
def _solar_day(item: Any, lon: float) -> np.datetime64:
  t = np.datetime64(item.datetime.replace(tzinfo=None), "s") + np.timedelta64(int(round(lon / 15.0 * 3600)), "s")
  return t.astype("datetime64[D]")


def _group_key(item: Any, parsed: Any, idx: int, groups: dict[str, int]) -> int:
  return groups[item.id]


def _load(items: list[Any], keys: list[Any], bands: Sequence[str], grid: SiteGrid,
          resampling: dict[str, str]) -> tuple[xr.Dataset, list[list[Any]]]:
  """Loads items grouped by `keys` (one per item); returns the dataset and the groups in time order."""
  import odc.stac
  grouped: dict[Any, list[Any]] = collections.defaultdict(list)
  for item, key in zip(items, keys):
    grouped[key].append(item)
  groups = sorted(grouped.values(), key=lambda g: min(it.datetime for it in g))
  index = {it.id: i for i, g in enumerate(groups) for it in g}
  flat = [it for g in groups for it in g]
  ds = odc.stac.load(flat, bands=list(bands), geobox=grid.geobox(), groupby=functools.partial(_group_key, groups=index),
                     resampling=resampling, dtype="float32", chunks=dict(S2_CHUNKS), fail_on_error=True)
  if ds.sizes["time"] != len(groups) or ds.sizes["y"] != grid.size or ds.sizes["x"] != grid.size:
    raise cat.BuildError(f"loaded grid {dict(ds.sizes)} does not match the site grid ({len(groups)} dates, "
                         f"{grid.size} x {grid.size} px)")
  if tuple(ds.odc.geobox.affine)[:6] != grid.transform:
    raise cat.BuildError(f"loaded grid {tuple(ds.odc.geobox.affine)[:6]} differs from the site grid {grid.transform}")
  return ds, groups


def _group_time(group: list[Any]) -> np.datetime64:
  return np.datetime64(min(it.datetime for it in group).replace(tzinfo=None), "ns")


@dataclasses.dataclass
class LazyS2:
  s2_reflectance: xr.DataArray   # (time, band, y, x) float32
  cloud_mask: xr.DataArray       # (time, y, x) uint8
  time: np.ndarray
  dropped_items: list[str]


def load_s2(items: list[Any], grid: SiteGrid, lon: float, detector: CloudDetector) -> LazyS2:
  cat.require_assets(items, cat.S2_ASSETS)
  parse = geotiff.parse_baseline
  offsets = {it.id: cat.boa_offset_dn(it, geotiff.OFFSET_FROM_DATE, geotiff.OFFSET_BASELINE, parse)
             for it in items}
  by_day: dict[np.datetime64, list[Any]] = collections.defaultdict(list)
  for it in items:
    by_day[_solar_day(it, lon)].append(it)
  kept, dropped = [], []
  for day_items in by_day.values():   # one offset per date: keep the majority (ties: the newer baseline)
    counts = collections.Counter(offsets[it.id] for it in day_items)
    best = max(counts, key=lambda o: (counts[o], -o))
    kept += [it for it in day_items if offsets[it.id] == best]
    dropped += [it.id for it in day_items if offsets[it.id] != best]
  keys = [_solar_day(it, lon) for it in kept]
  resampling = {**{b: "bilinear" for b in S2_BANDS}, cat.SCL: "nearest"}
  ds, groups = _load(kept, keys, cat.S2_ASSETS, grid, resampling)
  offset_t = xr.DataArray(np.array([offsets[g[0].id] for g in groups], np.float32), dims="time")
  scale_b = xr.DataArray(np.array([cat.band_scale(groups[0][0], b) for b in S2_BANDS], np.float32), dims="band")
  dn = xr.concat([ds[b] for b in S2_BANDS], dim="band").transpose("time", "band", "y", "x")
  reflectance = ((dn + offset_t) * scale_b).astype(np.float32)
  cloud = detector(reflectance, ds[cat.SCL]).transpose("time", "y", "x")
  return LazyS2(reflectance, cloud, np.array([_group_time(g) for g in groups], "datetime64[ns]"), dropped)


@dataclasses.dataclass
class LazyS1:
  s1_gamma0: xr.DataArray        # (time, polarisation, y, x) float32, linear
  time: np.ndarray
  orbit_direction: np.ndarray
  relative_orbit: np.ndarray
  dropped_items: list[str]


def empty_s1(grid: SiteGrid) -> LazyS1:
  return LazyS1(xr.DataArray(np.zeros((0, len(S1_BANDS), grid.size, grid.size), np.float32),
                             dims=("time", "polarisation", "y", "x")),
                np.zeros(0, "datetime64[ns]"), np.zeros(0, "<U10"), np.zeros(0, np.int16), [])


def load_s1(items: list[Any], grid: SiteGrid, lon: float) -> LazyS1:
  # Without its orbit direction an acquisition cannot be placed in the cube: dropped and reported.
  usable = [it for it in items if cat.s1_metadata(it)[0] in ORBIT_DIRECTIONS]
  dropped = [it.id for it in items if cat.s1_metadata(it)[0] not in ORBIT_DIRECTIONS]
  if not usable:
    return dataclasses.replace(empty_s1(grid), dropped_items=dropped)
  cat.require_assets(usable, S1_BANDS)
  keys = [(_solar_day(it, lon), *cat.s1_metadata(it)) for it in usable]
  ds, groups = _load(usable, keys, S1_BANDS, grid, {b: "bilinear" for b in S1_BANDS})
  gamma0 = xr.concat([ds[b] for b in S1_BANDS], dim="polarisation").transpose("time", "polarisation", "y", "x")
  gamma0 = gamma0.where(gamma0 > 0).astype(np.float32)
  meta = [cat.s1_metadata(g[0]) for g in groups]
  times = np.array([_group_time(g) for g in groups], "datetime64[ns]")
  keep = np.concatenate([[True], np.diff(times.astype(np.int64)) > 0])   # equal stamps: keep the first
  return LazyS1(gamma0.isel(time=np.flatnonzero(keep)), times[keep],
                np.array([m[0] for m in meta], dtype=str)[keep], np.array([m[1] for m in meta], np.int16)[keep],
                dropped + [g[0].id for g, k in zip(groups, keep) if not k])

