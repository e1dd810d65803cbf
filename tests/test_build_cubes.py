"""build_cubes against a local static STAC catalogue of demo COGs (no network): end to end, Dask cluster,
BOA offset, SCL mapping, resume, credentials and bad inputs."""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pystac = pytest.importorskip("pystac")
pytest.importorskip("odc.stac")

from data_prep import build_cubes, demo_world, stac_catalogs, stac_load  # noqa: E402
from earthrep.io import cube as cube_lib  # noqa: E402
from earthrep.schema import CLOUD_CLEAR, CLOUD_NODATA, CLOUD_SHADOW, CLOUD_THICK, CLOUD_THIN  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import stac_fixtures as fx  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
              pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),   # odc-geo: Affine `*`
              pytest.mark.filterwarnings("ignore:.*shapely.ops.transform:DeprecationWarning")]
START, END = "2021-11-15", "2022-04-30"
SIZE = 40
SECRET = "s3cr3t-VALUE-never-logged-42"


def _site_row(site_id: str, cube) -> str:
  return f"{site_id},{cube.meta.lon},{cube.meta.lat},{cube.meta.land_cover}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """Sites: A good (Earth Search + PC keys, crosses 2022-01-25), B all cloud, C no items, D missing asset,
  E assets on mismatched grids, F small (for the cluster run)."""
  root = tmp_path_factory.mktemp("stac")
  good = demo_world.make_site_cube(0, size=SIZE, days=150, land_cover="CRO", start=START)
  cloudy = demo_world.make_site_cube(1, size=16, days=20, land_cover="DBF", start=START)
  missing = demo_world.make_site_cube(2, size=16, days=10, land_cover="GRA", start=START)
  mismatched = demo_world.make_site_cube(3, size=16, days=10, land_cover="MF", start=START)
  small = demo_world.make_site_cube(5, size=SIZE, days=25, land_cover="ENF", start=START)
  items = fx.s2_items(good, root, "A") + fx.s1_items(good, root, "A")
  items += fx.s2_items(cloudy, root, "B", scl_override=9)
  items_d = fx.s2_items(missing, root, "D")
  for item in items_d:
    item.assets.pop(fx.ES_KEYS["B12"], None)
    item.assets.pop("B12", None)
  items_e = fx.s2_items(mismatched, root, "E")
  for item in items_e:
    next(iter(item.assets.values())).extra_fields["proj:epsg"] = 32633
  items += fx.s2_items(small, root, "F") + fx.s1_items(small, root, "F")
  catalog = fx.write_catalog(root, items + items_d + items_e)
  sites = root / "sites.csv"
  sites.write_text("site_id,lon,lat,land_cover\n" + "\n".join([
      _site_row("A", good), _site_row("B", cloudy), "C,23.8,56.5,CRO", _site_row("D", missing),
      _site_row("E", mismatched), _site_row("F", small)]) + "\n")
  return {"root": root, "catalog": catalog, "sites": sites, "good": good, "small": small}


def _args(world, out, *extra, sites=None):
  return ["--sites", str(sites or world["sites"]), "--start", START, "--end", END, "--out", str(out),
          "--size-px", str(SIZE), "--catalog", str(world["catalog"]), "--max-cloud", "100", *extra]


@pytest.fixture(scope="module")
def built(world, tmp_path_factory):
  out = tmp_path_factory.mktemp("out")
  rc = build_cubes.main(_args(world, out))
  return {"out": out, "rc": rc, "report": json.loads((out / build_cubes.REPORT).read_text())}


def test_build_matches_demo_and_reports_failures(world, built):
  assert built["rc"] == 1   # some sites failed, the run went on
  sites = built["report"]["sites"]
  assert sites["A"]["status"] == "built"
  assert sites["B"]["status"] == "failed" and "no clear S2 scene" in sites["B"]["reason"]
  assert sites["C"]["status"] == "failed" and "no S2 L2A items" in sites["C"]["reason"]
  assert sites["D"]["status"] == "failed" and "missing asset" in sites["D"]["reason"] and "B12" in sites["D"]["reason"]
  assert sites["E"]["status"] == "failed" and "mismatched grids" in sites["E"]["reason"]
  assert sites["F"]["status"] == "built"
  assert built["report"]["summary"] == {"built": 2, "skipped": 0, "failed": 4}
  assert sorted(p.name for p in (built["out"] / "cubes").iterdir()) == ["A", "F"]
  cube, demo = cube_lib.read_cube(built["out"] / "cubes" / "A"), world["good"]
  assert cube.crs == demo.crs and cube.transform == demo.transform and cube.shape_hw == (SIZE, SIZE)
  np.testing.assert_array_equal(cube.s2_time, demo.s2_time)
  # 10 m bands come back exactly (DN rounding) on both sides of 2022-01-25, from both naming conventions.
  ten_m = [0, 1, 2, 6]
  np.testing.assert_allclose(cube.s2_reflectance[:, ten_m], demo.s2_reflectance[:, ten_m], atol=0.5e-4 + 1e-7)
  # 20 m bands: written as 2x2 means, loaded bilinearly: same level, smoothed.
  twenty = [3, 4, 5, 7, 8, 9]
  np.testing.assert_allclose(np.nanmean(cube.s2_reflectance[:, twenty], axis=(2, 3)),
                             np.nanmean(demo.s2_reflectance[:, twenty], axis=(2, 3)), atol=2e-3)
  assert np.mean(cube.cloud_mask == demo.cloud_mask) > 0.85   # SCL is at 20 m
  np.testing.assert_array_equal(cube.s1_time, demo.s1_time)
  np.testing.assert_allclose(cube.s1_gamma0, demo.s1_gamma0, rtol=1e-6)
  np.testing.assert_array_equal(cube.s1_orbit_direction, demo.s1_orbit_direction)
  np.testing.assert_array_equal(cube.s1_relative_orbit, demo.s1_relative_orbit)


def test_cubes_feed_build_shards(built, tmp_path):
  result = subprocess.run([sys.executable, "-m", "data_prep.build_shards", "--cubes", str(built["out"]),
                           "--out", str(tmp_path / "shards"), "--modality", "fused"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  meta = json.loads((tmp_path / "shards" / "metadata.json").read_text())
  assert "fused" in json.dumps(meta)
  assert list((tmp_path / "shards" / "train").glob("fused-train.array_record-*"))


def test_cubes_feed_embed(built, tmp_path):
  """A built cube is accepted by the feature-cube tool (tiny random fusion model)."""
  import xarray as xr
  from helpers import random_fusion, save_fusion_dir
  from earthrep.inference import feature_cubes
  model_dir = save_fusion_dir(*random_fusion(), tmp_path / "model")
  out = feature_cubes.embed_cube(str(model_dir), str(built["out"] / "cubes" / "A"), str(tmp_path / "A.zarr"),
                         log=lambda msg: None)
  features = xr.open_zarr(out)["features"]
  assert features.sizes["feature"] == 7 and features.sizes["time"] > 0
  assert np.isfinite(features.values).any()


def test_resume_skips_finished_sites(world, built):
  store = built["out"] / "cubes" / "A" / "cube.zarr"
  before = store.stat().st_mtime_ns
  rc = build_cubes.main(_args(world, built["out"], "--resume"))
  report = json.loads((built["out"] / build_cubes.REPORT).read_text())
  assert rc == 1 and report["sites"]["A"]["status"] == "skipped" and report["sites"]["B"]["status"] == "failed"
  assert store.stat().st_mtime_ns == before


def test_local_cluster_equals_threaded(world, built, tmp_path):
  distributed = pytest.importorskip("distributed")
  sites = tmp_path / "a.csv"
  sites.write_text("site_id,lon,lat\n" + _site_row("F", world["small"]) + "\n")
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", processes=True,
                                dashboard_address=":0") as cluster:
    rc = build_cubes.main(_args(world, tmp_path / "out", "--scheduler", cluster.scheduler_address, sites=sites))
  assert rc == 0
  a, b = cube_lib.read_cube(tmp_path / "out" / "cubes" / "F"), cube_lib.read_cube(built["out"] / "cubes" / "F")
  assert len(a.s2_time) == 5 and len(a.s1_time) > 0
  for field in ("s2_reflectance", "cloud_mask", "s2_time", "s1_gamma0", "s1_time", "s1_relative_orbit"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_boa_offset_pair_gives_equal_reflectance(tmp_path):
  base = demo_world.make_site_cube(4, size=16, days=15, land_cover="ENF", start="2022-01-20")
  times = np.array(["2022-01-20T10:30", "2022-01-30T10:30", "2022-02-04T10:30"], "datetime64[ns]")
  same = np.repeat(base.s2_reflectance[:1], 3, axis=0)
  pair = dataclasses.replace(base, s2_reflectance=same, cloud_mask=np.zeros((3, 16, 16), np.uint8), s2_time=times,
                             s1_gamma0=base.s1_gamma0[:0], s1_time=base.s1_time[:0],
                             s1_orbit_direction=base.s1_orbit_direction[:0], s1_relative_orbit=base.s1_relative_orbit[:0])
  items = fx.s2_items(pair, tmp_path, "P", baseline_missing_every=0)
  del items[2].properties["s2:processing_baseline"]   # the date rule decides for this one
  assert [it.properties.get("s2:processing_baseline") for it in items] == ["02.14", "04.00", None]
  catalog = fx.write_catalog(tmp_path, items)
  sites = tmp_path / "sites.csv"
  sites.write_text("site_id,lon,lat\n" + _site_row("P", pair) + "\n")
  rc = build_cubes.main(["--sites", str(sites), "--start", "2022-01-01", "--end", "2022-02-28", "--out",
                         str(tmp_path / "out"), "--size-px", "16", "--catalog", str(catalog), "--s1-catalog", "none"])
  assert rc == 0
  cube = cube_lib.read_cube(tmp_path / "out" / "cubes" / "P")
  assert len(cube.s2_time) == 3 and len(cube.s1_time) == 0
  np.testing.assert_array_equal(cube.s2_reflectance[1], cube.s2_reflectance[0])
  np.testing.assert_array_equal(cube.s2_reflectance[2], cube.s2_reflectance[0])
  np.testing.assert_allclose(cube.s2_reflectance[0, [0, 1, 2, 6]], same[0, [0, 1, 2, 6]], atol=0.5e-4 + 1e-7)


def test_credentials_never_logged_or_written(world, tmp_path, monkeypatch, caplog, capsys):
  sites = tmp_path / "f.csv"
  sites.write_text("site_id,lon,lat\n" + _site_row("F", world["small"]) + "\n")
  monkeypatch.delenv("CDSE_S3_SECRET_KEY", raising=False)
  monkeypatch.setenv("CDSE_S3_ACCESS_KEY", "access-" + SECRET)
  with caplog.at_level(logging.INFO):
    assert build_cubes.main(_args(world, tmp_path / "nokey", "--auth", "cdse", sites=sites)) == 2
  err = capsys.readouterr().err   # one line: "python -m data_prep.build_cubes: error: ..."
  assert "CDSE_S3_SECRET_KEY" in err and SECRET not in caplog.text + err and len(err.strip().splitlines()) == 1
  monkeypatch.setenv("CDSE_S3_SECRET_KEY", SECRET)
  for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):   # build_cubes exports these for GDAL
    monkeypatch.setenv(name, "placeholder")
  with caplog.at_level(logging.DEBUG):
    assert build_cubes.main(_args(world, tmp_path / "out", "--auth", "cdse", sites=sites)) == 0
  captured = capsys.readouterr()
  assert "CDSE_S3_SECRET_KEY (set)" in caplog.text
  assert SECRET not in caplog.text + captured.out + captured.err
  for path in (tmp_path / "out").rglob("*"):
    if path.is_file():
      assert SECRET.encode() not in path.read_bytes(), path


def test_bad_inputs(world, tmp_path):
  with pytest.raises(stac_catalogs.BuildError, match="unknown catalogue"):
    stac_catalogs.resolve_catalog("landsat-look")
  assert build_cubes.main(_args(world, tmp_path / "o")[:-4] + ["--catalog", "nowhere-catalog"]) == 2
  with pytest.raises(stac_catalogs.BuildError, match="does not exist"):
    stac_catalogs.resolve_catalog(str(tmp_path / "missing" / "catalog.json"))
  bad = tmp_path / "bad.csv"
  bad.write_text("site_id,lon\nX,1.0\n")
  with pytest.raises(stac_catalogs.BuildError, match="site_id, lon, lat"):
    build_cubes.read_sites(bad)
  with pytest.raises(stac_catalogs.BuildError, match="before"):
    build_cubes.run([], tmp_path, build_cubes.BuildConfig("2020-02-01", "2020-01-01"), str(world["catalog"]))


def test_scl_mapping():
  scl = np.arange(13, dtype=np.float32)[None, :]
  classes = stac_load.scl_classes(scl, np.zeros_like(scl, bool))[0]
  expected = [CLOUD_NODATA, CLOUD_NODATA, CLOUD_SHADOW, CLOUD_SHADOW, CLOUD_CLEAR, CLOUD_CLEAR, CLOUD_CLEAR,
              CLOUD_CLEAR, CLOUD_THICK, CLOUD_THICK, CLOUD_THIN, CLOUD_CLEAR, CLOUD_NODATA]
  assert classes.tolist() == expected
  assert stac_load.scl_classes(np.array([[4.0, np.nan]]), np.array([[True, False]])).tolist() == [[255, 255]]


def test_band_names_harmonised():
  item = pystac.Item("x", None, None, np.datetime64("2022-03-01").astype(object), {})
  for canonical, key in stac_catalogs.BAND_NAMES["cdse"].items():
    item.add_asset(key, pystac.Asset(f"/data/{key}.jp2"))
  item.add_asset("thumbnail", pystac.Asset("/data/t.jpg"))
  harmonised = stac_catalogs.harmonise_item(item)
  assert sorted(harmonised.assets) == sorted(stac_catalogs.S2_ASSETS)
  assert harmonised.assets["B8A"].href == "/data/B8A_20m.jp2"
  stac_catalogs.require_assets([harmonised], stac_catalogs.S2_ASSETS)


@pytest.mark.parametrize("lon, lat, epsg", [(10.9, 51.1, 32632), (-70.6, -33.4, 32719), (179.9, 10.0, 32660)])
def test_site_grid(lon, lat, epsg):
  import rasterio.warp
  grid = stac_load.site_grid(lon, lat, 90)
  assert grid.crs == f"EPSG:{epsg}"
  a, _, c, _, e, f = grid.transform
  assert a == 10 and e == -10 and c % 10 == 0 and f % 10 == 0
  xs, ys = rasterio.warp.transform("EPSG:4326", grid.crs, [lon], [lat])
  assert int((xs[0] - c) // 10) == 45 and int((f - ys[0]) // 10) == 45
