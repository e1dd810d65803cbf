"""Cube I/O: Zarr and GeoTIFF round trips, atomic writes, one test per kind of bad input, real S2 band files."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage

from earthrep.io import atomic
from earthrep.io import cube as cube_io
from earthrep.io import geotiff
from earthrep.io.cube import CubeError
from earthrep.schema import S1_BANDS, S2_BANDS, ZARR_NAME, SiteCube, SiteMeta

T33UUU = Path(__file__).parent / "data" / "t33uuu"
T33UUU_STEM = "T33UUU_20170216T102101"
T33UUU_TRANSFORM = (10.0, 0.0, 331920.0, 0.0, -10.0, 5818200.0)


def make_cube(t2: int = 4, t1: int = 5, h: int = 6, w: int = 7, seed: int = 0) -> SiteCube:
  rng = np.random.default_rng(seed)
  s2_reflectance = rng.uniform(0.0, 0.6, (t2, len(S2_BANDS), h, w)).astype(np.float32)
  s2_reflectance[1, :, 0, 0] = np.nan
  s2_reflectance[-1, 3, 1, 1] = np.nan
  cloud_mask = rng.choice(np.array([0, 0, 1, 2, 3], np.uint8), (t2, h, w))
  cloud_mask[0, 0, :2] = 255
  s2_time = np.datetime64("2020-03-01T10:30:12.123456789", "ns") + np.arange(t2) * np.timedelta64(5, "D")
  s1_time = np.datetime64("2020-02-28T05:17:30.5", "ns") + np.arange(t1) * np.timedelta64(3, "D")
  s1_gamma0 = rng.uniform(0.001, 0.5, (t1, len(S1_BANDS), h, w)).astype(np.float32)
  s1_gamma0[-1, :, :2, :] = np.nan
  orbit = np.array(["ascending", "descending"] * t1)[:t1]
  return SiteCube(SiteMeta("site-042", 11.25, 48.5, "DBF"), "EPSG:32632",
                  (10.0, 0.0, 600000.0, 0.0, -10.0, 5400000.0), s2_reflectance, cloud_mask, s2_time,
                  s1_gamma0, s1_time, orbit, np.array([117, 22] * t1, np.int16)[:t1])


def assert_same_cube(got: SiteCube, expected: SiteCube) -> None:
  assert got.meta == expected.meta
  assert CRS.from_user_input(got.crs) == CRS.from_user_input(expected.crs)
  assert got.transform == pytest.approx(expected.transform, abs=0)
  for field in ("s2_reflectance", "cloud_mask", "s1_gamma0", "s2_time", "s1_time"):
    a, b = getattr(got, field), getattr(expected, field)
    assert a.dtype == b.dtype, field
    np.testing.assert_array_equal(a, b, err_msg=field)
  assert got.s1_orbit_direction.tolist() == list(expected.s1_orbit_direction)
  np.testing.assert_array_equal(got.s1_relative_orbit, expected.s1_relative_orbit)


# ---------------------------------------------------------------------------------------------
# Round trips.
# ---------------------------------------------------------------------------------------------
def test_zarr_round_trip_and_layout(tmp_path):
  cube = make_cube()
  store = cube_io.write_zarr(cube, tmp_path / "site")
  assert store == tmp_path / "site" / ZARR_NAME
  assert_same_cube(cube_io.read_cube(tmp_path / "site"), cube)
  assert_same_cube(cube_io.read_cube(store), cube)
  ds = xr.open_zarr(store, consolidated=False)
  assert ds["s2_reflectance"].dims == ("time_s2", "band", "y", "x")
  assert ds["cloud_mask"].dims == ("time_s2", "y", "x") and ds["cloud_mask"].dtype == np.uint8
  assert ds["s1_gamma0"].dims == ("time_s1", "polarisation", "y", "x")
  assert ds["s1_orbit_direction"].dims == ds["s1_relative_orbit"].dims == ("time_s1",)
  assert ds["s2_reflectance"].encoding["chunks"] == (1, 10, 6, 7)
  assert [str(b) for b in ds["band"].values] == list(S2_BANDS)
  for name in ("s2_reflectance", "cloud_mask", "s1_gamma0"):
    assert ds[name].attrs["grid_mapping"] == "spatial_ref"
  gm = ds["spatial_ref"].attrs
  assert CRS.from_wkt(gm["crs_wkt"]) == CRS.from_epsg(32632) and gm["spatial_ref"] == gm["crs_wkt"]
  assert [float(v) for v in gm["GeoTransform"].split()] == [600000.0, 10.0, 0.0, 5400000.0, 0.0, -10.0]
  np.testing.assert_array_equal(ds["x"].values, 600005.0 + 10.0 * np.arange(7))
  np.testing.assert_array_equal(ds["y"].values, 5399995.0 - 10.0 * np.arange(6))
  assert {k: ds.attrs[k] for k in ("site_id", "lon", "lat", "land_cover", "earthrep_cube_version")} == {
      "site_id": "site-042", "lon": 11.25, "lat": 48.5, "land_cover": "DBF", "earthrep_cube_version": 1}


def test_zarr_geotiff_round_trip(tmp_path):
  cube = make_cube()
  cube_io.write_zarr(cube, tmp_path / "zarr_site")
  from_zarr = cube_io.read_cube(tmp_path / "zarr_site")
  geotiff.write_geotiff_stack(from_zarr, tmp_path / "tif_site")
  assert sorted(p.name for p in (tmp_path / "tif_site" / "s1").iterdir())[:2] == [
      "20200228T051730_asc.tif", "20200302T051730_desc.tif"]
  from_tif = cube_io.read_cube(tmp_path / "tif_site")
  assert_same_cube(from_tif, cube)
  cube_io.write_zarr(from_tif, tmp_path / "back")
  assert_same_cube(cube_io.read_cube(tmp_path / "back"), cube)


def test_empty_s1_series_round_trips(tmp_path):
  cube = dataclasses.replace(make_cube(), s1_gamma0=np.zeros((0, 2, 6, 7), np.float32),
                             s1_time=np.array([], "datetime64[ns]"), s1_orbit_direction=np.array([], str),
                             s1_relative_orbit=np.array([], np.int16))
  cube_io.write_zarr(cube, tmp_path / "site")
  assert cube_io.read_cube(tmp_path / "site").s1_gamma0.shape == (0, 2, 6, 7)


def _write_tif(path: Path, data: np.ndarray, descriptions: list[str], transform=(10, 0, 600000, 0, -10, 5400000),
               crs: str = "EPSG:32632", tags: dict | None = None) -> None:
  profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype,
                 crs=crs, transform=Affine(*transform))
  path.parent.mkdir(parents=True, exist_ok=True)
  with rasterio.open(path, "w", **profile) as dst:
    dst.write(data)
    for i, name in enumerate(descriptions, start=1):
      dst.set_band_description(i, name)
    dst.update_tags(**(tags or {}))


def test_geotiff_stack_any_band_order_and_mask_as_last_band(tmp_path):
  cube = make_cube(t2=2, t1=2)
  site = tmp_path / "site"
  (site).mkdir()
  (site / "site.json").write_text(json.dumps({"site_id": "s", "lon": 1.0, "lat": 50.0}))
  order = [9, 0, 5, 2, 8, 1, 7, 3, 6, 4]
  for i, stamp in enumerate(("20200301T103012", "20200306T103012")):
    data = np.concatenate([cube.s2_reflectance[i][order], cube.cloud_mask[i][None].astype(np.float32)])
    _write_tif(site / "s2" / f"{stamp}.tif", data, [S2_BANDS[k] for k in order] + [""])
  for i, name in enumerate(("20200228T051730_asc", "20200302T051730_descending")):
    _write_tif(site / "s1" / f"{name}.tif", cube.s1_gamma0[i][::-1].copy(), ["VH", "VV"])
  got = cube_io.read_cube(site)
  np.testing.assert_array_equal(got.s2_reflectance, cube.s2_reflectance)
  np.testing.assert_array_equal(got.cloud_mask, cube.cloud_mask)
  np.testing.assert_array_equal(got.s1_gamma0, cube.s1_gamma0[:2])
  assert got.s2_time.tolist() == np.array(["2020-03-01T10:30:12", "2020-03-06T10:30:12"], "datetime64[ns]").tolist()
  assert got.s1_orbit_direction.tolist() == ["ascending", "descending"]
  assert got.s1_relative_orbit.tolist() == [-1, -1] and got.meta.land_cover == ""


# ---------------------------------------------------------------------------------------------
# Atomicity.
# ---------------------------------------------------------------------------------------------
def _entries(folder: Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir())


def _failing_to_zarr(monkeypatch):
  real_to_zarr = xr.Dataset.to_zarr

  def to_zarr_then_fail(self, store, *args, **kwargs):
    real_to_zarr(self, store, *args, **kwargs)   # a complete store in the temp dir, then the "crash"
    (Path(store) / "s2_reflectance" / "c" / "0" / "0" / "0" / "0").unlink()
    raise RuntimeError("disk full")
  monkeypatch.setattr(xr.Dataset, "to_zarr", to_zarr_then_fail)


def test_failed_write_leaves_no_store_and_no_temp_dir(tmp_path, monkeypatch):
  _failing_to_zarr(monkeypatch)
  with pytest.raises(RuntimeError, match="disk full"):
    cube_io.write_zarr(make_cube(), tmp_path / "site")
  assert _entries(tmp_path / "site") == []


def test_existing_store_untouched_without_overwrite_and_on_failed_overwrite(tmp_path, monkeypatch):
  first, second = make_cube(seed=1), make_cube(seed=2)
  cube_io.write_zarr(first, tmp_path / "site")
  with pytest.raises(FileExistsError, match="overwrite"):
    cube_io.write_zarr(second, tmp_path / "site")
  assert_same_cube(cube_io.read_cube(tmp_path / "site"), first)
  with monkeypatch.context() as patch:
    _failing_to_zarr(patch)
    with pytest.raises(RuntimeError):
      cube_io.write_zarr(second, tmp_path / "site", overwrite=True)
  assert_same_cube(cube_io.read_cube(tmp_path / "site"), first)
  assert _entries(tmp_path / "site") == [ZARR_NAME]
  cube_io.write_zarr(second, tmp_path / "site", overwrite=True)
  assert_same_cube(cube_io.read_cube(tmp_path / "site"), second)
  assert _entries(tmp_path / "site") == [ZARR_NAME]


def test_geotiff_writes_are_atomic_per_file_and_refuse_existing(tmp_path):
  target = tmp_path / "a.tif"
  with pytest.raises(RuntimeError):
    with atomic.atomic_path(target) as tmp:
      tmp.write_bytes(b"II*\x00 half a tiff")
      raise RuntimeError("crash")
  assert _entries(tmp_path) == []
  geotiff.write_geotiff_stack(make_cube(t1=3), tmp_path / "site")
  with pytest.raises(FileExistsError):
    geotiff.write_geotiff_stack(make_cube(), tmp_path / "site")
  geotiff.write_geotiff_stack(make_cube(t2=2, t1=2, seed=3), tmp_path / "site", overwrite=True)
  assert len(_entries(tmp_path / "site" / "s2")) == 4 and len(_entries(tmp_path / "site" / "s1")) == 2
  assert_same_cube(cube_io.read_cube(tmp_path / "site"), make_cube(t2=2, t1=2, seed=3))


# ---------------------------------------------------------------------------------------------
# Bad inputs: every error names the file and the field.
# ---------------------------------------------------------------------------------------------
def _bad_store(tmp_path: Path, mutate) -> Path:
  ds = mutate(cube_io.cube_to_dataset(make_cube()))
  store = tmp_path / "site" / ZARR_NAME
  ds.to_zarr(store, zarr_format=3, consolidated=False, mode="w")
  return store


def _set(name: str, index, value):
  def mutate(ds):
    values = ds[name].values.copy()
    values[index] = value
    return ds.assign({name: (ds[name].dims, values, ds[name].attrs)})
  return mutate


BAD_STORES = {
    "missing variable": (lambda ds: ds.drop_vars("s1_gamma0"), ["s1_gamma0", "missing variable"]),
    "missing band": (lambda ds: ds.drop_sel(band="B8A"), ["band", "B8A"]),
    "wrong dims": (lambda ds: ds.assign(s1_gamma0=ds["s1_gamma0"].transpose("time_s1", "y", "x", "polarisation")),
                   ["s1_gamma0", "dims"]),
    "time out of order": (lambda ds: ds.assign_coords(time_s2=ds["time_s2"].values[[0, 2, 1, 3]]),
                          ["time_s2", "out of order"]),
    "time duplicated": (lambda ds: ds.assign_coords(time_s1=ds["time_s1"].values[[0, 1, 1, 3, 4]]),
                        ["time_s1", "duplicated"]),
    "+inf reflectance": (_set("s2_reflectance", (0, 0, 0, 0), np.inf), ["s2_reflectance", "infinite"]),
    "-inf gamma0": (_set("s1_gamma0", (1, 1, 2, 2), -np.inf), ["s1_gamma0", "infinite"]),
    "digital numbers": (lambda ds: ds.assign(s2_reflectance=ds["s2_reflectance"] * 10000),
                        ["s2_reflectance", "digital numbers", "10000"]),
    "fill value": (_set("s2_reflectance", (0, 0, 0, 0), -9999.0), ["s2_reflectance", "fill value"]),
    "no clear date": (lambda ds: ds.assign(cloud_mask=ds["cloud_mask"] * 0 + 1), ["cloud_mask", "no S2 date"]),
    "unknown orbit": (_set("s1_orbit_direction", 2, "north"), ["s1_orbit_direction", "north"]),
    "unknown cloud class": (_set("cloud_mask", (0, 0, 0), 7), ["cloud_mask", "7"]),
    "dB instead of linear": (lambda ds: ds.assign(s1_gamma0=-ds["s1_gamma0"] * 20), ["s1_gamma0", "dB"]),
    "no grid mapping": (lambda ds: ds.drop_vars("spatial_ref"), ["spatial_ref"]),
    "missing site id": (lambda ds: ds.drop_attrs(deep=False), ["site_id"]),
}


@pytest.mark.parametrize("case", list(BAD_STORES))
def test_bad_zarr_store_is_named_with_field(tmp_path, case):
  mutate, fragments = BAD_STORES[case]
  store = _bad_store(tmp_path, mutate)
  with pytest.raises(CubeError) as info:
    cube_io.read_cube(tmp_path / "site")
  message = str(info.value)
  assert message.startswith(str(store)), message
  for fragment in fragments:
    assert fragment in message, message


def test_unreadable_and_truncated_stores(tmp_path):
  store = cube_io.write_zarr(make_cube(), tmp_path / "a")
  (store / "s2_reflectance" / "c" / "2" / "0" / "0" / "0").unlink()
  with pytest.raises(CubeError, match=r"a/cube.zarr: s2_reflectance: truncated store: 1 of 4 chunks missing"):
    cube_io.read_cube(store)
  store = cube_io.write_zarr(make_cube(), tmp_path / "b")
  chunk = store / "s1_gamma0" / "c" / "1" / "0" / "0" / "0"
  chunk.write_bytes(chunk.read_bytes()[:10])
  with pytest.raises(CubeError, match=r"b/cube.zarr: s1_gamma0: unreadable data"):
    cube_io.read_cube(store)
  store = cube_io.write_zarr(make_cube(), tmp_path / "c")
  (store / "zarr.json").write_text("{not json")
  with pytest.raises(CubeError, match=r"c/cube.zarr: store: unreadable Zarr store"):
    cube_io.read_cube(tmp_path / "c")
  with pytest.raises(CubeError, match=r"nowhere: cube: no cube.zarr"):
    cube_io.read_cube(tmp_path / "nowhere")


def test_writer_refuses_an_invalid_cube(tmp_path):
  cube = make_cube()
  bad = dataclasses.replace(cube, cloud_mask=cube.cloud_mask[:, :-1])
  with pytest.raises(CubeError, match=r"SiteCube 'site-042': cloud_mask: shape"):
    cube_io.write_zarr(bad, tmp_path)
  with pytest.raises(CubeError, match=r"transform: .* not a north-up 10 m grid"):
    cube_io.write_zarr(dataclasses.replace(cube, transform=(20.0, 0, 0, 0, -20.0, 0)), tmp_path)
  with pytest.raises(CubeError, match=r"s1_gamma0: grid \(5, 7\) differs from the S2 grid"):
    geotiff.write_geotiff_stack(dataclasses.replace(cube, s1_gamma0=cube.s1_gamma0[:, :, 1:]), tmp_path)
  assert _entries(tmp_path) == []


@pytest.fixture
def tif_site(tmp_path) -> Path:
  geotiff.write_geotiff_stack(make_cube(), tmp_path / "site")
  return tmp_path / "site"


def test_geotiff_s1_on_another_grid_or_crs(tif_site):
  s1_file = sorted((tif_site / "s1").iterdir())[1]
  with rasterio.open(s1_file) as src:
    data = src.read()
  _write_tif(s1_file, data, ["VV", "VH"], transform=(10, 0, 600010, 0, -10, 5400000))
  with pytest.raises(CubeError, match=rf"{s1_file}: transform: .*must share one grid"):
    cube_io.read_cube(tif_site)
  _write_tif(s1_file, data, ["VV", "VH"], crs="EPSG:32633")
  with pytest.raises(CubeError, match=rf"{s1_file}: crs: "):
    cube_io.read_cube(tif_site)


def test_geotiff_bad_files(tif_site):
  s2_file = sorted((tif_site / "s2").glob("*T??????.tif"))[0]
  s1_file = sorted((tif_site / "s1").iterdir())[0]
  bad_orbit = s1_file.with_name(s1_file.name.replace("_asc", "_sideways"))
  os.replace(s1_file, bad_orbit)
  with pytest.raises(CubeError, match=rf"{bad_orbit}: s1_orbit_direction: unknown orbit direction 'sideways'"):
    cube_io.read_cube(tif_site)
  os.replace(bad_orbit, s1_file)
  mask_file = s2_file.with_name(s2_file.stem + "_mask.tif")
  os.replace(mask_file, mask_file.with_suffix(".bak"))
  with pytest.raises(CubeError, match=rf"{s2_file}: cloud_mask: no band described 'cloud_mask'"):
    cube_io.read_cube(tif_site)
  os.replace(mask_file.with_suffix(".bak"), mask_file)
  original = s2_file.read_bytes()
  with rasterio.open(s2_file) as src:
    first_nine = src.read()[:9]
  _write_tif(s2_file, first_nine, list(S2_BANDS[:9]))
  with pytest.raises(CubeError, match=rf"{s2_file}: band: missing band\(s\) \['B12'\]"):
    cube_io.read_cube(tif_site)
  s2_file.write_bytes(original[: len(original) // 2])
  with pytest.raises(CubeError, match=rf"{s2_file}: raster: unreadable"):
    cube_io.read_cube(tif_site)
  s2_file.write_bytes(original)
  (tif_site / "site.json").write_text("{}")
  with pytest.raises(CubeError, match=r"site.json: site metadata: .*site_id"):
    cube_io.read_cube(tif_site)


# ---------------------------------------------------------------------------------------------
# find_cubes.
# ---------------------------------------------------------------------------------------------
def test_find_cubes(tmp_path):
  cubes = tmp_path / "data" / "cubes"
  cube_io.write_zarr(make_cube(), cubes / "site_b")
  cube_io.write_zarr(make_cube(), cubes / "site_a")
  geotiff.write_geotiff_stack(make_cube(), cubes / "site_c")
  (cubes / "notes.txt").write_text("x")
  (cubes / ".site_d.tmp-123").mkdir()
  (cubes / "empty_dir").mkdir()
  expected = [cubes / "site_a", cubes / "site_b", cubes / "site_c"]
  assert cube_io.find_cubes(tmp_path / "data") == expected
  assert cube_io.find_cubes(cubes) == expected
  assert cube_io.find_cubes(cubes / "site_b") == [cubes / "site_b"]
  assert cube_io.find_cubes(cubes / "site_b" / ZARR_NAME) == [cubes / "site_b" / ZARR_NAME]
  with pytest.raises(CubeError, match="no site cubes found"):
    cube_io.find_cubes(cubes / "empty_dir")


# ---------------------------------------------------------------------------------------------
# Real Sentinel-2 L1C band files (tests/data/t33uuu, see SOURCE.md).
# ---------------------------------------------------------------------------------------------
def _dn(band: str) -> np.ndarray:
  with rasterio.open(T33UUU / f"{T33UUU_STEM}_{band}.tif") as src:
    return src.read(1).astype(np.float64)


def test_t33uuu_grid_band_order_and_scaling():
  reflectance, crs, transform = geotiff.read_s2_band_files(T33UUU)
  assert reflectance.shape == (10, 48, 48) and reflectance.dtype == np.float32
  assert CRS.from_user_input(crs) == CRS.from_epsg(32633) and crs == "EPSG:32633"
  assert transform == T33UUU_TRANSFORM
  for i, band in enumerate(S2_BANDS):   # 2017 = baseline 02.04: reflectance = DN / 10000
    if band in ("B02", "B03", "B04", "B08"):
      np.testing.assert_array_equal(reflectance[i], (_dn(band) / 10000).astype(np.float32), err_msg=band)
  nearest, _, _ = geotiff.read_s2_band_files(T33UUU, resampling="nearest")
  for i, band in enumerate(S2_BANDS):
    block = np.kron(_dn(band), np.ones((2, 2))) if band in ("B05", "B06", "B07", "B8A", "B11", "B12") else _dn(band)
    np.testing.assert_array_equal(nearest[i], (block / 10000).astype(np.float32), err_msg=band)


def test_t33uuu_bilinear_20m_to_10m():
  reflectance, _, _ = geotiff.read_s2_band_files(T33UUU)
  centres_in_20m_pixels = (np.arange(48) + 0.5) / 2 - 0.5
  rows, cols = np.meshgrid(centres_in_20m_pixels, centres_in_20m_pixels, indexing="ij")
  for i, band in enumerate(S2_BANDS):
    if band not in ("B05", "B06", "B07", "B8A", "B11", "B12"):
      continue
    source = _dn(band) / 10000
    assert source.shape == (24, 24)
    expected = ndimage.map_coordinates(source, [rows, cols], order=1, mode="nearest")
    np.testing.assert_allclose(reflectance[i], expected, rtol=0, atol=1e-7, err_msg=band)
    # interior 10 m pixels mix 9/16 of their own 20 m pixel with 3/16, 3/16, 1/16 of the neighbours
    assert reflectance[i, 2, 2] == pytest.approx((9 * source[1, 1] + 3 * source[0, 1] + 3 * source[1, 0]
                                                   + source[0, 0]) / 16, abs=1e-7)


def test_t33uuu_through_the_cube_contract(tmp_path):
  reflectance, crs, transform = geotiff.read_s2_band_files(sorted(T33UUU.glob("*.tif")))
  cube = SiteCube(SiteMeta("t33uuu", 13.0, 52.5), crs, transform, reflectance[None],
                  np.zeros((1, 48, 48), np.uint8), np.array(["2017-02-16T10:21:01"], "datetime64[ns]"),
                  np.full((1, 2, 48, 48), 0.05, np.float32), np.array(["2017-02-16T05:00"], "datetime64[ns]"),
                  np.array(["ascending"]), None)
  cube_io.write_zarr(cube, tmp_path / "t33uuu")
  got = cube_io.read_cube(tmp_path / "t33uuu")
  assert got.crs == "EPSG:32633" and got.transform == T33UUU_TRANSFORM
  np.testing.assert_array_equal(got.s2_reflectance, cube.s2_reflectance)


def test_processing_baseline_offset(tmp_path):
  recent = tmp_path / "recent"
  recent.mkdir()
  for path in T33UUU.glob("*.tif"):
    shutil.copy(path, recent / path.name.replace("20170216", "20220301"))
  b02 = S2_BANDS.index("B02")
  with_offset = ((_dn("B02") - 1000) / 10000).astype(np.float32)
  np.testing.assert_array_equal(geotiff.read_s2_band_files(recent)[0][b02], with_offset)
  np.testing.assert_array_equal(geotiff.read_s2_band_files(recent, processing_baseline="03.01")[0][b02],
                                (_dn("B02") / 10000).astype(np.float32))
  np.testing.assert_array_equal(geotiff.read_s2_band_files(T33UUU, processing_baseline="N0500")[0][b02], with_offset)
  safe = tmp_path / "S2B_MSIL1C_20170216T102101_N0510_R065_T33UUU_20240101T000000.SAFE" / "GRANULE" / "IMG_DATA"
  shutil.copytree(T33UUU, safe)
  np.testing.assert_array_equal(geotiff.read_s2_band_files(safe)[0][b02], with_offset)


def test_jp2_and_l2a_resolution_suffixes(tmp_path):
  if "JP2OpenJPEG" not in rasterio.drivers.raster_driver_extensions().values():
    pytest.skip("GDAL without JP2OpenJPEG")
  for path in T33UUU.glob("*.tif"):
    with rasterio.open(path) as src:
      profile = dict(src.profile, driver="JP2OpenJPEG", QUALITY=100, REVERSIBLE="YES")
      for key in ("compress", "predictor", "tiled", "interleave", "blockxsize", "blockysize"):
        profile.pop(key, None)
      resolution = int(src.transform.a)
      with rasterio.open(tmp_path / f"{path.stem}_{resolution}m.jp2", "w", **profile) as dst:
        dst.write(src.read())
  shutil.copy(T33UUU / f"{T33UUU_STEM}_B05.tif", tmp_path / f"{T33UUU_STEM}_B02_20m.tif")   # coarser B02: ignored
  np.testing.assert_array_equal(geotiff.read_s2_band_files(tmp_path)[0], geotiff.read_s2_band_files(T33UUU)[0])


def test_band_file_errors(tmp_path):
  for path in T33UUU.glob("*.tif"):
    if "B8A" not in path.name:
      shutil.copy(path, tmp_path / path.name)
  with pytest.raises(CubeError, match=r"band: missing band file\(s\) \['B8A'\]"):
    geotiff.read_s2_band_files(tmp_path)
  with pytest.raises(CubeError, match=r"B02.tif: B02: several files"):
    geotiff.read_s2_band_files([T33UUU / f"{T33UUU_STEM}_B02.tif"] * 2)
  undated = tmp_path / "undated"
  undated.mkdir()
  for path in T33UUU.glob("*.tif"):
    shutil.copy(path, undated / path.name.replace(T33UUU_STEM, "crop"))
  with pytest.raises(CubeError, match=r"crop_B02.tif: processing baseline: not in the path"):
    geotiff.read_s2_band_files(undated)
  assert geotiff.read_s2_band_files(undated, processing_baseline="02.04")[0].shape == (10, 48, 48)
  with pytest.raises(CubeError, match=r"notes_B2.tif: band: file name has no Sentinel-2 band"):
    geotiff.read_s2_band_files([undated / "notes_B2.tif"])
