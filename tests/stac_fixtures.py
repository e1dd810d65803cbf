"""A local static STAC catalogue of COGs made from demo cubes, for build_cubes tests (no network).

S2 items alternate Earth Search asset keys (blue, ..., scl) and Planetary Computer keys (B02, ..., SCL);
DNs are uint16 reflectance * 10000 (+1000 from processing baseline 04.00), 20 m bands and SCL at 20 m
(2x2 block mean / top-left), raster:bands scale, proj:epsg/transform/shape, s2:processing_baseline
(left out on some items so the date rule decides). S1 items carry vv/vh float32 COGs and sat:orbit_state,
sat:relative_orbit. SCL is derived from the demo cloud mask: clear -> 4 (vegetation), thick -> 9,
thin -> 10, shadow -> 3, nodata -> 0.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Sequence

import numpy as np
import pystac
import rasterio
import rasterio.warp
from affine import Affine

from earthrep.schema import S2_20M_BANDS, S2_BANDS, SiteCube

ES_KEYS = {"B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2", "B07": "rededge3",
           "B08": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22", "SCL": "scl"}
PC_KEYS = {**{b: b for b in S2_BANDS}, "SCL": "SCL"}
CLOUD_TO_SCL = np.zeros(256, np.uint8)
CLOUD_TO_SCL[[0, 1, 2, 3, 255]] = [4, 9, 10, 3, 0]
OFFSET_DATE = np.datetime64("2022-01-25")


def _write_cog(path: Path, data: np.ndarray, crs: str, transform: Affine, nodata: float) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with rasterio.open(path, "w", driver="COG", width=data.shape[1], height=data.shape[0], count=1,
                     dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
    dst.write(data, 1)


def _block(values: np.ndarray, how: str) -> np.ndarray:
  h, w = values.shape
  if how == "first":
    return values[::2, ::2]
  return np.nanmean(values[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2), axis=(1, 3))


def _lonlat_bbox(crs: str, transform: Affine, h: int, w: int) -> list[float]:
  left, top = transform.c, transform.f
  right, bottom = left + transform.a * w, top + transform.e * h
  return list(rasterio.warp.transform_bounds(crs, "EPSG:4326", left, bottom, right, top))


def _item(item_id: str, time: np.datetime64, bbox: list[float], collection: str, props: dict) -> pystac.Item:
  stamp = dt.datetime.fromisoformat(str(np.datetime64(time, "us"))).replace(tzinfo=dt.timezone.utc)
  geometry = {"type": "Polygon", "coordinates": [[[bbox[0], bbox[1]], [bbox[2], bbox[1]], [bbox[2], bbox[3]],
                                                  [bbox[0], bbox[3]], [bbox[0], bbox[1]]]]}
  item = pystac.Item(item_id, geometry, bbox, stamp, dict(props), collection=collection)
  return item


def _asset(path: Path, crs: str, transform: Affine, shape: tuple[int, int], raster: dict) -> pystac.Asset:
  return pystac.Asset(str(path), media_type=pystac.MediaType.COG, roles=["data"],
                      extra_fields={"proj:epsg": int(crs.split(":")[1]), "proj:transform": list(transform)[:6],
                                    "proj:shape": list(shape), "raster:bands": [raster]})


def s2_items(cube: SiteCube, root: Path, prefix: str, *, scl_override: int | None = None,
             baseline_missing_every: int = 5, keys_cycle: Sequence[dict] = (ES_KEYS, PC_KEYS)) -> list[pystac.Item]:
  """One item per S2 date of `cube`, COGs under root/prefix/."""
  crs, transform = cube.crs, Affine(*cube.transform)
  h, w = cube.shape_hw
  t20 = transform * Affine.scale(2)
  bbox = _lonlat_bbox(crs, transform, h, w)
  items = []
  for i, time in enumerate(cube.s2_time):
    after = np.datetime64(time, "D") >= OFFSET_DATE
    keys = keys_cycle[i % len(keys_cycle)]
    props = {"eo:cloud_cover": float(np.mean(cube.cloud_mask[i] != 0) * 100), "platform": "sentinel-2a"}
    if baseline_missing_every == 0 or i % baseline_missing_every:
      props["s2:processing_baseline"] = "04.00" if after else "02.14"
    item = _item(f"{prefix}-S2-{i:03d}", time, bbox, "sentinel-2-l2a", props)
    for b_index, band in enumerate(S2_BANDS):
      refl = cube.s2_reflectance[i, b_index]
      coarse = band in S2_20M_BANDS
      values = _block(refl, "mean") if coarse else refl
      dn = np.where(np.isfinite(values), np.clip(np.rint(values * 10000) + (1000 if after else 0), 1, 65535), 0)
      path = root / prefix / f"{i:03d}" / f"{band}.tif"
      _write_cog(path, dn.astype(np.uint16), crs, t20 if coarse else transform, 0)
      item.add_asset(keys[band], _asset(path, crs, t20 if coarse else transform, dn.shape,
                                        {"nodata": 0, "data_type": "uint16", "scale": 0.0001,
                                         "offset": -0.1 if after else 0.0}))
    scl = CLOUD_TO_SCL[cube.cloud_mask[i]] if scl_override is None else np.full((h, w), scl_override, np.uint8)
    scl = _block(scl, "first")
    path = root / prefix / f"{i:03d}" / "SCL.tif"
    _write_cog(path, scl, crs, t20, 0)
    item.add_asset(keys["SCL"], _asset(path, crs, t20, scl.shape, {"nodata": 0, "data_type": "uint8"}))
    items.append(item)
  return items


def s1_items(cube: SiteCube, root: Path, prefix: str) -> list[pystac.Item]:
  crs, transform = cube.crs, Affine(*cube.transform)
  h, w = cube.shape_hw
  bbox = _lonlat_bbox(crs, transform, h, w)
  items = []
  for i, time in enumerate(cube.s1_time):
    props = {"sat:orbit_state": str(cube.s1_orbit_direction[i]),
             "sat:relative_orbit": int(cube.s1_relative_orbit[i]), "sar:polarizations": ["VV", "VH"]}
    item = _item(f"{prefix}-S1-{i:03d}", time, bbox, "sentinel-1-rtc", props)
    for p_index, pol in enumerate(("vv", "vh")):
      values = np.where(np.isfinite(cube.s1_gamma0[i, p_index]), cube.s1_gamma0[i, p_index], -32768)
      path = root / prefix / "s1" / f"{i:03d}" / f"{pol}.tif"
      _write_cog(path, values.astype(np.float32), crs, transform, -32768)
      item.add_asset(pol, _asset(path, crs, transform, (h, w), {"nodata": -32768, "data_type": "float32"}))
    items.append(item)
  return items


def write_catalog(root: Path, items: Sequence[pystac.Item]) -> Path:
  """Saves a self-contained static catalogue at root/stac/catalog.json (asset hrefs made relative)."""
  catalog = pystac.Catalog("test-catalog", "local STAC for build_cubes tests")
  catalog.add_items(items)
  catalog.normalize_hrefs(str(root / "stac"))
  catalog.make_all_asset_hrefs_relative()
  catalog.save(pystac.CatalogType.SELF_CONTAINED)
  return root / "stac" / "catalog.json"
