"""Embeddings of crops around flux towers, cached as feature cubes keyed by what produced them.

The evaluation embeds only what it uses: a crop of the site cube around the tower (the footprint plus the
7-px context border for GPP, a larger square for the per-pixel probes), with one `Engine` per embedding kept
for all sites (compiled once). Kinds: `fused` (zf), or a fused sensor's own stage-1 code (`s2`, `s1`: the
single-sensor embeddings). Dates: `clear` (the reference's clear-date windows of the crop), `daily` (any-day
windows, centre hidden, on every day with 5 merged S2 dates on each side) or a tuple of clear-window days
(a subset of the clear windows: the probe dates).
Cache: `<cache>/<site>/<kind>_<dates>_<key>.zarr` in the feature-cube format (`earthrep.io.feature_cube`),
written atomically. The key is a hash of the model and the cube fingerprints that `earthrep.embed` records
(`feature_cubes.model_fingerprint`: model_config.json and the bytes of the params it loads;
`feature_cubes.cube_fingerprint`: the cube's grid, times and arrays), the crop, the dates and the kind; it is
stored in the attribute `evaluation_key` and checked before reuse, so a retrained model, a rebuilt cube or
another crop never reuses a stale entry. An entry whose key does not match is refused unless `overwrite`.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from earthrep.data import windows as windows_lib
from earthrep.errors import EarthrepError
from earthrep.inference import engine as engine_lib
from earthrep.inference import feature_cubes
from earthrep.io import atomic, feature_cube, provenance
from earthrep.schema import CENTRE_PX, SiteCube

KINDS = ("fused", "s2", "s1")
TILE = feature_cubes.DEFAULT_TILE   # chunking of the cached crops, as earthrep.embed writes them


class CacheError(EarthrepError):
  """A cached feature cube that does not belong to this run's inputs."""


@dataclasses.dataclass(frozen=True)
class Crop:
  """A square window of the cube grid: rows r0..r0+size, cols c0..c0+size (clipped to the cube)."""
  r0: int
  c0: int
  rows: int
  cols: int

  @classmethod
  def around(cls, centre_rc: tuple[int, int], output_px: int, cube_hw: tuple[int, int]) -> "Crop":
    """The crop whose output grid (without the 7-px border) is `output_px` square around `centre_rc`."""
    side = output_px + 2 * CENTRE_PX
    r0 = int(np.clip(centre_rc[0] - side // 2, 0, max(cube_hw[0] - side, 0)))
    c0 = int(np.clip(centre_rc[1] - side // 2, 0, max(cube_hw[1] - side, 0)))
    return cls(r0, c0, min(side, cube_hw[0] - r0), min(side, cube_hw[1] - c0))

  def apply(self, cube: SiteCube) -> SiteCube:
    a, b, c, d, e, f = cube.transform
    rows, cols = slice(self.r0, self.r0 + self.rows), slice(self.c0, self.c0 + self.cols)
    return dataclasses.replace(
        cube, transform=(a, b, c + a * self.c0 + b * self.r0, d, e, f + d * self.c0 + e * self.r0),
        s2_reflectance=cube.s2_reflectance[..., rows, cols], cloud_mask=cube.cloud_mask[..., rows, cols],
        s1_gamma0=cube.s1_gamma0[..., rows, cols])


def dates_tag(dates: str | tuple) -> str:
  return dates if isinstance(dates, str) else f"days{len(dates)}"


class Embedder:
  """Computes (or reuses) the feature cube of a site crop for one embedding kind and date rule."""

  def __init__(self, model_dir: str | Path, cache_dir: str | Path, *, overwrite: bool = False,
               log: Callable[[str], None] = print):
    self.model_dir, self.cache_dir, self.overwrite, self.log = Path(model_dir), Path(cache_dir), overwrite, log
    self.model, self.params = engine_lib.load_fusion(model_dir)
    engine_lib.check_model(self.model, str(model_dir))
    self.model_key = feature_cubes.model_fingerprint(str(model_dir))
    self.engines: dict[str, engine_lib.Engine] = {}
    self.seconds: dict[str, float] = {}           # compute time per kind/dates, for the report
    self._cube_keys: dict[str, str] = {}

  def available(self, kind: str) -> bool:
    return kind == "fused" or kind in self.model.sensors

  def width(self, kind: str) -> int:
    return self._engine(kind).width

  def _engine(self, kind: str) -> engine_lib.Engine:
    if kind not in self.engines:
      self.engines[kind] = engine_lib.Engine(self.model, self.params, engine_lib.default_batch(self.model),
                                             embedding=kind)
    return self.engines[kind]

  def cube_key(self, cube: SiteCube, cube_path: str | Path) -> str:
    if str(cube_path) not in self._cube_keys:
      self._cube_keys[str(cube_path)] = feature_cubes.cube_fingerprint(cube)
    return self._cube_keys[str(cube_path)]

  def feature_cube(self, site_id: str, cube: SiteCube, cube_path: str | Path, crop: Crop, kind: str,
                   dates: str | tuple) -> feature_cube.FeatureCube:
    """The feature cube of `crop` (cached), read into memory."""
    key_parts = {"model": self.model_key, "cube": self.cube_key(cube, cube_path), "crop": dataclasses.astuple(crop),
                 "kind": kind, "dates": dates if isinstance(dates, str) else [str(d) for d in dates]}
    key = provenance.fingerprint(key_parts)
    path = self.cache_dir / site_id / f"{kind}_{dates_tag(dates)}_{key[:16]}.zarr"
    if path.exists():
      stored = feature_cube.attributes(path).get("evaluation_key")
      if stored == key:
        return feature_cube.read(path)
      if not self.overwrite:
        raise CacheError(f"{path}: attribute evaluation_key: {stored!r}, this run needs {key!r}; remove it or "
                         "pass --overwrite")
    self._compute(path, key, key_parts, cube.meta.site_id, crop.apply(cube), kind, dates)
    return feature_cube.read(path)

  def _windows(self, merged: windows_lib.Merged, dates: str | tuple) -> windows_lib.Windows:
    if dates == "daily":
      return windows_lib.anyday_windows(merged, windows_lib.daily_days(merged))
    clear = windows_lib.clear_windows(merged)
    if dates == "clear":
      return clear
    wanted = np.asarray(dates, "datetime64[D]").astype(np.int64)
    return clear.take(np.flatnonzero(np.isin(clear.target_days, wanted)))

  def _compute(self, path: Path, key: str, key_parts: dict, site_id: str, cube: SiteCube, kind: str,
               dates: str | tuple) -> None:
    tic = time.perf_counter()
    engine = self._engine(kind)
    merged = windows_lib.merge(cube, site_id, with_s1="s1" in self.model.sensors)
    windows = self._windows(merged, dates)
    h, w = cube.shape_hw
    _, ny, nx = feature_cube.output_grid(cube.transform, h, w)
    if ny <= 0 or nx <= 0:
      raise windows_lib.WindowError(f"{site_id}: crop {h}x{w} px is too small for the 7-px border")
    attrs = {"model_dir": provenance.user_path(self.model_dir), "evaluation_inputs": json.dumps(key_parts),
             "model_fingerprint": key_parts["model"], "cube_fingerprint": key_parts["cube"], "evaluation_key": key,
             "code_version": provenance.code_version(), "input_cube": site_id,
             "dates_mode": dates_tag(dates), "embedding": kind, "path": "fast",
             "created": datetime.datetime.now(datetime.UTC).isoformat(),
             "output_grid": "crop of the input cube without its 7-pixel border"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as tmp:
      feature_cube.create(tmp, crs=cube.crs, cube_transform=cube.transform, cube_hw=(h, w),
                          days=windows.target_days.astype("datetime64[D]"), width=engine.width, tile=TILE,
                          attrs=attrs, long_name=f"{kind} embedding (earthrep.evaluation)")
      if len(windows):
        for y0 in range(0, ny, TILE):
          for x0 in range(0, nx, TILE):
            ty, tx = min(TILE, ny - y0), min(TILE, nx - x0)
            local = windows_lib.Merged(
                merged.s2_thwc[:, y0:y0 + ty + 2 * CENTRE_PX, x0:x0 + tx + 2 * CENTRE_PX], merged.s2_time,
                None if merged.s1_uhwc is None else merged.s1_uhwc[:, y0:y0 + ty + 2 * CENTRE_PX,
                                                                   x0:x0 + tx + 2 * CENTRE_PX],
                merged.s1_time, merged.source)
            block = engine_lib.fast_tile(engine, local, windows, ty, tx)
            feature_cube.write_region(tmp, np.moveaxis(block, -1, 0), y0, x0)
    seconds = time.perf_counter() - tic
    tag = f"{kind}/{dates_tag(dates) if isinstance(dates, str) else 'probe dates'}"
    self.seconds[tag] = self.seconds.get(tag, 0.0) + seconds
    self.log(f"{site_id}: {kind} {dates_tag(dates)} embeddings, {len(windows)} dates x {ny}x{nx} px, "
             f"{seconds:.1f} s")
