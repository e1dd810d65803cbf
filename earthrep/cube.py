"""Site-cube I/O: the Zarr store of `schema.py`, the contract checks and the `read_cube` dispatch.

Zarr (`<site>/cube.zarr`, written by `write_zarr`): variables and dims exactly as `schema.py`, one chunk
per date holding the full tile, coordinates `x`/`y` at pixel centres, CRS and affine kept in the CF grid
mapping variable `spatial_ref` (`crs_wkt`, `spatial_ref`, `GeoTransform` "c a b f d e" in GDAL order) named
by each variable's `grid_mapping`, site metadata and `earthrep_cube_version` as dataset attributes.
`read_cube` takes a store or a site folder (its `cube.zarr`, else the GeoTIFF stack marked by `site.json`);
`find_cubes` lists the site folders of a data dir. Every reader and writer checks the contract with
`validate_cube` and raises `CubeError` ("<file>: <field>: ..."); writes replace their target atomically.
GeoTIFF/COG stacks and per-band Sentinel-2 files (SAFE granules, 20 m -> 10 m resampling) live in
`earthrep.geotiff`, which builds on this module.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import xarray as xr
import zarr
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
SITE_JSON = "site.json"   # marks a GeoTIFF stack site folder (see geotiff.py)

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
    from earthrep.geotiff import read_geotiff_stack   # here, not on top: geotiff.py imports this module
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

