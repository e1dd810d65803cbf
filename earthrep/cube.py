"""Site-cube I/O: the Zarr store of `schema.py`, GeoTIFF/COG stacks, and Sentinel-2 band files.

Zarr (`<site>/cube.zarr`, written by `write_zarr`): variables and dims exactly as `schema.py`, one chunk
per date holding the full tile, coordinates `x`/`y` at pixel centres, CRS and affine kept in the CF grid
mapping variable `spatial_ref` (`crs_wkt`, `spatial_ref`, `GeoTransform` "c a b f d e" in GDAL order) named
by each variable's `grid_mapping`, site metadata and `earthrep_cube_version` as dataset attributes.
GeoTIFF stack (`write_geotiff_stack` / `read_geotiff_stack`), one site folder:
  `site.json`                          {"site_id", "lon", "lat", "land_cover"}
  `s2/<YYYYMMDDTHHMMSS>.tif`           one GeoTIFF/COG per S2 acquisition (UTC), float32 reflectance, band
                                       descriptions = band names in any order (reordered to `S2_BANDS`); the
                                       cloud mask is the band described `cloud_mask`, else a last band not
                                       named after an S2 band, else the sibling `<YYYYMMDDTHHMMSS>_mask.tif`
  `s1/<YYYYMMDDTHHMMSS>_<asc|desc>.tif` linear gamma0, bands described VV and VH (any order)
  optional tags: `ACQUISITION_TIME` (ISO, ns; exact time, preferred over the second-precision name) and
  `RELATIVE_ORBIT` (S1). All rasters of a site must share one CRS, transform and shape; NaN = no data.
Sentinel-2 band files (`read_s2_band_files`, SAFE granules L1C/L2A, `*_B02.jp2` / `*_B05_20m.jp2` / .tif):
DN 0 is no data, reflectance = (DN + offset) / 10000 with offset -1000 from processing baseline 04.00 on
(taken from `processing_baseline`, else the `_Nxxyy_` of a SAFE name in the path, else the acquisition date:
from 2022-01-25; reprocessed older products carry the offset too, so pass the baseline for those). Bands
coarser than 10 m are resampled onto the grid of B02 bilinearly, on pixel centres (weights 3/4, 1/4 for
20 m), NaN-aware and edge-clamped: that is what the reference got from xcube-stac with `apply_scaling=True`
(xcube resamples float variables with spline order 1), so the model sees the same smooth 20 m bands;
`resampling="nearest"` (each 20 m pixel to its 2x2 block) keeps original values instead.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import rasterio
import xarray as xr
import zarr
from affine import Affine
from rasterio.crs import CRS

from earthrep.schema import (
    CLOUD_CLEAR, CLOUD_NODATA, CLOUD_SHADOW, CLOUD_THICK, CLOUD_THIN, DIM_BAND, DIM_POL, DIM_T1, DIM_T2,
    DIM_X, DIM_Y, ORBIT_DIRECTIONS, PIXEL_SIZE_M, S1_BANDS, S2_BANDS, VAR_CLOUD, VAR_ORBIT, VAR_REL_ORBIT,
    VAR_S1, VAR_S2, ZARR_NAME, SiteCube, SiteMeta)

CUBE_VERSION = 1
GRID_MAPPING = "spatial_ref"
CLOUD_CLASSES = (CLOUD_CLEAR, CLOUD_THICK, CLOUD_THIN, CLOUD_SHADOW, CLOUD_NODATA)
# Values above this (in more than REFLECTANCE_DN_FRACTION of the data) mean digital numbers, not reflectance;
# a few saturated L2A pixels ((65535 - 1000) / 10000) are legitimate. Below the minimum is a fill value.
REFLECTANCE_DN_SUSPECT, REFLECTANCE_DN_FRACTION, REFLECTANCE_MIN = 1.5, 0.01, -0.5
S2_QUANTIFICATION, S2_BOA_OFFSET = 10000.0, -1000.0
OFFSET_BASELINE, OFFSET_FROM_DATE = (4, 0), np.datetime64("2022-01-25")
SITE_JSON, S2_DIR, S1_DIR, MASK_SUFFIX, MASK_BAND = "site.json", "s2", "s1", "_mask", "cloud_mask"
TAG_TIME, TAG_REL_ORBIT = "ACQUISITION_TIME", "RELATIVE_ORBIT"
_ORBIT_ABBREV = {"asc": "ascending", "desc": "descending", "ascending": "ascending",
                 "descending": "descending"}
_S2_NAME = re.compile(r"^(\d{8}T\d{6})$")
_S1_NAME = re.compile(r"^(\d{8}T\d{6})_([A-Za-z]+)$")
_BAND_FILE = re.compile(r"_(B(?:0[1-9]|1[0-2]|8A))(?:_(\d+)m)?\.(?:jp2|tiff?)$", re.IGNORECASE)
_SAFE_BASELINE = re.compile(r"_N(\d{2})(\d{2})(?=[_.]|$)")
_ACQ_DATE = re.compile(r"(\d{8})T\d{6}")

Transform = tuple[float, float, float, float, float, float]


class CubeError(ValueError):
  """A cube, store or raster violates the contract; the message starts with `<file>: <field>:`."""


def _error(where: Any, field: str, message: str) -> CubeError:
  return CubeError(f"{where}: {field}: {message}")


def _as_str(values: Any) -> np.ndarray:
  """Any array of strings (incl. numpy StringDType, which zarr 3 returns) -> fixed-width str array."""
  values = np.asarray(values)
  return np.array([str(v) for v in values.ravel()], dtype=str).reshape(values.shape)


# ---------------------------------------------------------------------------------------------
# Validation (shared by every reader and writer).
# ---------------------------------------------------------------------------------------------
def _check_times(times: np.ndarray, n: int, where: Any, field: str) -> None:
  if times.shape != (n,):
    raise _error(where, field, f"shape {times.shape}, expected ({n},)")
  if not np.issubdtype(times.dtype, np.datetime64):
    raise _error(where, field, f"dtype {times.dtype}, expected datetime64")
  if np.isnat(times).any():
    raise _error(where, field, f"NaT at index {int(np.flatnonzero(np.isnat(times))[0])}")
  steps = np.diff(times.astype("datetime64[ns]").astype(np.int64))
  if (steps <= 0).any():
    i = int(np.flatnonzero(steps <= 0)[0])
    kind = "duplicated" if steps[i] == 0 else "out of order"
    raise _error(where, field, f"timestamps {kind}: [{i}] {times[i]} then [{i + 1}] {times[i + 1]}")


def _check_finite_or_nan(values: np.ndarray, where: Any, field: str) -> None:
  infinite = np.isinf(values)
  if infinite.any():
    first = tuple(int(i) for i in np.argwhere(infinite)[0])
    raise _error(where, field, f"{int(infinite.sum())} infinite value(s), first at {first} "
                 "(use NaN for no data)")


def _check_reflectance(s2_reflectance: np.ndarray, where: Any) -> None:
  finite = s2_reflectance[np.isfinite(s2_reflectance)]
  if finite.size == 0:
    return
  too_high = float(np.mean(finite > REFLECTANCE_DN_SUSPECT))
  if too_high > REFLECTANCE_DN_FRACTION:
    raise _error(where, VAR_S2, f"{too_high:.1%} of values > {REFLECTANCE_DN_SUSPECT} (max {finite.max():g}): "
                 "looks like digital numbers; scale to reflectance with (DN + offset) / 10000 "
                 "(offset -1000 from processing baseline 04.00, else 0)")
  if finite.min() < REFLECTANCE_MIN:
    raise _error(where, VAR_S2, f"minimum {finite.min():g} < {REFLECTANCE_MIN}: a fill value? use NaN for no data")


def _check_grid(crs: str, transform: Sequence[float], where: Any) -> None:
  try:
    parsed = CRS.from_user_input(crs)
  except Exception as e:  # rasterio raises CRSError, but anything unparsable is the same problem
    raise _error(where, "crs", f"cannot parse {crs!r} ({e})") from e
  if not parsed.is_projected:
    raise _error(where, "crs", f"{crs!r} is not projected; cubes live on a UTM grid")
  if len(transform) != 6:
    raise _error(where, "transform", f"{len(transform)} values, expected 6 (a, b, c, d, e, f)")
  a, b, _, d, e, _ = (float(v) for v in transform)
  if not (b == 0 and d == 0 and abs(a - PIXEL_SIZE_M) < 1e-6 and abs(e + PIXEL_SIZE_M) < 1e-6):
    raise _error(where, "transform", f"{tuple(transform)} is not a north-up {PIXEL_SIZE_M:g} m grid")


def validate_cube(cube: SiteCube, where: Any = "SiteCube") -> None:
  """Raises CubeError naming `where` and the field for any violation of the cube contract."""
  _check_grid(cube.crs, cube.transform, where)
  s2, cloud, s1 = cube.s2_reflectance, cube.cloud_mask, cube.s1_gamma0
  if s2.ndim != 4 or s2.shape[1] != len(S2_BANDS):
    raise _error(where, VAR_S2, f"shape {s2.shape}, expected (time_s2, {len(S2_BANDS)}, y, x)")
  t2, _, h, w = s2.shape
  if t2 == 0:
    raise _error(where, VAR_S2, "no S2 acquisition")
  if cloud.shape != (t2, h, w):
    raise _error(where, VAR_CLOUD, f"shape {cloud.shape}, expected {(t2, h, w)} (same grid as {VAR_S2})")
  unknown = np.setdiff1d(np.unique(cloud), CLOUD_CLASSES)
  if unknown.size:
    raise _error(where, VAR_CLOUD, f"unknown class(es) {unknown.tolist()}, expected {CLOUD_CLASSES}")
  _check_times(np.asarray(cube.s2_time), t2, where, DIM_T2)
  if s1.ndim != 4 or s1.shape[1] != len(S1_BANDS):
    raise _error(where, VAR_S1, f"shape {s1.shape}, expected (time_s1, {len(S1_BANDS)}, y, x)")
  if s1.shape[2:] != (h, w):
    raise _error(where, VAR_S1, f"grid {s1.shape[2:]} differs from the S2 grid {(h, w)}")
  t1 = s1.shape[0]
  _check_times(np.asarray(cube.s1_time), t1, where, DIM_T1)
  orbit = _as_str(cube.s1_orbit_direction)
  if orbit.shape != (t1,):
    raise _error(where, VAR_ORBIT, f"shape {orbit.shape}, expected ({t1},)")
  bad = sorted(set(orbit.tolist()) - set(ORBIT_DIRECTIONS))
  if bad:
    raise _error(where, VAR_ORBIT, f"unknown orbit direction(s) {bad}, expected {ORBIT_DIRECTIONS}")
  if cube.s1_relative_orbit is not None and np.shape(cube.s1_relative_orbit) != (t1,):
    raise _error(where, VAR_REL_ORBIT, f"shape {np.shape(cube.s1_relative_orbit)}, expected ({t1},)")
  _check_finite_or_nan(s2, where, VAR_S2)
  _check_finite_or_nan(s1, where, VAR_S1)
  _check_reflectance(s2, where)
  finite_s1 = s1[np.isfinite(s1)]
  if finite_s1.size and np.mean(finite_s1 < 0) > 0.5:
    raise _error(where, VAR_S1, "mostly negative: looks like dB; store linear power (10 ** (dB / 10))")
  clear = (cloud == CLOUD_CLEAR) & np.isfinite(s2).any(axis=1)
  if not clear.any():
    raise _error(where, VAR_CLOUD, f"no S2 date has a clear (class {CLOUD_CLEAR}) pixel with data")


# ---------------------------------------------------------------------------------------------
# Atomic writes.
# ---------------------------------------------------------------------------------------------
def _remove(path: Path) -> None:
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path, ignore_errors=True)
  elif path.exists() or path.is_symlink():
    path.unlink()


@contextlib.contextmanager
def _atomic_target(target: Path) -> Iterator[Path]:
  """Yields a temp sibling to write; on success it replaces `target`, on any failure it is removed.

  Files are replaced with one os.replace. A directory cannot be renamed onto a non-empty one, so the old
  store is first moved aside and restored if the second rename fails (only that instant has no store).
  """
  tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
  try:
    yield tmp
    if tmp.is_dir() and target.exists():
      old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
      os.replace(target, old)
      try:
        os.replace(tmp, target)
      except BaseException:
        os.replace(old, target)
        raise
      _remove(old)
    else:
      os.replace(tmp, target)
  finally:
    _remove(tmp)


# ---------------------------------------------------------------------------------------------
# Zarr.
# ---------------------------------------------------------------------------------------------
def pixel_centre_coords(transform: Sequence[float], h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """(x (w,), y (h,)) of pixel centres for a north-up affine (a, b, c, d, e, f)."""
  a, _, c, _, e, f = (float(v) for v in transform)
  return c + (np.arange(w) + 0.5) * a, f + (np.arange(h) + 0.5) * e


def _grid_mapping_attrs(crs: str, transform: Sequence[float]) -> dict[str, str]:
  wkt = CRS.from_user_input(crs).to_wkt()
  a, b, c, d, e, f = (float(v) for v in transform)
  return {"crs_wkt": wkt, "spatial_ref": wkt, "GeoTransform": " ".join(repr(v) for v in (c, a, b, f, d, e))}


def cube_to_dataset(cube: SiteCube) -> xr.Dataset:
  """The in-memory xarray form of the Zarr store (no validation)."""
  h, w = cube.shape_hw
  x, y = pixel_centre_coords(cube.transform, h, w)
  t1 = cube.s1_gamma0.shape[0]
  relative_orbit = (np.full(t1, -1) if cube.s1_relative_orbit is None else np.asarray(cube.s1_relative_orbit))
  gm = {"grid_mapping": GRID_MAPPING}
  flags = {"flag_values": list(CLOUD_CLASSES), "flag_meanings": "clear thick_cloud thin_cloud shadow no_data"}
  data_vars = {
      VAR_S2: ((DIM_T2, DIM_BAND, DIM_Y, DIM_X), np.asarray(cube.s2_reflectance, np.float32),
               {**gm, "long_name": "Sentinel-2 reflectance", "units": "1"}),
      VAR_CLOUD: ((DIM_T2, DIM_Y, DIM_X), np.asarray(cube.cloud_mask, np.uint8), {**gm, **flags}),
      VAR_S1: ((DIM_T1, DIM_POL, DIM_Y, DIM_X), np.asarray(cube.s1_gamma0, np.float32),
               {**gm, "long_name": "Sentinel-1 RTC gamma0, linear power", "units": "1"}),
      VAR_ORBIT: ((DIM_T1,), _as_str(cube.s1_orbit_direction).astype(object)),
      VAR_REL_ORBIT: ((DIM_T1,), relative_orbit.astype(np.int16)),
  }
  coords = {
      DIM_T2: np.asarray(cube.s2_time).astype("datetime64[ns]"),
      DIM_T1: np.asarray(cube.s1_time).astype("datetime64[ns]"),
      DIM_BAND: np.array(S2_BANDS, dtype=object), DIM_POL: np.array(S1_BANDS, dtype=object),
      DIM_Y: (DIM_Y, y, {"standard_name": "projection_y_coordinate", "units": "m"}),
      DIM_X: (DIM_X, x, {"standard_name": "projection_x_coordinate", "units": "m"}),
      GRID_MAPPING: ((), np.int32(0), _grid_mapping_attrs(cube.crs, cube.transform)),
  }
  meta = cube.meta
  attrs = {"site_id": meta.site_id, "lon": float(meta.lon), "lat": float(meta.lat),
           "land_cover": meta.land_cover, "earthrep_cube_version": CUBE_VERSION}
  return xr.Dataset(data_vars, coords, attrs)


def _zarr_encoding(cube: SiteCube) -> dict[str, dict[str, Any]]:
  h, w = cube.shape_hw
  time = {"units": "nanoseconds since 1970-01-01", "dtype": "int64"}
  return {VAR_S2: {"chunks": (1, len(S2_BANDS), h, w)}, VAR_CLOUD: {"chunks": (1, h, w)},
          VAR_S1: {"chunks": (1, len(S1_BANDS), h, w)}, DIM_T2: time, DIM_T1: time}


def write_zarr(cube: SiteCube, site_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
  """Validates `cube` and writes `<site_dir>/cube.zarr` atomically; returns the store path."""
  validate_cube(cube, f"SiteCube {cube.meta.site_id!r}")
  target = Path(site_dir) / ZARR_NAME
  if target.exists() and not overwrite:
    raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
  target.parent.mkdir(parents=True, exist_ok=True)
  dataset = cube_to_dataset(cube)
  with _atomic_target(target) as tmp:
    # Every chunk is written (even all-NaN ones) so that a missing chunk always means a truncated store.
    dataset.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, write_empty_chunks=True,
                    encoding=_zarr_encoding(cube))
  return target


def _grid_from_dataset(ds: xr.Dataset, where: Any) -> tuple[str, Transform]:
  if GRID_MAPPING not in ds.variables:
    raise _error(where, GRID_MAPPING, "missing grid mapping variable (CRS and transform)")
  attrs = ds[GRID_MAPPING].attrs
  wkt = attrs.get("crs_wkt") or attrs.get("spatial_ref")
  if not wkt:
    raise _error(where, GRID_MAPPING, "no crs_wkt / spatial_ref attribute")
  try:
    crs = CRS.from_user_input(wkt)
    c, a, b, f, d, e = (float(v) for v in str(attrs["GeoTransform"]).split())
  except Exception as err:
    raise _error(where, GRID_MAPPING, f"unreadable CRS or GeoTransform ({err})") from err
  transform = (a, b, c, d, e, f)
  x, y = pixel_centre_coords(transform, ds.sizes.get(DIM_Y, 0), ds.sizes.get(DIM_X, 0))
  for name, expected in ((DIM_X, x), (DIM_Y, y)):
    if name not in ds.coords or not np.allclose(ds[name].values, expected, rtol=0, atol=1e-6 * abs(a)):
      raise _error(where, name, "coordinates missing or not the pixel centres of the GeoTransform")
  epsg = crs.to_epsg()
  return (f"EPSG:{epsg}" if epsg else crs.to_wkt()), transform


def _names(ds: xr.Dataset, dim: str, wanted: Sequence[str], where: Any) -> list[str]:
  if dim not in ds.coords:
    raise _error(where, dim, "missing coordinate")
  names = [str(v) for v in ds[dim].values]
  missing = [n for n in wanted if n not in names]
  if missing:
    raise _error(where, dim, f"missing band(s) {missing}; found {names}")
  return list(wanted)


def _values(ds: xr.Dataset, name: str, dims: tuple[str, ...], where: Any, **select: list[str]) -> np.ndarray:
  if name not in ds.variables:
    raise _error(where, name, "missing variable")
  var = ds[name]
  if var.dims != dims:
    raise _error(where, name, f"dims {var.dims}, expected {dims}")
  try:
    return np.asarray(var.sel(select).values if select else var.values)
  except Exception as e:
    raise _error(where, name, f"unreadable data ({type(e).__name__}: {e})") from e


def dataset_to_cube(ds: xr.Dataset, where: Any = "dataset") -> SiteCube:
  """Inverse of `cube_to_dataset`, with validation; bands and polarisations are put in schema order."""
  for name in (VAR_S2, VAR_CLOUD, VAR_S1, VAR_ORBIT):
    if name not in ds.variables:
      raise _error(where, name, "missing variable")
  bands = _names(ds, DIM_BAND, S2_BANDS, where)
  pols = _names(ds, DIM_POL, S1_BANDS, where)
  s2 = _values(ds, VAR_S2, (DIM_T2, DIM_BAND, DIM_Y, DIM_X), where, **{DIM_BAND: bands})
  cloud = _values(ds, VAR_CLOUD, (DIM_T2, DIM_Y, DIM_X), where)
  s1 = _values(ds, VAR_S1, (DIM_T1, DIM_POL, DIM_Y, DIM_X), where, **{DIM_POL: pols})
  orbit = _as_str(_values(ds, VAR_ORBIT, (DIM_T1,), where))
  relative_orbit = (_values(ds, VAR_REL_ORBIT, (DIM_T1,), where).astype(np.int16)
                    if VAR_REL_ORBIT in ds.variables else None)
  crs, transform = _grid_from_dataset(ds, where)
  attrs = ds.attrs
  version = attrs.get("earthrep_cube_version", CUBE_VERSION)
  if int(version) > CUBE_VERSION:
    raise _error(where, "earthrep_cube_version", f"{version} is newer than this reader ({CUBE_VERSION})")
  for key in ("site_id", "lon", "lat"):
    if key not in attrs:
      raise _error(where, key, "missing site attribute")
  meta = SiteMeta(str(attrs["site_id"]), float(attrs["lon"]), float(attrs["lat"]),
                  str(attrs.get("land_cover", "")))
  if not np.issubdtype(cloud.dtype, np.integer):
    raise _error(where, VAR_CLOUD, f"dtype {cloud.dtype}, expected uint8 classes")
  cube = SiteCube(meta, crs, transform, s2.astype(np.float32), cloud.astype(np.uint8),
                  _time_values(ds, DIM_T2, where), s1.astype(np.float32), _time_values(ds, DIM_T1, where),
                  orbit, relative_orbit)
  validate_cube(cube, where)
  return cube


def _time_values(ds: xr.Dataset, dim: str, where: Any) -> np.ndarray:
  if dim not in ds.coords:
    raise _error(where, dim, "missing time coordinate")
  times = np.asarray(ds[dim].values)
  if not np.issubdtype(times.dtype, np.datetime64):
    raise _error(where, dim, f"dtype {times.dtype}, expected datetime64 (CF time units)")
  return times.astype("datetime64[ns]")


def _is_zarr(path: Path) -> bool:
  return path.suffix == ".zarr" or (path / "zarr.json").exists() or (path / ".zgroup").exists()


def _check_chunks_complete(store: Path, where: Any) -> None:
  try:
    group = zarr.open_group(store, mode="r")
    for name in (VAR_S2, VAR_CLOUD, VAR_S1):
      if name in group:
        array = group[name]
        if array.nchunks_initialized < array.nchunks:
          raise _error(where, name, f"truncated store: {array.nchunks - array.nchunks_initialized} of "
                       f"{array.nchunks} chunks missing")
  except CubeError:
    raise
  except Exception as e:
    raise _error(where, "store", f"unreadable Zarr store ({type(e).__name__}: {e})") from e


def _read_zarr(store: Path) -> SiteCube:
  if not store.is_dir():
    raise _error(store, "store", "does not exist")
  try:
    ds = xr.open_zarr(store, consolidated=False, chunks=None)
  except Exception as e:
    raise _error(store, "store", f"unreadable Zarr store ({type(e).__name__}: {e})") from e
  _check_chunks_complete(store, store)
  with ds:
    return dataset_to_cube(ds, store)


def read_cube(path: str | os.PathLike) -> SiteCube:
  """Reads a .zarr store or a site folder (its cube.zarr if present, else its GeoTIFF stack); validates it."""
  path = Path(path)
  if _is_zarr(path):
    return _read_zarr(path)
  if (path / ZARR_NAME).exists():
    return _read_zarr(path / ZARR_NAME)
  if (path / SITE_JSON).exists():
    return read_geotiff_stack(path)
  raise _error(path, "cube", f"no {ZARR_NAME} and no {SITE_JSON} (GeoTIFF stack) found")


def _is_site(path: Path) -> bool:
  return path.is_dir() and (_is_zarr(path) or (path / ZARR_NAME).exists() or (path / SITE_JSON).exists())


def find_cubes(path: str | os.PathLike) -> list[Path]:
  """One site folder (or store) -> [it]; a data dir -> its `cubes/` site folders (or its own), sorted."""
  path = Path(path)
  if _is_site(path):
    return [path]
  root = path / "cubes" if (path / "cubes").is_dir() else path
  sites = sorted(p for p in root.iterdir() if not p.name.startswith(".") and _is_site(p)) if root.is_dir() else []
  if not sites:
    raise _error(path, "cubes", f"no site cubes found (expected <site>/{ZARR_NAME} or <site>/{SITE_JSON} "
                 f"under {root})")
  return sites


# ---------------------------------------------------------------------------------------------
# GeoTIFF stacks.
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _open_raster(path: Path) -> Iterator[Any]:
  try:
    with rasterio.open(path) as src:
      yield src
  except CubeError:
    raise
  except Exception as e:  # rasterio errors on open and on read of truncated/corrupt files
    raise _error(path, "raster", f"unreadable ({type(e).__name__}: {e})") from e


def _grid_of(src: Any) -> tuple[CRS, Transform, tuple[int, int]]:
  return src.crs, tuple(src.transform)[:6], (src.height, src.width)


def _check_same_grid(path: Path, grid: tuple, ref_path: Path, ref_grid: tuple) -> None:
  (crs, transform, shape), (ref_crs, ref_transform, ref_shape) = grid, ref_grid
  if crs != ref_crs:
    raise _error(path, "crs", f"{crs} differs from {ref_crs} of {ref_path} (S1 and S2 must share one grid)")
  if shape != ref_shape or not np.allclose(transform, ref_transform, rtol=0, atol=1e-6):
    raise _error(path, "transform", f"grid {transform} {shape} differs from {ref_transform} {ref_shape} of "
                 f"{ref_path} (S1 and S2 must share one grid)")


def _band_indexes(src: Any, path: Path, wanted: Sequence[str]) -> list[int]:
  names = [d or "" for d in src.descriptions]
  missing = [b for b in wanted if b not in names]
  if missing:
    raise _error(path, "band", f"missing band(s) {missing}; band descriptions are {names}")
  return [names.index(b) + 1 for b in wanted]


def _read_float_bands(src: Any, path: Path, indexes: list[int]) -> np.ndarray:
  data = src.read(indexes, out_dtype=np.float32)
  if src.nodata is not None and not np.isnan(src.nodata):
    data[data == src.nodata] = np.nan
  return data


def _mask_classes(values: np.ndarray, path: Path) -> np.ndarray:
  values = np.where(np.isnan(values), CLOUD_NODATA, values) if values.dtype.kind == "f" else values
  if not np.isin(values, CLOUD_CLASSES).all():
    raise _error(path, VAR_CLOUD, f"values {np.setdiff1d(np.unique(values), CLOUD_CLASSES)[:5].tolist()} "
                 f"are not cloud classes {CLOUD_CLASSES}")
  return values.astype(np.uint8)


def _time_of(src: Any, stamp: str, path: Path) -> np.datetime64:
  named = np.datetime64(f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:11]}:{stamp[11:13]}:{stamp[13:15]}", "ns")
  tag = src.tags().get(TAG_TIME)
  if tag is None:
    return named
  exact = np.datetime64(tag, "ns")
  if abs(int((exact - named).astype(np.int64))) >= 1_000_000_000:
    raise _error(path, TAG_TIME, f"{tag} disagrees with the file name {stamp}")
  return exact


def _read_s2_file(path: Path) -> tuple[np.datetime64, np.ndarray, np.ndarray, tuple]:
  match = _S2_NAME.match(path.stem)
  if not match:
    raise _error(path, "file name", "expected s2/<YYYYMMDDTHHMMSS>.tif")
  with _open_raster(path) as src:
    indexes = _band_indexes(src, path, S2_BANDS)
    names = [d or "" for d in src.descriptions]
    reflectance = _read_float_bands(src, path, indexes)
    mask_band = (names.index(MASK_BAND) + 1 if MASK_BAND in names else
                 src.count if src.count > len(S2_BANDS) and names[-1] not in S2_BANDS else None)
    mask = src.read(mask_band) if mask_band else None
    time, grid = _time_of(src, match.group(1), path), _grid_of(src)
  if mask is None:
    mask_path = path.with_name(f"{path.stem}{MASK_SUFFIX}{path.suffix}")
    if not mask_path.exists():
      raise _error(path, VAR_CLOUD, f"no band described {MASK_BAND!r} and no {mask_path.name}")
    with _open_raster(mask_path) as src:
      _check_same_grid(mask_path, _grid_of(src), path, grid)
      mask, path = src.read(1), mask_path
  return time, reflectance, _mask_classes(mask, path), grid


def _read_s1_file(path: Path) -> tuple[np.datetime64, np.ndarray, str, int, tuple]:
  match = _S1_NAME.match(path.stem)
  if not match:
    raise _error(path, "file name", "expected s1/<YYYYMMDDTHHMMSS>_<asc|desc>.tif")
  direction = _ORBIT_ABBREV.get(match.group(2).lower())
  if direction is None:
    raise _error(path, VAR_ORBIT, f"unknown orbit direction {match.group(2)!r}, expected asc or desc")
  with _open_raster(path) as src:
    gamma0 = _read_float_bands(src, path, _band_indexes(src, path, S1_BANDS))
    relative_orbit = int(src.tags().get(TAG_REL_ORBIT, -1))
    return _time_of(src, match.group(1), path), gamma0, direction, relative_orbit, _grid_of(src)


def _tifs(folder: Path) -> list[Path]:
  return sorted(p for p in folder.glob("*") if p.suffix.lower() in (".tif", ".tiff")
                and not p.name.startswith(".")) if folder.is_dir() else []


def read_geotiff_stack(site_dir: str | os.PathLike) -> SiteCube:
  """Reads the GeoTIFF stack layout of the module docstring; validates it."""
  site_dir = Path(site_dir)
  try:
    info = json.loads((site_dir / SITE_JSON).read_text())
    meta = SiteMeta(str(info["site_id"]), float(info["lon"]), float(info["lat"]), str(info.get("land_cover", "")))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise _error(site_dir / SITE_JSON, "site metadata", f"unreadable or incomplete ({type(e).__name__}: {e})") from e
  s2_files = [p for p in _tifs(site_dir / S2_DIR) if not p.stem.endswith(MASK_SUFFIX)]
  s1_files = _tifs(site_dir / S1_DIR)
  if not s2_files:
    raise _error(site_dir / S2_DIR, VAR_S2, "no S2 GeoTIFF found")
  s2 = [_read_s2_file(p) for p in s2_files]
  s1 = [_read_s1_file(p) for p in s1_files]
  for path, frame in zip(s2_files + s1_files, s2 + s1):
    _check_same_grid(path, frame[-1], s2_files[0], s2[0][-1])
  crs, transform, (h, w) = s2[0][-1]
  epsg = crs.to_epsg()
  cube = SiteCube(
      meta, f"EPSG:{epsg}" if epsg else crs.to_wkt(), transform,
      s2_reflectance=np.stack([f[1] for f in s2]), cloud_mask=np.stack([f[2] for f in s2]),
      s2_time=np.array([f[0] for f in s2], "datetime64[ns]"),
      s1_gamma0=np.stack([f[1] for f in s1]) if s1 else np.zeros((0, len(S1_BANDS), h, w), np.float32),
      s1_time=np.array([f[0] for f in s1], "datetime64[ns]"),
      s1_orbit_direction=np.array([f[2] for f in s1], dtype=str),
      s1_relative_orbit=np.array([f[3] for f in s1], np.int16))
  validate_cube(cube, site_dir)
  return cube


def _time_stamp(time: np.datetime64) -> str:
  return str(np.datetime64(time, "s")).replace("-", "").replace(":", "")


def _write_raster(path: Path, data: np.ndarray, profile: dict[str, Any], descriptions: Sequence[str],
                  tags: dict[str, Any]) -> None:
  with _atomic_target(path) as tmp:
    with rasterio.open(tmp, "w", **profile, count=data.shape[0], dtype=data.dtype) as dst:
      dst.write(data)
      for i, name in enumerate(descriptions, start=1):
        dst.set_band_description(i, name)
      dst.update_tags(**tags)


def write_geotiff_stack(cube: SiteCube, site_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
  """Writes the GeoTIFF stack layout (inverse of `read_geotiff_stack`), each file atomically."""
  validate_cube(cube, f"SiteCube {cube.meta.site_id!r}")
  site_dir = Path(site_dir)
  s2_dir, s1_dir = site_dir / S2_DIR, site_dir / S1_DIR
  old = set(_tifs(s2_dir) + _tifs(s1_dir))
  if (old or (site_dir / SITE_JSON).exists()) and not overwrite:
    raise FileExistsError(f"{site_dir} already holds a GeoTIFF stack; pass overwrite=True to replace it")
  s2_time, s1_time = np.asarray(cube.s2_time, "datetime64[ns]"), np.asarray(cube.s1_time, "datetime64[ns]")
  abbrev = {"ascending": "asc", "descending": "desc"}
  s2_paths = [s2_dir / f"{_time_stamp(t)}.tif" for t in s2_time]
  s1_paths = [s1_dir / f"{_time_stamp(t)}_{abbrev[str(d)]}.tif" for t, d in zip(s1_time, cube.s1_orbit_direction)]
  mask_paths = [p.with_name(f"{p.stem}{MASK_SUFFIX}.tif") for p in s2_paths]
  written = s2_paths + mask_paths + s1_paths
  if len(set(written)) != len(written):
    raise _error(site_dir, "time", "two acquisitions in the same second: their file names would collide")
  s2_dir.mkdir(parents=True, exist_ok=True)
  s1_dir.mkdir(parents=True, exist_ok=True)
  h, w = cube.shape_hw
  profile = {"driver": "GTiff", "width": w, "height": h, "crs": CRS.from_user_input(cube.crs),
             "transform": Affine(*cube.transform), "compress": "deflate"}
  for i, time in enumerate(s2_time):
    tags = {TAG_TIME: str(time)}
    _write_raster(s2_paths[i], np.asarray(cube.s2_reflectance[i], np.float32), {**profile, "nodata": np.nan},
                  S2_BANDS, tags)
    _write_raster(mask_paths[i], np.asarray(cube.cloud_mask[i:i + 1], np.uint8),
                  {**profile, "nodata": CLOUD_NODATA}, [MASK_BAND], tags)
  relative_orbit = cube.s1_relative_orbit if cube.s1_relative_orbit is not None else [-1] * len(s1_time)
  for i, time in enumerate(s1_time):
    _write_raster(s1_paths[i], np.asarray(cube.s1_gamma0[i], np.float32), {**profile, "nodata": np.nan},
                  S1_BANDS, {TAG_TIME: str(time), TAG_REL_ORBIT: int(relative_orbit[i])})
  meta = cube.meta
  with _atomic_target(site_dir / SITE_JSON) as tmp:
    tmp.write_text(json.dumps({"site_id": meta.site_id, "lon": meta.lon, "lat": meta.lat,
                               "land_cover": meta.land_cover}, indent=2))
  for stale in old - set(written):
    stale.unlink()
  return site_dir


# ---------------------------------------------------------------------------------------------
# Sentinel-2 band files (SAFE granules).
# ---------------------------------------------------------------------------------------------
def _band_files(paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, Path]:
  if isinstance(paths_or_dir, (str, os.PathLike)) and Path(paths_or_dir).is_dir():
    paths = sorted(p for p in Path(paths_or_dir).rglob("*") if _BAND_FILE.search(p.name))
  else:
    paths = [Path(p) for p in ([paths_or_dir] if isinstance(paths_or_dir, (str, os.PathLike)) else paths_or_dir)]
  chosen: dict[str, tuple[int, Path]] = {}
  for path in paths:
    match = _BAND_FILE.search(path.name)
    if not match:
      raise _error(path, "band", "file name has no Sentinel-2 band (e.g. *_B02.jp2, *_B05_20m.jp2)")
    band, resolution = match.group(1).upper(), int(match.group(2) or 0)
    if band in chosen and chosen[band][0] == resolution:
      raise _error(path, band, f"several files for this band ({chosen[band][1]})")
    if band not in chosen or resolution < chosen[band][0]:   # L2A: keep the finest of R10m/R20m/R60m
      chosen[band] = (resolution, path)
  missing = [b for b in S2_BANDS if b not in chosen]
  if missing:
    raise _error(paths_or_dir, "band", f"missing band file(s) {missing}")
  return {band: chosen[band][1] for band in S2_BANDS}


def _parse_baseline(text: str) -> tuple[int, int]:
  match = re.fullmatch(r"N?(\d{1,2})\.?(\d{2})", text.strip())
  if not match:
    raise ValueError(f"processing baseline {text!r}: expected e.g. '04.00' or 'N0400'")
  return int(match.group(1)), int(match.group(2))


def s2_dn_offset(paths: Sequence[Path], processing_baseline: str | None = None) -> float:
  """-1000 for processing baseline >= 04.00, else 0 (explicit baseline > SAFE name > acquisition date)."""
  if processing_baseline is not None:
    return S2_BOA_OFFSET if _parse_baseline(processing_baseline) >= OFFSET_BASELINE else 0.0
  for path in paths:
    match = _SAFE_BASELINE.search(str(path))
    if match:
      return S2_BOA_OFFSET if (int(match.group(1)), int(match.group(2))) >= OFFSET_BASELINE else 0.0
  for path in paths:
    match = _ACQ_DATE.search(path.name)
    if match:
      d = match.group(1)
      return S2_BOA_OFFSET if np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}") >= OFFSET_FROM_DATE else 0.0
  raise _error(paths[0], "processing baseline", "not in the path and no acquisition date in the file name; "
               "pass processing_baseline='04.00' (or older)")


def resample_to_grid(values: np.ndarray, src_transform: Sequence[float], dst_transform: Sequence[float],
                     dst_shape: tuple[int, int], method: str = "bilinear") -> np.ndarray:
  """Resamples a north-up (h, w) raster onto another grid of the same CRS, on pixel centres."""
  src_x, src_y = pixel_centre_coords(src_transform, 1, 1)
  dst_x, dst_y = pixel_centre_coords(dst_transform, *dst_shape)
  col = (dst_x - src_x[0]) / float(src_transform[0])   # in source pixels, 0 = centre of the first one
  row = (dst_y - src_y[0]) / float(src_transform[4])
  h, w = values.shape
  if col.min() < -0.5 or col.max() > w - 0.5 or row.min() < -0.5 or row.max() > h - 0.5:
    raise ValueError("destination grid is not inside the source raster")
  if method == "nearest":
    return values[np.clip(np.floor(row + 0.5), 0, h - 1).astype(int)[:, None],
                  np.clip(np.floor(col + 0.5), 0, w - 1).astype(int)[None, :]]
  if method != "bilinear":
    raise ValueError(f"resampling {method!r}: expected 'bilinear' or 'nearest'")
  r0, c0 = np.floor(row).astype(int), np.floor(col).astype(int)
  wr, wc = (row - r0)[:, None], (col - c0)[None, :]
  total, weight = np.zeros(dst_shape), np.zeros(dst_shape)
  for rows, fr in ((np.clip(r0, 0, h - 1), 1 - wr), (np.clip(r0 + 1, 0, h - 1), wr)):
    for cols, fc in ((np.clip(c0, 0, w - 1), 1 - wc), (np.clip(c0 + 1, 0, w - 1), wc)):
      corner = values[rows[:, None], cols[None, :]].astype(np.float64)
      valid = np.isfinite(corner)
      total += np.where(valid, corner, 0.0) * fr * fc
      weight += valid * fr * fc
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(weight > 0, total / weight, np.nan)   # NaN neighbours drop out (xcube's recover_nan)


def read_s2_band_files(paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike], *,
                       processing_baseline: str | None = None,
                       resampling: str = "bilinear") -> tuple[np.ndarray, str, Transform]:
  """Per-band S2 files -> (reflectance (10, h, w) float32 on the B02 grid, crs, transform)."""
  files = _band_files(paths_or_dir)
  offset = s2_dn_offset(list(files.values()), processing_baseline)
  with _open_raster(files["B02"]) as src:
    crs, transform, shape = _grid_of(src)
  reflectance = np.empty((len(S2_BANDS),) + shape, np.float32)
  for i, (band, path) in enumerate(files.items()):
    with _open_raster(path) as src:
      dn = src.read(1).astype(np.float64)
      band_crs, band_transform, band_shape = _grid_of(src)
    if band_crs != crs:
      raise _error(path, "crs", f"{band_crs} differs from {crs} of {files['B02']}")
    values = np.where(dn == 0, np.nan, (dn + offset) / S2_QUANTIFICATION)   # DN 0 = no data
    if band_transform != transform or band_shape != shape:
      try:
        values = resample_to_grid(values, band_transform, transform, shape, resampling)
      except ValueError as e:
        raise _error(path, "grid", f"{e} (10 m grid of {files['B02']})") from e
    reflectance[i] = values
  epsg = crs.to_epsg()
  return reflectance, (f"EPSG:{epsg}" if epsg else crs.to_wkt()), transform
