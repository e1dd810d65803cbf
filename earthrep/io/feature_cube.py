"""The feature-cube format: one schema for the writer (`earthrep.inference.feature_cubes`) and every reader.

A feature cube is a Zarr store (xarray-readable) holding
  `features` float32 (feature, time, y, x): the embedding of every pixel and target day, NaN where there is
             none; chunks (all features, all times, tile, tile); attribute `grid_mapping` = `spatial_ref`;
  coords     `feature` (F01, F02, ...), `time` (the target days at 00:00 UTC, datetime64[ns]), `x`/`y` (UTM
             pixel centres in metres) and the CF grid-mapping scalar `spatial_ref` (crs_wkt, spatial_ref,
             GeoTransform of the output grid, as `earthrep.io.cube_contract.grid_mapping_attrs` writes);
  attrs      provenance (see the writer) and `Conventions`.
The output grid is the input cube's grid without its `BORDER_PX` border (patch centres need 7 px of
context on each side). `create` writes an empty store of that shape, `write_region` one tile's block, and
`read` returns a `FeatureCube`. Readers accept stores without `feature` names or `spatial_ref` (older
outputs and other tools) and name the features F01.. themselves.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from earthrep.errors import EarthrepError
from earthrep.io.cube_contract import GRID_MAPPING, grid_mapping_attrs, pixel_centre_coords
from earthrep.schema import CENTRE_PX

FEATURES = "features"
DIMS = ("feature", "time", "y", "x")
BORDER_PX = CENTRE_PX


class FeatureCubeError(EarthrepError):
  """A feature cube that cannot be read; the message names the store and the field."""


def feature_names(n: int) -> list[str]:
  return [f"F{i + 1:02d}" for i in range(n)]


def output_grid(transform: Sequence[float], h: int, w: int) -> tuple[tuple[float, ...], int, int]:
  """(affine, rows, cols) of the output grid of a cube grid (h, w) with affine `transform`."""
  a, b, c, d, e, f = (float(v) for v in transform)
  return (a, b, c + BORDER_PX * a, d, e, f + BORDER_PX * e), h - 2 * BORDER_PX, w - 2 * BORDER_PX


def create(store: str | Path, *, crs: str, cube_transform: Sequence[float], cube_hw: tuple[int, int],
           days: np.ndarray, width: int, tile: int, attrs: dict[str, Any], long_name: str) -> None:
  """Writes the empty store (NaN, no chunk data) for `days` (datetime64 or int days) x the output grid."""
  import dask.array as da
  import xarray as xr
  transform, ny, nx = output_grid(cube_transform, *cube_hw)
  x, y = pixel_centre_coords(transform, ny, nx)
  values = da.full((width, len(days), ny, nx), np.nan, dtype=np.float32,
                   chunks=(width, max(len(days), 1), tile, tile))
  times = np.asarray(days).astype("datetime64[D]").astype("datetime64[ns]")
  ds = xr.Dataset(
      {FEATURES: (DIMS, values, {"grid_mapping": GRID_MAPPING, "long_name": long_name})},
      coords={"feature": np.array(feature_names(width), dtype=object), "time": times,
              "y": ("y", y, {"standard_name": "projection_y_coordinate", "units": "m"}),
              "x": ("x", x, {"standard_name": "projection_x_coordinate", "units": "m"}),
              GRID_MAPPING: ((), np.int32(0), grid_mapping_attrs(crs, transform))},
      attrs={**attrs, "Conventions": "CF-1.8"})
  ds.to_zarr(store, mode="w", compute=False, consolidated=False,
             encoding={FEATURES: {"chunks": values.chunksize, "_FillValue": np.float32(np.nan)}})


def write_region(store: str | Path, block_ftyx: np.ndarray, y0: int, x0: int) -> None:
  """Writes a (feature, time, ty, tx) block at output pixel (y0, x0) into an existing store."""
  import zarr
  array = zarr.open_array(Path(store) / FEATURES, mode="r+")
  array[:, :, y0:y0 + block_ftyx.shape[2], x0:x0 + block_ftyx.shape[3]] = block_ftyx


def attributes(store: str | Path) -> dict[str, Any]:
  import zarr
  return dict(zarr.open_group(store, mode="r").attrs)


@dataclasses.dataclass
class FeatureCube:
  time: np.ndarray          # (t,) datetime64[ns]
  values_fthw: np.ndarray   # (f, t, h, w) float32, NaN = no embedding
  x: np.ndarray             # (w,) pixel-centre eastings
  y: np.ndarray             # (h,) pixel-centre northings
  names: list[str]
  crs_wkt: str              # '' when the store has no grid mapping
  transform: tuple[float, ...] | None   # affine (a, b, c, d, e, f) of the pixel corners; None without one
  attrs: dict[str, Any]


def read(path: str | Path) -> FeatureCube:
  """Reads a whole feature cube into memory."""
  import xarray as xr
  path = Path(path)
  try:
    ds = xr.open_zarr(path, consolidated=False, chunks=None)
  except Exception as e:
    raise FeatureCubeError(f"{path}: store: not a readable feature cube ({type(e).__name__}: {e})") from e
  with ds:
    if FEATURES not in ds:
      raise FeatureCubeError(f"{path}: {FEATURES}: variable missing (have {list(ds.data_vars)})")
    missing = [d for d in DIMS if d not in ds[FEATURES].dims]
    if missing:
      raise FeatureCubeError(f"{path}: {FEATURES}: dims {ds[FEATURES].dims} lack {missing}")
    values = ds[FEATURES].transpose(*DIMS)
    names = ([str(v) for v in values["feature"].values] if "feature" in values.coords
             else feature_names(values.shape[0]))
    crs, transform = "", None
    if GRID_MAPPING in ds.variables:
      gm = ds[GRID_MAPPING].attrs
      crs = gm.get("crs_wkt", gm.get("spatial_ref", ""))
      if "GeoTransform" in gm:
        c, a, b, f, d, e = (float(v) for v in str(gm["GeoTransform"]).split())
        transform = (a, b, c, d, e, f)
    return FeatureCube(np.asarray(values["time"].values, "datetime64[ns]"), np.asarray(values.values, np.float32),
                       np.asarray(values["x"].values, float), np.asarray(values["y"].values, float), names, crs,
                       transform, dict(ds.attrs))
