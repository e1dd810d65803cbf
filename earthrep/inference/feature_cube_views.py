"""Views of a finished feature cube: one GeoTIFF per date and a PCA quick-look PNG.

`write_geotiffs(store, DIR)` writes one COG per date (`<YYYY-MM-DD>.tif`, one band per feature; a tiled
GeoTIFF with overviews where GDAL has no COG driver), each atomically; `write_quicklook(store, cube, DATE,
png)` the PCA (3 components) of that date's embedding beside the S2 true-colour image; `best_date(store)`
is the date with the most valid embeddings (the quick-look's `auto`). `earthrep.inference.feature_cubes`
checks their targets before a run and calls them once the store is complete.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from earthrep.io import atomic, feature_cube
from earthrep.schema import CENTRE_PX


def write_geotiffs(store: Path, out_dir: str) -> list[Path]:
  """One COG (or tiled GeoTIFF with overviews) per date, one band per feature, each written atomically."""
  import rasterio
  from affine import Affine
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  fc = feature_cube.read(store)
  transform = Affine(*fc.transform)
  cog = _has_driver("COG")
  written = []
  for i, t in enumerate(fc.time):
    data = fc.values_fthw[:, i]
    path = out / f"{np.datetime_as_string(t, unit='D')}.tif"
    profile = dict(driver="COG" if cog else "GTiff", width=data.shape[2], height=data.shape[1],
                   count=data.shape[0], dtype="float32", crs=fc.crs_wkt, transform=transform, nodata=np.nan,
                   compress="deflate")
    if not cog:
      profile.update(tiled=True, blockxsize=256, blockysize=256)
    with atomic.atomic_path(path) as tmp:
      with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = tuple(fc.names)
        if not cog:
          dst.build_overviews([2, 4, 8])
    written.append(path)
  return written


def best_date(store: Path) -> str:
  """The ISO date of the store's time step with the most valid embeddings (the quick-look's `auto`)."""
  fc = feature_cube.read(store)
  counts = np.isfinite(fc.values_fthw[0]).sum(axis=(1, 2))
  return str(fc.time[int(np.argmax(counts))].astype("datetime64[D]"))


def _has_driver(name: str) -> bool:
  import rasterio
  with rasterio.Env() as env:
    return name in env.drivers()


def write_quicklook(store: Path, cube, date: str, png: Path) -> Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fc = feature_cube.read(store)
  day = np.datetime64(date, "D")
  i = int(np.argmin(np.abs(fc.time.astype("datetime64[D]") - day).astype(np.int64)))
  z_fyx = fc.values_fthw[:, i]
  f, ny, nx = z_fyx.shape
  flat = z_fyx.reshape(f, -1).T
  ok = np.isfinite(flat).all(axis=1)
  rgb = np.zeros((ny * nx, 3))
  if ok.sum() >= 3:
    centred = flat[ok] - flat[ok].mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    pcs = centred @ vt[:3].T
    lo, hi = np.percentile(pcs, 2, axis=0), np.percentile(pcs, 98, axis=0)
    rgb[ok, :pcs.shape[1]] = np.clip((pcs - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
  j = int(np.argmin(np.abs(cube.s2_time.astype("datetime64[D]") - day).astype(np.int64)))
  tc = np.moveaxis(cube.s2_reflectance[j, [2, 1, 0], CENTRE_PX:-CENTRE_PX, CENTRE_PX:-CENTRE_PX], 0, -1)
  finite = tc[np.isfinite(tc)]
  lo, hi = (np.percentile(finite, 2), np.percentile(finite, 98)) if finite.size else (0.0, 1.0)
  tc = np.nan_to_num(np.clip((tc - lo) / max(hi - lo, 1e-12), 0, 1))
  fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
  axes[0].imshow(rgb.reshape(ny, nx, 3))
  axes[0].set_title(f"embedding PCA {np.datetime_as_string(fc.time[i], unit='D')}")
  axes[1].imshow(tc)
  axes[1].set_title(f"S2 B04/B03/B02 {np.datetime_as_string(cube.s2_time[j], unit='D')}")
  for ax in axes:
    ax.axis("off")
  fig.tight_layout()
  with atomic.atomic_path(png) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
  plt.close(fig)
  return png
