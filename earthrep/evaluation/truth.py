"""What the evaluation knows beyond the cubes and flux files: a simulator's truth, or a label raster.

`SiteTruth` holds, for one site and on the site cube's grid, whatever is known: the noise-free daily tower
GPP and footprint fAPAR (ceilings of the GPP evaluation), per-pixel land-cover kind and parcel (probes and
the boundary contrast), and per-pixel values on any day (green cover, vegetation water content, surface soil
moisture: regression probes). Every field may be None. Two sources fill it:
* the demo world: `data_prep.demo_world.evaluation_truth(world_dir)` re-simulates a site from its
  `world.json` (truth is never written into cubes or shards); `earthrep.evaluate` loads it by name when the
  world names that generator, and checks it against the site's flux file (`check_against_flux`);
* real cubes: `label_truth(raster, cube)` samples a label GeoTIFF (`--labels FILE.tif`, or a folder of
  `<site_id>.tif`; integer classes, 0 and the nodata value = unknown; any CRS, nearest pixel) at the cube's
  pixel centres: kinds and parcels (class boundaries) only. Class names come from a sidecar
  `FILE.tif.json` ({"1": "crop", ...}) if present, else the class numbers. Rasters with different classes
  must share the class numbers (the kinds are the union of the numbers present and named).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from earthrep.errors import EarthrepError
from earthrep.io.cube import pixel_centre_coords
from earthrep.schema import SiteCube

# Per-pixel values a truth may provide, with units (regression probes).
PIXEL_VALUES = {"green_cover": "fraction", "vegetation_water_content": "kg m-2",
                "surface_soil_moisture": "m3 m-3"}


class TruthError(EarthrepError):
  """A truth source that does not match the data it should describe."""


@dataclasses.dataclass
class SiteTruth:
  site_id: str
  days: pd.DatetimeIndex | None = None     # daily axis of gpp and fapar
  gpp: np.ndarray | None = None            # (D,) noise-free tower GPP, gC m-2 d-1
  fapar: np.ndarray | None = None          # (D,) footprint fAPAR
  kind: np.ndarray | None = None           # (h, w) int index into kind_names, -1 unknown
  kind_names: tuple[str, ...] = ()
  parcel: np.ndarray | None = None         # (h, w) int parcel (or class) id, -1 unknown
  # days (datetime64[D], (n,)) -> {name in PIXEL_VALUES: (n, h, w)}
  pixel_values: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None
  flux_gpp: np.ndarray | None = None       # (D,) GPP_NT_VUT_REF the simulator wrote, for the check
  source: str = ""
  class_names: dict[int, str] = dataclasses.field(default_factory=dict)   # labels: raster class -> name

  def daily(self, name: str, days: pd.DatetimeIndex) -> np.ndarray:
    """`gpp` or `fapar` on `days` (NaN outside the truth's days)."""
    values = getattr(self, name)
    if values is None or self.days is None:
      return np.full(len(days), np.nan)
    return pd.Series(values, index=self.days).reindex(days).to_numpy(np.float64)


TruthProvider = Callable[[str, SiteCube], SiteTruth]


def check_against_flux(truth: SiteTruth, flux_days: pd.DatetimeIndex, flux_gpp: np.ndarray, where: str) -> None:
  """Raises TruthError unless the simulator's own flux GPP equals the file's (the world was re-simulated
  with the arguments that made it); the file has 4 decimals."""
  if truth.flux_gpp is None or truth.days is None:
    return
  simulated = pd.Series(truth.flux_gpp, index=truth.days).reindex(flux_days).to_numpy(np.float64)
  both = np.isfinite(simulated) & np.isfinite(flux_gpp)
  if not both.any() or np.max(np.abs(simulated[both] - flux_gpp[both])) > 1e-3:
    raise TruthError(f"{where}: column GPP_NT_VUT_REF: differs from a re-simulation of {truth.site_id} with "
                     f"{truth.source}; the world was not made with these arguments, so its truth is unknown")


def _label_names(raster: Path) -> dict[int, str]:
  sidecar = raster.with_name(raster.name + ".json")
  if not sidecar.exists():
    return {}
  try:
    return {int(k): str(v) for k, v in json.loads(sidecar.read_text()).items()}
  except (ValueError, AttributeError) as e:
    raise TruthError(f"{sidecar}: expected a JSON object of class number -> name ({e})") from e


def label_truth(raster: str | Path, cube: SiteCube, site_id: str) -> SiteTruth:
  """Kinds and parcels from an integer label GeoTIFF sampled at the cube's pixel centres."""
  import rasterio
  import rasterio.warp
  raster = Path(raster)
  try:
    dataset = rasterio.open(raster)
  except rasterio.errors.RasterioIOError as e:
    raise TruthError(f"--labels {raster}: not a readable GeoTIFF ({e})") from e
  with dataset:
    if dataset.crs is None:
      raise TruthError(f"--labels {raster}: crs: the label raster has no CRS")
    h, w = cube.shape_hw
    x, y = pixel_centre_coords(cube.transform, h, w)
    xx, yy = np.meshgrid(x, y)
    xs, ys = rasterio.warp.transform(cube.crs, dataset.crs, xx.ravel(), yy.ravel())
    rows, cols = rasterio.transform.rowcol(dataset.transform, xs, ys)
    rows, cols = np.asarray(rows), np.asarray(cols)
    inside = (rows >= 0) & (rows < dataset.height) & (cols >= 0) & (cols < dataset.width)
    band = dataset.read(1)
    if not np.issubdtype(band.dtype, np.integer):
      raise TruthError(f"--labels {raster}: band 1: dtype {band.dtype}; expected integer classes")
    labels = np.full(h * w, -1, np.int64)
    labels[inside] = band[rows[inside], cols[inside]]
    unknown = labels == 0
    if dataset.nodata is not None:
      unknown |= labels == int(dataset.nodata)
    labels[unknown] = -1
  return SiteTruth(site_id, kind=labels.reshape(h, w), parcel=labels.reshape(h, w),
                   source=f"labels {raster.name}", class_names=_label_names(raster))


def harmonise_labels(truths: list[SiteTruth]) -> None:
  """Label truths hold raster class numbers as kinds; this makes them indices into one list of kinds shared
  by every site (the union of the classes present and named), so probes compare like with like."""
  names: dict[int, str] = {}
  for truth in truths:
    names.update(truth.class_names)
  classes = sorted(set().union(*[set(np.unique(t.kind[t.kind >= 0]).tolist()) for t in truths]) | set(names))
  index = {c: i for i, c in enumerate(classes)}
  for truth in truths:
    lookup = np.vectorize(lambda v: index.get(int(v), -1), otypes=[np.int64])
    truth.kind = lookup(truth.kind) if truth.kind.size else truth.kind
    truth.kind_names = tuple(names.get(c, str(c)) for c in classes)
