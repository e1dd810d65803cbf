"""Feature cubes: naive == fast (clear and daily windows), the Zarr layout (xarray, CRS, transform, time,
provenance), GeoTIFFs, quick-look, resume, a dask LocalCluster run == the local run, and bad inputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from helpers import random_fusion, save_fusion_dir
from data_prep.demo_world import make_site_cube
from earthrep import embed
from earthrep.data import windows as W
from earthrep.inference import engine as engine_lib
from earthrep.inference import feature_cubes
from earthrep.io import atomic, feature_cube
from earthrep.io.cube import write_zarr

REPO = Path(__file__).resolve().parents[1]
SIZE, DAYS = 18, 200     # output grid 4x4 (4 tiles of 2x2)


@pytest.fixture(scope="module")
def tiny():
  return random_fusion()


@pytest.fixture(scope="module")
def paths(tiny, tmp_path_factory):
  root = tmp_path_factory.mktemp("embed")
  model_dir = save_fusion_dir(*tiny, root / "model")
  cube = write_zarr(make_site_cube(0, size=SIZE, days=DAYS), root / "site")
  return model_dir, cube, root


@pytest.fixture(scope="module")
def engine(tiny):
  return engine_lib.Engine(*tiny, batch=64)


@pytest.fixture(scope="module")
def window_engine():   # the reference's input fill: crops with clouds are re-encoded per window
  return engine_lib.Engine(*random_fusion(fill="window"), batch=64)


ALWAYS_SHARE = 10 ** 6   # share_px_per_crop: clean crops always go through models.crop_share


@pytest.fixture(scope="module")
def local_run(paths):
  model_dir, cube, root = paths
  out = feature_cubes.embed_cube(str(model_dir), str(cube), str(root / "local.zarr"), tile=2, batch=64,
                         geotiff=str(root / "tifs"), quicklook="2019-04-01")
  with xr.open_zarr(out, consolidated=False) as ds:
    return out, ds.load()


def _merged():
  return W.merge(make_site_cube(0, size=SIZE, days=DAYS))


def _case(mode: str):
  """(windows, local grid, tile side): clear windows on the 4x4 tile, or every third daily window on a
  3x3 tile."""
  merged = _merged()
  if mode == "clear":
    win, local = W.clear_windows(merged), merged
  else:
    win = W.anyday_windows(merged, W.daily_days(merged)[::3])
    local = W.Merged(merged.s2_thwc[:, 1:18, 0:17], merged.s2_time, merged.s1_uhwc[:, 1:18, 0:17],
                     merged.s1_time)
  return win, local, local.s2_thwc.shape[1] - 14


@pytest.mark.parametrize("share", [0, ALWAYS_SHARE])
@pytest.mark.parametrize("mode,fill", [("clear", "frame"), ("daily", "frame"), ("clear", "window"),
                                       ("daily", "window")])
def test_fast_equals_naive(engine, window_engine, mode, fill, share):
  engine = engine if fill == "frame" else window_engine
  engine.share_px_per_crop = share
  assert engine.model.fill == fill
  win, local, t = _case(mode)
  naive = engine_lib.naive_tile(engine, local, win, t, t)
  for s in engine.model.sensors:   # computed once per engine; not counted below
    engine.empty_feature(s)
  engine.calls.clear()
  fast = engine_lib.fast_tile(engine, local, win, t, t)
  # with sharing, the crops take models.crop_share (cloudy ones with their hole term under "frame" fill);
  # "window" fill re-encodes cloudy crops per window with the plain encoder
  calls = engine.calls
  assert (calls.get("crop_s2", 0) > 0) == (calls.get("crop_s1", 0) > 0) == bool(share)
  assert (calls.get("crop_s2_holes", 0) > 0) == (bool(share) and fill == "frame")
  assert (calls.get("conv_s2", 0) > 0) == (not share or fill == "window")
  assert np.isfinite(naive).sum() > 7 * 50
  np.testing.assert_array_equal(np.isnan(naive), np.isnan(fast))
  assert np.nanmax(np.abs(naive - fast)) <= 1e-5


@pytest.mark.parametrize("mode,fill,pixel_token", [("clear", "frame", False), ("daily", "frame", False),
                                                   ("daily", "window", False), ("daily", "frame", True),
                                                   ("clear", "window", True)])
def test_fast_equals_naive_with_the_centre_path(mode, fill, pixel_token):
  """Autoencoders with `centre_path`: the fast path hands each crop's filled centre pixel to the encoder
  (hidden and cloudy frames included) and gives what the full forward gives; so it does to a fusion with
  pixel tokens (`FusionModel.pixel_token`), here without centre paths: the series are then the tokens' only."""
  engine = engine_lib.Engine(*random_fusion(fill=fill, centre_path=not pixel_token, pixel_token=pixel_token),
                             batch=64, share_px_per_crop=ALWAYS_SHARE)
  win, local, t = _case(mode)
  naive = engine_lib.naive_tile(engine, local, win, t, t)
  fast = engine_lib.fast_tile(engine, local, win, t, t)
  assert np.isfinite(naive).sum() > 7 * 20
  np.testing.assert_array_equal(np.isnan(naive), np.isnan(fast))
  assert np.nanmax(np.abs(naive - fast)) <= 1e-5


@pytest.mark.parametrize("fill", ["frame", "window"])
def test_fast_equals_naive_with_the_in_jit_gather(tiny, fill):
  """The accelerators' path: crop sharing gathers inside the jitted function (forced here on the CPU)."""
  model, params = tiny if fill == "frame" else random_fusion(fill="window")
  engine = engine_lib.Engine(model, params, batch=64, gather="device", share_px_per_crop=ALWAYS_SHARE)
  assert not engine.host_gather
  merged = _merged()
  win = W.clear_windows(merged)
  naive = engine_lib.naive_tile(engine, merged, win, 4, 4)
  fast = engine_lib.fast_tile(engine, merged, win, 4, 4)
  assert engine.calls.get("crop_s2", 0) + engine.calls.get("crop_s2_holes", 0) > 0
  np.testing.assert_array_equal(np.isnan(naive), np.isnan(fast))
  assert np.isfinite(naive).any() and np.nanmax(np.abs(naive - fast)) <= 1e-5


def test_fast_equals_naive_on_two_devices(tmp_path):
  """Batches sharded over 2 (fake CPU) devices: both fills, clear and daily dates, naive == fast to 1e-5."""
  script = textwrap.dedent(f"""
      import sys; sys.path.insert(0, {str(REPO / "tests")!r})
      import jax, numpy as np
      from helpers import random_fusion
      from data_prep.demo_world import make_site_cube
      from earthrep.data import windows as W
      from earthrep.inference import engine as E
      assert jax.device_count() == 2
      merged = W.merge(make_site_cube(0, size={SIZE}, days={DAYS}))
      for fill in ("frame", "window"):
        engine = E.Engine(*random_fusion(fill=fill), batch=64, share_px_per_crop=10 ** 6)
        assert engine.mesh.devices.size == 2
        for win in (W.clear_windows(merged), W.anyday_windows(merged, W.daily_days(merged)[::7])):
          naive, fast = E.naive_tile(engine, merged, win, 4, 4), E.fast_tile(engine, merged, win, 4, 4)
          assert (np.isnan(naive) == np.isnan(fast)).all() and np.isfinite(naive).any()
          print(fill, float(np.nanmax(np.abs(naive - fast))))
          assert np.nanmax(np.abs(naive - fast)) <= 1e-5
      """)
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=900,
                        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count("frame") == 2 and proc.stdout.count("window") == 2


@pytest.mark.parametrize("sensor,width", [("s2", 9), ("s1", 2)])
def test_single_sensor_embeddings_fast_equals_naive(tiny, sensor, width):
  """embedding=<sensor>: that sensor's own autoencoder code z, from both paths, equal to the full forward's."""
  engine = engine_lib.Engine(*tiny, batch=64, embedding=sensor)
  assert engine.width == width
  merged = _merged()
  win = W.clear_windows(merged)
  naive = engine_lib.naive_tile(engine, merged, win, 4, 4)
  fast = engine_lib.fast_tile(engine, merged, win, 4, 4)
  assert naive.shape == (len(win), 4, 4, width) and np.isfinite(naive).any()
  np.testing.assert_array_equal(np.isnan(naive), np.isnan(fast))
  assert np.nanmax(np.abs(naive - fast)) <= 1e-5
  with pytest.raises(engine_lib.ModelError, match="embedding 'x'"):
    engine_lib.Engine(*tiny, batch=64, embedding="x")


def test_zarr_layout(local_run, paths):
  out, ds = local_run
  model_dir, cube, _ = paths
  f = ds["features"]
  assert f.dims == ("feature", "time", "y", "x") and f.dtype == np.float32
  assert f.shape[2:] == (SIZE - 14, SIZE - 14) and list(ds["feature"].values) == [f"F0{i}" for i in range(1, 8)]
  assert np.isfinite(f.values).any() and np.isnan(f.values).any()
  win = W.clear_windows(_merged())
  np.testing.assert_array_equal(ds["time"].values.astype("datetime64[D]").astype(np.int64), win.target_days)
  assert (f.attrs.get("grid_mapping") or f.encoding.get("grid_mapping")) == "spatial_ref"
  gm = ds["spatial_ref"].attrs
  c, a, _, top, _, e = (float(v) for v in gm["GeoTransform"].split())
  from earthrep.io.cube import read_cube
  src = read_cube(cube)
  assert a == 10 and e == -10 and c == src.transform[2] + 70 and top == src.transform[5] - 70
  assert "UTM" in gm["crs_wkt"] or "32632" in gm["crs_wkt"]
  np.testing.assert_allclose(ds["x"].values[0], c + 5)
  assert json.loads(ds.attrs["model_config"])["kind"] == "fusion"
  for key in ("model_dir", "code_version", "input_cube", "dates_mode", "created"):
    assert ds.attrs[key]
  assert not list(out.parent.glob(f".{out.name}*"))        # no partial store or tile records left


def test_geotiffs_and_quicklook(local_run):
  import rasterio
  out, ds = local_run
  tifs = sorted((out.parent / "tifs").glob("*.tif"))
  assert len(tifs) == ds.sizes["time"]
  with rasterio.open(tifs[0]) as src:
    assert src.count == 7 and src.crs.to_epsg() == 32632
    gt = [float(v) for v in ds["spatial_ref"].attrs["GeoTransform"].split()]
    assert src.transform.c == gt[0] and src.transform.f == gt[3]
    np.testing.assert_array_equal(src.read(), ds["features"].isel(time=0).values)
  assert (out.parent / f"{out.name}.2019-04-01.png").stat().st_size > 1000
  counts = np.isfinite(ds["features"].isel(feature=0).values).sum(axis=(1, 2))   # --quicklook auto
  assert np.datetime64(feature_cubes.best_date(out)) == ds["time"].values[np.argmax(counts)].astype("datetime64[D]")


def test_resume_skips_finished_tiles_and_gives_the_same_store(local_run, paths, monkeypatch):
  model_dir, cube, root = paths
  out = root / "resumed.zarr"
  real_write, writes = feature_cube.write_region, []

  def failing(store, block, y0, x0):
    if len(writes) == 2:
      raise OSError(28, "No space left on device")
    writes.append((y0, x0))
    real_write(store, block, y0, x0)
  monkeypatch.setattr(feature_cube, "write_region", failing)
  with pytest.raises(feature_cubes.EmbedError, match="No space left"):
    feature_cubes.embed_cube(str(model_dir), str(cube), str(out), tile=2, batch=64, resume=True)
  assert not out.exists() and (root / f".{out.name}.partial").exists()
  monkeypatch.setattr(feature_cube, "write_region", real_write)
  runners, real_runner = [], feature_cubes.TileRunner
  monkeypatch.setattr(feature_cubes, "TileRunner", lambda job: runners.append(real_runner(job)) or runners[-1])
  feature_cubes.embed_cube(str(model_dir), str(cube), str(out), tile=2, batch=64, resume=True)
  assert runners[0].state[0].calls["tiles"] == 2      # 4 tiles, 2 were finished
  with xr.open_zarr(out, consolidated=False) as ds:
    np.testing.assert_array_equal(ds["features"].values, local_run[1]["features"].values)


def test_failure_without_resume_leaves_nothing(paths, monkeypatch):
  model_dir, cube, root = paths
  out = root / "full_disk.zarr"
  def failing(*_):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(feature_cube, "write_region", failing)
  with pytest.raises(feature_cubes.EmbedError, match=f"tile .*No space left"):
    feature_cubes.embed_cube(str(model_dir), str(cube), str(out), tile=2, batch=64)
  assert not list(root.glob(f"*{out.name}*"))


def test_dask_cluster_equals_local(local_run, paths):
  distributed = pytest.importorskip("distributed")
  model_dir, cube, root = paths
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                dashboard_address=None) as cluster:
    out = feature_cubes.embed_cube(str(model_dir), str(cube), str(root / "dask.zarr"), tile=2, batch=64,
                           scheduler=cluster.scheduler_address)
  with xr.open_zarr(out, consolidated=False) as ds:
    np.testing.assert_array_equal(ds["features"].values, local_run[1]["features"].values)


def test_bad_inputs(paths, tmp_path, local_run):
  model_dir, cube, root = paths
  assert embed.main(["--model", str(model_dir), "--cube", str(cube), "--out", str(local_run[0])]) == 2
  with pytest.raises(atomic.OutputError, match="exists.*--overwrite"):
    feature_cubes.embed_cube(str(model_dir), str(cube), str(local_run[0]))
  # no valid window: a short cube
  short = write_zarr(make_site_cube(1, size=SIZE, days=25), tmp_path / "short")
  with pytest.raises(W.WindowError, match="no valid window"):
    feature_cubes.embed_cube(str(model_dir), str(short), str(tmp_path / "a.zarr"))
  # channel mismatch
  bad = save_fusion_dir(*random_fusion(channels={"s2": 4}), tmp_path / "bad_model")
  with pytest.raises(engine_lib.ModelError, match="s2.channels"):
    feature_cubes.embed_cube(str(bad), str(cube), str(tmp_path / "b.zarr"))
  # autoencoders trained with different input fills
  model, params = random_fusion()
  mixed = model.clone(autoencoders=(model.autoencoders[0].clone(fill="window"), model.autoencoders[1]))
  with pytest.raises(engine_lib.ModelError, match="different input fills"):
    feature_cubes.embed_cube(str(save_fusion_dir(mixed, params, tmp_path / "mixed")), str(cube), str(tmp_path / "c.zarr"))
  # a model fusing S1 on a cube without S1
  no_s1 = make_site_cube(0, size=SIZE, days=DAYS)
  no_s1.s1_gamma0, no_s1.s1_time = no_s1.s1_gamma0[:0], no_s1.s1_time[:0]
  no_s1.s1_orbit_direction = no_s1.s1_orbit_direction[:0]
  if no_s1.s1_relative_orbit is not None:
    no_s1.s1_relative_orbit = no_s1.s1_relative_orbit[:0]
  with pytest.raises(W.WindowError, match="s1_gamma0"):
    W.merge(no_s1, "cube_without_s1")
