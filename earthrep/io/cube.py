"""Site cubes on disk: the Zarr store, `read_cube` for any supported form, and `find_cubes`.

Zarr (`<site>/cube.zarr`, written by `write_zarr`): variables and dims exactly as `schema.py`, one chunk
per date holding the full tile, coordinates `x`/`y` at pixel centres, CRS and affine kept in the CF grid
mapping variable `spatial_ref` (`crs_wkt`, `spatial_ref`, `GeoTransform` "c a b f d e" in GDAL order) named
by each variable's `grid_mapping`, site metadata and `earthrep_cube_version` as dataset attributes.
`read_cube` takes a store or a site folder (its `cube.zarr`, else the GeoTIFF stack marked by `site.json`,
read by `earthrep.io.geotiff`); `find_cubes` lists the site folders of a data dir. Every reader and writer
checks the contract (`earthrep.io.cube_contract.validate_cube`) and raises `CubeError` ("<file>: <field>:
..."); writes replace their target atomically (`earthrep.io.atomic`). This module re-exports the contract's
public names, so callers need only `earthrep.io.cube`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr
import zarr
from rasterio.crs import CRS

from earthrep.io import atomic
from earthrep.io.cube_contract import (  # noqa: F401 (re-exported)
    CLOUD_CLASSES, CUBE_VERSION, GRID_MAPPING, SITE_JSON, CubeError, Transform, as_str, cube_error,
    grid_mapping_attrs, pixel_centre_coords, validate_cube)
from earthrep.io.geotiff import read_geotiff_stack, write_geotiff_stack  # noqa: F401 (re-exported)
from earthrep.schema import (
    DIM_BAND, DIM_POL, DIM_T1, DIM_T2, DIM_X, DIM_Y, S1_BANDS, S2_BANDS, VAR_CLOUD, VAR_ORBIT, VAR_REL_ORBIT,
    VAR_S1, VAR_S2, ZARR_NAME, SiteCube, SiteMeta)


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
      VAR_ORBIT: ((DIM_T1,), as_str(cube.s1_orbit_direction).astype(object)),
      VAR_REL_ORBIT: ((DIM_T1,), relative_orbit.astype(np.int16)),
  }
  coords = {
      DIM_T2: np.asarray(cube.s2_time).astype("datetime64[ns]"),
      DIM_T1: np.asarray(cube.s1_time).astype("datetime64[ns]"),
      DIM_BAND: np.array(S2_BANDS, dtype=object), DIM_POL: np.array(S1_BANDS, dtype=object),
      DIM_Y: (DIM_Y, y, {"standard_name": "projection_y_coordinate", "units": "m"}),
      DIM_X: (DIM_X, x, {"standard_name": "projection_x_coordinate", "units": "m"}),
      GRID_MAPPING: ((), np.int32(0), grid_mapping_attrs(cube.crs, cube.transform)),
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
  with atomic.atomic_path(target) as tmp:
    # Every chunk is written (even all-NaN ones) so that a missing chunk always means a truncated store.
    dataset.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, write_empty_chunks=True,
                    encoding=_zarr_encoding(cube))
  return target


def _grid_from_dataset(ds: xr.Dataset, where: Any) -> tuple[str, Transform]:
  if GRID_MAPPING not in ds.variables:
    raise cube_error(where, GRID_MAPPING, "missing grid mapping variable (CRS and transform)")
  attrs = ds[GRID_MAPPING].attrs
  wkt = attrs.get("crs_wkt") or attrs.get("spatial_ref")
  if not wkt:
    raise cube_error(where, GRID_MAPPING, "no crs_wkt / spatial_ref attribute")
  try:
    crs = CRS.from_user_input(wkt)
    c, a, b, f, d, e = (float(v) for v in str(attrs["GeoTransform"]).split())
  except Exception as err:
    raise cube_error(where, GRID_MAPPING, f"unreadable CRS or GeoTransform ({err})") from err
  transform = (a, b, c, d, e, f)
  x, y = pixel_centre_coords(transform, ds.sizes.get(DIM_Y, 0), ds.sizes.get(DIM_X, 0))
  for name, expected in ((DIM_X, x), (DIM_Y, y)):
    if name not in ds.coords or not np.allclose(ds[name].values, expected, rtol=0, atol=1e-6 * abs(a)):
      raise cube_error(where, name, "coordinates missing or not the pixel centres of the GeoTransform")
  epsg = crs.to_epsg()
  return (f"EPSG:{epsg}" if epsg else crs.to_wkt()), transform


def _names(ds: xr.Dataset, dim: str, wanted: Sequence[str], where: Any) -> list[str]:
  if dim not in ds.coords:
    raise cube_error(where, dim, "missing coordinate")
  names = [str(v) for v in ds[dim].values]
  missing = [n for n in wanted if n not in names]
  if missing:
    raise cube_error(where, dim, f"missing band(s) {missing}; found {names}")
  return list(wanted)


def _values(ds: xr.Dataset, name: str, dims: tuple[str, ...], where: Any, **select: list[str]) -> np.ndarray:
  if name not in ds.variables:
    raise cube_error(where, name, "missing variable")
  var = ds[name]
  if var.dims != dims:
    raise cube_error(where, name, f"dims {var.dims}, expected {dims}")
  try:
    return np.asarray(var.sel(select).values if select else var.values)
  except Exception as e:
    raise cube_error(where, name, f"unreadable data ({type(e).__name__}: {e})") from e


def dataset_to_cube(ds: xr.Dataset, where: Any = "dataset") -> SiteCube:
  """Inverse of `cube_to_dataset`, with validation; bands and polarisations are put in schema order."""
  for name in (VAR_S2, VAR_CLOUD, VAR_S1, VAR_ORBIT):
    if name not in ds.variables:
      raise cube_error(where, name, "missing variable")
  bands = _names(ds, DIM_BAND, S2_BANDS, where)
  pols = _names(ds, DIM_POL, S1_BANDS, where)
  s2 = _values(ds, VAR_S2, (DIM_T2, DIM_BAND, DIM_Y, DIM_X), where, **{DIM_BAND: bands})
  cloud = _values(ds, VAR_CLOUD, (DIM_T2, DIM_Y, DIM_X), where)
  s1 = _values(ds, VAR_S1, (DIM_T1, DIM_POL, DIM_Y, DIM_X), where, **{DIM_POL: pols})
  orbit = as_str(_values(ds, VAR_ORBIT, (DIM_T1,), where))
  relative_orbit = (_values(ds, VAR_REL_ORBIT, (DIM_T1,), where).astype(np.int16)
                    if VAR_REL_ORBIT in ds.variables else None)
  crs, transform = _grid_from_dataset(ds, where)
  attrs = ds.attrs
  version = attrs.get("earthrep_cube_version", CUBE_VERSION)
  if int(version) > CUBE_VERSION:
    raise cube_error(where, "earthrep_cube_version", f"{version} is newer than this reader ({CUBE_VERSION})")
  for key in ("site_id", "lon", "lat"):
    if key not in attrs:
      raise cube_error(where, key, "missing site attribute")
  meta = SiteMeta(str(attrs["site_id"]), float(attrs["lon"]), float(attrs["lat"]),
                  str(attrs.get("land_cover", "")))
  if not np.issubdtype(cloud.dtype, np.integer):
    raise cube_error(where, VAR_CLOUD, f"dtype {cloud.dtype}, expected uint8 classes")
  cube = SiteCube(meta, crs, transform, s2.astype(np.float32), cloud.astype(np.uint8),
                  _time_values(ds, DIM_T2, where), s1.astype(np.float32), _time_values(ds, DIM_T1, where),
                  orbit, relative_orbit)
  validate_cube(cube, where)
  return cube


def _time_values(ds: xr.Dataset, dim: str, where: Any) -> np.ndarray:
  if dim not in ds.coords:
    raise cube_error(where, dim, "missing time coordinate")
  times = np.asarray(ds[dim].values)
  if not np.issubdtype(times.dtype, np.datetime64):
    raise cube_error(where, dim, f"dtype {times.dtype}, expected datetime64 (CF time units)")
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
          raise cube_error(where, name, f"truncated store: {array.nchunks - array.nchunks_initialized} of "
                       f"{array.nchunks} chunks missing")
  except CubeError:
    raise
  except Exception as e:
    raise cube_error(where, "store", f"unreadable Zarr store ({type(e).__name__}: {e})") from e


def _read_zarr(store: Path) -> SiteCube:
  if not store.is_dir():
    raise cube_error(store, "store", "is a file, not a Zarr store (a directory)" if store.exists() else
                     "does not exist")
  try:
    ds = xr.open_zarr(store, consolidated=False, chunks=None)
  except Exception as e:
    raise cube_error(store, "store", f"unreadable Zarr store ({type(e).__name__}: {e})") from e
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
  raise cube_error(path, "cube", f"no {ZARR_NAME} and no {SITE_JSON} (GeoTIFF stack) found")


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
    raise cube_error(path, "cubes", f"no site cubes found (expected <site>/{ZARR_NAME} or <site>/{SITE_JSON} "
                 f"under {root})")
  return sites

