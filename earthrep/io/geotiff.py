"""GeoTIFF/COG site stacks and per-band Sentinel-2 files, read into (and written from) a `SiteCube`.

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
Errors: a bad file name, missing band, unreadable or corrupt raster, grid mismatch, or a stack that fails
`validate_cube` (checked on read and on write) raises `CubeError` ("<file>: <field>: ..."); a malformed
`processing_baseline` raises a plain ValueError, as does `resample_to_grid` on its own. The writer refuses
an existing stack without `overwrite=True` (FileExistsError) and replaces each file atomically.
The contract checks are in `cube_contract.py`; the Zarr store and `read_cube` (which dispatches here for a
site folder with `site.json`) in `cube.py`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from earthrep.io import atomic
from earthrep.io.cube_contract import (
    CLOUD_CLASSES, SITE_JSON, CubeError, Transform, cube_error, pixel_centre_coords, validate_cube)
from earthrep.schema import (
    CLOUD_NODATA, S1_BANDS, S2_BANDS, VAR_CLOUD, VAR_ORBIT, VAR_S2, SiteCube, SiteMeta)

S2_QUANTIFICATION, S2_BOA_OFFSET = 10000.0, -1000.0
OFFSET_BASELINE, OFFSET_FROM_DATE = (4, 0), np.datetime64("2022-01-25")
S2_DIR, S1_DIR, MASK_SUFFIX, MASK_BAND = "s2", "s1", "_mask", "cloud_mask"
TAG_TIME, TAG_REL_ORBIT = "ACQUISITION_TIME", "RELATIVE_ORBIT"
_ORBIT_ABBREV = {"asc": "ascending", "desc": "descending", "ascending": "ascending",
                 "descending": "descending"}
_S2_NAME = re.compile(r"^(\d{8}T\d{6})$")
_S1_NAME = re.compile(r"^(\d{8}T\d{6})_([A-Za-z]+)$")
_BAND_FILE = re.compile(r"_(B(?:0[1-9]|1[0-2]|8A))(?:_(\d+)m)?\.(?:jp2|tiff?)$", re.IGNORECASE)
_SAFE_BASELINE = re.compile(r"_N(\d{2})(\d{2})(?=[_.]|$)")
_ACQ_DATE = re.compile(r"(\d{8})T\d{6}")


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
    raise cube_error(path, "raster", f"unreadable ({type(e).__name__}: {e})") from e


def _grid_of(src: Any) -> tuple[CRS, Transform, tuple[int, int]]:
  return src.crs, tuple(src.transform)[:6], (src.height, src.width)


def _check_same_grid(path: Path, grid: tuple, ref_path: Path, ref_grid: tuple) -> None:
  (crs, transform, shape), (ref_crs, ref_transform, ref_shape) = grid, ref_grid
  if crs != ref_crs:
    raise cube_error(path, "crs", f"{crs} differs from {ref_crs} of {ref_path} (S1 and S2 must share one grid)")
  if shape != ref_shape or not np.allclose(transform, ref_transform, rtol=0, atol=1e-6):
    raise cube_error(path, "transform", f"grid {transform} {shape} differs from {ref_transform} {ref_shape} of "
                 f"{ref_path} (S1 and S2 must share one grid)")


def _band_indexes(src: Any, path: Path, wanted: Sequence[str]) -> list[int]:
  names = [d or "" for d in src.descriptions]
  missing = [b for b in wanted if b not in names]
  if missing:
    raise cube_error(path, "band", f"missing band(s) {missing}; band descriptions are {names}")
  return [names.index(b) + 1 for b in wanted]


def _read_float_bands(src: Any, path: Path, indexes: list[int]) -> np.ndarray:
  data = src.read(indexes, out_dtype=np.float32)
  if src.nodata is not None and not np.isnan(src.nodata):
    data[data == src.nodata] = np.nan
  return data


def _mask_classes(values: np.ndarray, path: Path) -> np.ndarray:
  values = np.where(np.isnan(values), CLOUD_NODATA, values) if values.dtype.kind == "f" else values
  if not np.isin(values, CLOUD_CLASSES).all():
    raise cube_error(path, VAR_CLOUD, f"values {np.setdiff1d(np.unique(values), CLOUD_CLASSES)[:5].tolist()} "
                 f"are not cloud classes {CLOUD_CLASSES}")
  return values.astype(np.uint8)


def _time_of(src: Any, stamp: str, path: Path) -> np.datetime64:
  named = np.datetime64(f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:11]}:{stamp[11:13]}:{stamp[13:15]}", "ns")
  tag = src.tags().get(TAG_TIME)
  if tag is None:
    return named
  exact = np.datetime64(tag, "ns")
  if abs(int((exact - named).astype(np.int64))) >= 1_000_000_000:
    raise cube_error(path, TAG_TIME, f"{tag} disagrees with the file name {stamp}")
  return exact


def _read_s2_file(path: Path) -> tuple[np.datetime64, np.ndarray, np.ndarray, tuple]:
  match = _S2_NAME.match(path.stem)
  if not match:
    raise cube_error(path, "file name", "expected s2/<YYYYMMDDTHHMMSS>.tif")
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
      raise cube_error(path, VAR_CLOUD, f"no band described {MASK_BAND!r} and no {mask_path.name}")
    with _open_raster(mask_path) as src:
      _check_same_grid(mask_path, _grid_of(src), path, grid)
      mask, path = src.read(1), mask_path
  return time, reflectance, _mask_classes(mask, path), grid


def _read_s1_file(path: Path) -> tuple[np.datetime64, np.ndarray, str, int, tuple]:
  match = _S1_NAME.match(path.stem)
  if not match:
    raise cube_error(path, "file name", "expected s1/<YYYYMMDDTHHMMSS>_<asc|desc>.tif")
  direction = _ORBIT_ABBREV.get(match.group(2).lower())
  if direction is None:
    raise cube_error(path, VAR_ORBIT, f"unknown orbit direction {match.group(2)!r}, expected asc or desc")
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
    raise cube_error(site_dir / SITE_JSON, "site metadata", f"unreadable or incomplete ({type(e).__name__}: {e})") from e
  s2_files = [p for p in _tifs(site_dir / S2_DIR) if not p.stem.endswith(MASK_SUFFIX)]
  s1_files = _tifs(site_dir / S1_DIR)
  if not s2_files:
    raise cube_error(site_dir / S2_DIR, VAR_S2, "no S2 GeoTIFF found")
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
  with atomic.atomic_path(path) as tmp:
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
    raise cube_error(site_dir, "time", "two acquisitions in the same second: their file names would collide")
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
  with atomic.atomic_path(site_dir / SITE_JSON) as tmp:
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
      raise cube_error(path, "band", "file name has no Sentinel-2 band (e.g. *_B02.jp2, *_B05_20m.jp2)")
    band, resolution = match.group(1).upper(), int(match.group(2) or 0)
    if band in chosen and chosen[band][0] == resolution:
      raise cube_error(path, band, f"several files for this band ({chosen[band][1]})")
    if band not in chosen or resolution < chosen[band][0]:   # L2A: keep the finest of R10m/R20m/R60m
      chosen[band] = (resolution, path)
  missing = [b for b in S2_BANDS if b not in chosen]
  if missing:
    raise cube_error(paths_or_dir, "band", f"missing band file(s) {missing}")
  return {band: chosen[band][1] for band in S2_BANDS}


def parse_baseline(text: str) -> tuple[int, int]:
  match = re.fullmatch(r"N?(\d{1,2})\.?(\d{2})", text.strip())
  if not match:
    raise ValueError(f"processing baseline {text!r}: expected e.g. '04.00' or 'N0400'")
  return int(match.group(1)), int(match.group(2))


def s2_dn_offset(paths: Sequence[Path], processing_baseline: str | None = None) -> float:
  """-1000 for processing baseline >= 04.00, else 0 (explicit baseline > SAFE name > acquisition date)."""
  if processing_baseline is not None:
    return S2_BOA_OFFSET if parse_baseline(processing_baseline) >= OFFSET_BASELINE else 0.0
  for path in paths:
    match = _SAFE_BASELINE.search(str(path))
    if match:
      return S2_BOA_OFFSET if (int(match.group(1)), int(match.group(2))) >= OFFSET_BASELINE else 0.0
  for path in paths:
    match = _ACQ_DATE.search(path.name)
    if match:
      d = match.group(1)
      return S2_BOA_OFFSET if np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}") >= OFFSET_FROM_DATE else 0.0
  raise cube_error(paths[0], "processing baseline", "not in the path and no acquisition date in the file name; "
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
      raise cube_error(path, "crs", f"{band_crs} differs from {crs} of {files['B02']}")
    values = np.where(dn == 0, np.nan, (dn + offset) / S2_QUANTIFICATION)   # DN 0 = no data
    if band_transform != transform or band_shape != shape:
      try:
        values = resample_to_grid(values, band_transform, transform, shape, resampling)
      except ValueError as e:
        raise cube_error(path, "grid", f"{e} (10 m grid of {files['B02']})") from e
    reflectance[i] = values
  epsg = crs.to_epsg()
  return reflectance, (f"EPSG:{epsg}" if epsg else crs.to_wkt()), transform
