"""Tests of the synthetic demo world (data_prep.demo_world): determinism, the file contract, and that the
statistics a model would learn from (clouds, phenology, speckle, soil-moisture response, GPP) are realistic.
Sizes are tiny so the whole module runs in seconds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep import demo_landscape, demo_sensors, demo_weather, demo_world
from earthrep.io import cube as cube_io
from earthrep.schema import CLOUD_CLEAR, CLOUD_SHADOW, CLOUD_THICK, CLOUD_THIN, S2_BANDS

B02, B04, B08 = (S2_BANDS.index(b) for b in ("B02", "B04", "B08"))


@pytest.fixture(scope="module")
def crop_year() -> demo_world.SiteSimulation:
  spec = demo_world.SiteSpec("XX-Cr1", 10.9, 51.1, "CRO")
  return demo_world.simulate_site(spec, seed=5, size=32, start="2019-01-01", days=365)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
  out = tmp_path_factory.mktemp("world")
  demo_world.make_world(out, seed=3, size=24, sites=6, start="2019-01-01", days=120)
  return out


def _tower_ndvi(sim: demo_world.SiteSimulation) -> np.ndarray:
  rows, cols = sim.landscape.footprint()
  s2 = sim.cube.s2_reflectance[:, :, rows, cols].astype(np.float64)
  clear = (sim.cube.cloud_mask[:, rows, cols] == CLOUD_CLEAR).all(axis=(1, 2))
  ndvi = ((s2[:, B08] - s2[:, B04]) / (s2[:, B08] + s2[:, B04])).mean(axis=(1, 2))
  return ndvi[clear]


def test_same_seed_same_cube_other_seed_differs():
  first, again, other = (demo_world.make_site_cube(s, size=24, days=120) for s in (7, 7, 8))
  for name in ("s2_reflectance", "cloud_mask", "s2_time", "s1_gamma0", "s1_time", "s1_orbit_direction",
               "s1_relative_orbit"):
    np.testing.assert_array_equal(getattr(first, name), getattr(again, name), err_msg=name)
  assert first.transform == again.transform and first.crs == again.crs
  assert not np.array_equal(first.s2_reflectance, other.s2_reflectance)
  assert not np.array_equal(first.s1_gamma0, other.s1_gamma0)


def test_site_cube_contract():
  cube = demo_world.make_site_cube(1, size=24, days=120, land_cover="DBF")
  cube_io.validate_cube(cube)
  assert cube.s2_reflectance.dtype == np.float32 and cube.s1_gamma0.dtype == np.float32
  assert cube.s2_reflectance.shape == (24, 10, 24, 24) and cube.cloud_mask.dtype == np.uint8
  assert 0.0 <= cube.s2_reflectance.min() and cube.s2_reflectance.max() <= 1.0
  assert np.isfinite(cube.s1_gamma0).all() and (cube.s1_gamma0 > 0).all()
  assert cube.meta.land_cover == "DBF" and cube.crs == "EPSG:32631"
  s2_hours = (cube.s2_time - cube.s2_time.astype("datetime64[D]")).astype("timedelta64[m]").astype(int) / 60
  assert np.all((s2_hours > 9.5) & (s2_hours < 11.0))
  s1_hours = (cube.s1_time - cube.s1_time.astype("datetime64[D]")).astype("timedelta64[m]").astype(int) / 60
  ascending = cube.s1_orbit_direction == "ascending"
  assert ascending.any() and (~ascending).any()
  assert np.all((s1_hours[ascending] > 16.5) & (s1_hours[ascending] < 18.5))
  assert np.all((s1_hours[~ascending] > 4.5) & (s1_hours[~ascending] < 6.5))
  assert len(set(cube.s1_relative_orbit[ascending])) == 1 and len(set(cube.s1_relative_orbit)) == 2
  gaps = np.diff(cube.s1_time[ascending].astype("datetime64[D]").astype(int))
  assert set(gaps) <= {6, 12}


def test_tower_is_the_centre_pixel():
  import rasterio.warp
  for land_cover in ("CRO", "ENF", "GRA", "MF"):
    cube = demo_world.make_site_cube(2, size=25, days=20, land_cover=land_cover)
    xs, ys = rasterio.warp.transform("EPSG:4326", cube.crs, [cube.meta.lon], [cube.meta.lat])
    a, _, c, _, e, f = cube.transform
    assert int((xs[0] - c) // a) == 12 and int((ys[0] - f) // e) == 12
    assert c % 10 == 0 and f % 10 == 0 and cube.crs.startswith("EPSG:326")


def test_world_files_match_the_contract(world: Path, tmp_path: Path):
  sites = pd.read_csv(world / "sites.csv")
  assert list(sites.columns) == ["site_id", "lon", "lat", "land_cover", "utm_epsg", "flux_file"]
  assert len(sites) == 6 and {"CRO", "DBF", "ENF", "GRA", "MF"} <= set(sites.land_cover)
  assert sites.lon.between(-10, 30).all() and sites.lat.between(40, 65).all()
  assert sites.utm_epsg.between(32629, 32635).all()
  assert [p.name for p in cube_io.find_cubes(world)] == sorted(sites.site_id)
  for row in sites.itertuples():
    cube = cube_io.read_cube(world / "cubes" / row.site_id)
    assert cube.meta.site_id == row.site_id and cube.meta.land_cover == row.land_cover
    assert cube.crs == f"EPSG:{row.utm_epsg}"
    expected = demo_world.simulate_site(demo_world.SiteSpec(row.site_id, row.lon, row.lat, row.land_cover),
                                        seed=3, size=24, start="2019-01-01", days=120).cube
    np.testing.assert_array_equal(cube.s2_reflectance, expected.s2_reflectance)
    np.testing.assert_array_equal(cube.s1_time, expected.s1_time)
    flux = world / row.flux_file
    assert flux.exists() and flux.name == f"FLX_{row.site_id}_FLUXNET2015_FULLSET_DD_2019-2019_1-4.csv"
  # Bitwise determinism of every file, through the command line entry point.
  demo_world.main(["--out", str(tmp_path), "--seed", "3", "--size", "24", "--sites", "6", "--days", "120"])
  files = sorted(p.relative_to(world) for p in world.rglob("*") if p.is_file())
  assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
  for name in files:
    assert (world / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_smaller_world_replaces_stale_sites(tmp_path: Path):
  demo_world.make_world(tmp_path, seed=1, size=16, sites=3, days=30)
  with pytest.raises(demo_world.WorldError, match="holds a demo world.*--overwrite"):
    demo_world.make_world(tmp_path, seed=1, size=16, sites=2, days=30)
  assert len(cube_io.find_cubes(tmp_path)) == 3
  demo_world.make_world(tmp_path, seed=1, size=16, sites=2, days=30, overwrite=True)
  assert len(cube_io.find_cubes(tmp_path)) == 2 and len(list((tmp_path / "flux").glob("*.csv"))) == 2
  assert not list(tmp_path.glob(".*"))   # no staging folder left


def test_cloud_statistics(crop_year: demo_world.SiteSimulation):
  mask = crop_year.cube.cloud_mask
  clear_fraction = (mask == CLOUD_CLEAR).mean(axis=(1, 2))
  assert np.mean((clear_fraction > 0) & (clear_fraction < 1)) > 0.5   # mostly partly cloudy
  assert np.sum(clear_fraction == 1) >= 3 and np.sum(clear_fraction == 0) >= 3
  for cls in (CLOUD_THICK, CLOUD_THIN, CLOUD_SHADOW):
    assert (mask == cls).any()
  s2 = crop_year.cube.s2_reflectance
  # Per pixel, compare against its own clear-sky median: clouds bright, thin clouds bluer, shadows dark.
  clear_median = np.nanmedian(np.where((mask == CLOUD_CLEAR)[:, None], s2, np.nan), axis=0)
  ratio = s2 / np.maximum(clear_median[None], 1e-3)
  assert np.median(ratio[:, B02][mask == CLOUD_THICK]) > 3
  assert np.median(ratio[:, B02][mask == CLOUD_THIN]) > 1.5
  assert np.median(ratio[:, B02][mask == CLOUD_THIN]) > np.median(ratio[:, B08][mask == CLOUD_THIN])
  assert np.median(ratio[:, B08][mask == CLOUD_SHADOW]) < 0.5
  # Shadows sit away from their clouds (offset from sun geometry), mostly north-west in the morning sun.
  offsets = crop_year.shadow_offset_px
  assert (np.hypot(*offsets.T) > 20).all() and (offsets[:, 0] < 0).all() and (offsets[:, 1] < 0).all()


def test_shadow_is_the_thick_cloud_shifted_by_the_offset():
  rng = np.random.default_rng(0)
  offsets = np.array([[5, -3]] * 4 + [[-7, 2]] * 4)
  opacity, density, shadow = demo_sensors.cloud_fields(rng, np.full(8, 0.3), 40, offsets)
  thick = opacity >= 0.75
  np.testing.assert_array_equal(shadow[:4, 5:, :-3], thick[:4, :-5, 3:])
  np.testing.assert_array_equal(shadow[4:, :-7, 2:], thick[4:, 7:, :-2])
  assert 0.15 < thick.mean() < 0.45 and (density[thick] > 0).all()


def test_ndvi_seasonal_amplitude():
  for land_cover, min_amplitude in (("CRO", 0.45), ("DBF", 0.3), ("GRA", 0.1)):
    spec = demo_world.SiteSpec("XX-T1", 8.0, 50.0, land_cover)
    ndvi = _tower_ndvi(demo_world.simulate_site(spec, seed=2, size=24, days=365))
    assert ndvi.size >= 5
    assert ndvi.max() - ndvi.min() > min_amplitude, land_cover
    assert 0.1 < ndvi.min() and ndvi.max() < 0.92, land_cover
  spec = demo_world.SiteSpec("XX-T1", 8.0, 50.0, "ENF")
  ndvi = _tower_ndvi(demo_world.simulate_site(spec, seed=2, size=24, days=365))
  assert ndvi.min() > 0.5 and ndvi.max() - ndvi.min() < 0.3


def test_s1_levels_and_speckle(crop_year: demo_world.SiteSimulation):
  landscape, gamma0 = crop_year.landscape, crop_year.cube.s1_gamma0
  tower_unit = landscape.unit_map == landscape.unit_map[landscape.tower_rc]
  assert tower_unit.sum() > 100
  for pol in (0, 1):   # ENL = mean^2 / var on a homogeneous field, per date, before any filtering
    values = gamma0[:, pol][:, tower_unit].astype(np.float64)
    enl = np.mean(values.mean(axis=1) ** 2 / values.var(axis=1))
    assert abs(enl - demo_sensors.S1_ENL) < 0.1 * demo_sensors.S1_ENL
  kind = landscape.pixel_kind
  for k, (vv_range, vh_range) in {demo_landscape.CROP: ((-15, -8), (-23, -14)),
                                  demo_landscape.DBF: ((-11, -6), (-17, -11)),
                                  demo_landscape.WATER: ((-26, -17), (-31, -25))}.items():
    if (kind == k).any():
      vv_db, vh_db = 10 * np.log10(gamma0[:, :, kind == k].mean(axis=(0, 2)))
      assert vv_range[0] < vv_db < vv_range[1] and vh_range[0] < vh_db < vh_range[1], demo_landscape.KINDS[k]


def test_vv_rises_after_rain(crop_year: demo_world.SiteSimulation):
  weather, day = crop_year.weather, crop_year.s1_day_index
  kind = crop_year.landscape.pixel_kind
  low = (kind == demo_landscape.CROP) | (kind == demo_landscape.GRASS)
  vv_db = 10 * np.log10(crop_year.cube.s1_gamma0[:, 0][:, low].mean(axis=1))
  morning = crop_year.cube.s1_orbit_direction == "descending"
  recent_rain = weather.precip[day - 1] + weather.precip[day - 2] + np.where(morning, 0, weather.precip[day])
  week_rain = np.array([weather.precip[d - 6:d + 1].sum() for d in day])
  wet, dry = recent_rain > 8, week_rain < 1
  assert wet.sum() >= 5 and dry.sum() >= 5
  assert vv_db[wet].mean() - vv_db[dry].mean() > 1.0


def test_flux_file(world: Path):
  sites = pd.read_csv(world / "sites.csv")
  all_flux = []
  for row in sites.itertuples():
    raw = pd.read_csv(world / row.flux_file)
    assert tuple(raw.columns) == demo_weather.FLUX_COLUMNS
    assert len(raw) == 365 and str(raw.TIMESTAMP.iloc[0]) == "20190101" and str(raw.TIMESTAMP.iloc[-1]) == "20191231"
    assert raw.dtypes.drop("TIMESTAMP").map(lambda d: d.kind == "f" or d.kind == "i").all()
    assert (raw == -9999).any().any()
    flux = raw.replace(-9999, np.nan)
    for qc in [c for c in flux.columns if c.endswith("_QC")]:
      assert flux[qc].dropna().between(0, 1).all(), qc
    assert (flux.NEE_VUT_REF_QC < 0.5).any() and (flux.NEE_VUT_REF_QC > 0.8).any()
    assert (flux.SW_IN_F <= flux.SW_IN_POT + 1e-3).all() and flux.VPD_F.min() >= 0
    month = pd.to_datetime(raw.TIMESTAMP.astype(str)).dt.month
    gpp = flux.GPP_NT_VUT_REF
    assert gpp[month.isin([6, 7, 8])].mean() > 2 * max(gpp[month.isin([1, 2, 12])].mean(), 0.3), row.site_id
    partitioned = gpp.notna()   # NEE is gap-filled everywhere; NT partitioning has its own gaps
    assert flux.NEE_VUT_REF.notna().all()
    assert np.allclose(flux.NEE_VUT_REF[partitioned],
                       (flux.RECO_NT_VUT_REF - flux.GPP_NT_VUT_REF)[partitioned], atol=2e-4)
    all_flux.append(flux)
  gpp = pd.concat(all_flux).GPP_NT_VUT_REF.dropna()
  assert gpp.quantile(0.01) > -2 and gpp.max() < 25 and gpp.quantile(0.99) > 8


# ---------------------------------------------------------------------------------------------
# Truth for evaluation (never written into cubes): exactly what the sensors saw before noise.
# ---------------------------------------------------------------------------------------------
def test_truth_s1_is_the_cube_before_speckle(crop_year: demo_world.SiteSimulation):
  sim = crop_year
  truth = sim.truth_s1(sim.s1_day_index, sim.s1_direction)
  # Replay the S1 stream: wind, built-up levels, then the speckle that multiplies the truth.
  rng = np.random.default_rng([5, demo_world.zlib.crc32(b"XX-Cr1"), demo_world.S1])
  rng.exponential(0.25, len(sim.s1_day_index))
  rng.standard_normal(sim.land_cover_kind.shape)
  speckle = rng.gamma(demo_sensors.S1_ENL, 1.0 / demo_sensors.S1_ENL, truth.shape).astype(np.float32)
  np.testing.assert_array_equal(sim.cube.s1_gamma0, truth * speckle)
  # Any day: the same track's geometry; a day between acquisitions is finite and in the sensor's range.
  other = sim.truth_s1(np.arange(100, 110), "descending")
  assert other.shape == (10, 2, 32, 32) and np.isfinite(other).all() and 1e-4 < np.median(other) < 1


def test_truth_s2_matches_clear_observations(crop_year: demo_world.SiteSimulation):
  sim = crop_year
  truth = sim.truth_s2(sim.s2_day_index)
  clear = sim.cube.cloud_mask == CLOUD_CLEAR
  error = np.abs(sim.cube.s2_reflectance - truth).transpose(1, 0, 2, 3)[:, clear]
  assert truth.shape == sim.cube.s2_reflectance.shape and 0 <= truth.min() and truth.max() <= 1
  assert np.median(error) < 0.01                       # noise 0.003 + 1 %, per-date gain 1.5 %, haze
  daily = sim.truth_s2(np.arange(150, 160))            # every day, not only acquisitions
  assert daily.shape == (10, 10, 32, 32) and np.abs(np.diff(daily, axis=0)).mean() < 0.01


def test_truth_per_pixel_values_and_labels(crop_year: demo_world.SiteSimulation):
  sim = crop_year
  kinds = sim.land_cover_kind
  assert kinds.shape == sim.parcel_id.shape == (32, 32) and len(sim.KIND_NAMES) == len(demo_landscape.KINDS)
  rows, cols = sim.landscape.footprint()
  assert (kinds[rows, cols] == demo_landscape.CROP).all() and len(np.unique(sim.parcel_id[rows, cols])) == 1
  days = sim.day_index(["2019-01-15", "2019-06-15"])
  green, vwc = sim.green_cover(days), sim.vegetation_water_content(days)
  crop = kinds == demo_landscape.CROP
  assert green.shape == vwc.shape == (2, 32, 32) and ((green >= 0) & (green <= 1)).all()
  assert green[1][crop].mean() > green[0][crop].mean() and vwc[1][crop].mean() > vwc[0][crop].mean()
  assert sim.surface_soil_moisture(days).shape == (2,)
  # The footprint's fAPAR is 0.95 x its Gaussian-weighted green cover.
  footprint_green = sim.green_cover(days)[:, rows, cols].mean(axis=(1, 2))
  np.testing.assert_allclose(sim.fapar[days], 0.95 * footprint_green, atol=0.05)
  with pytest.raises(ValueError, match="outside"):
    sim.day_index(["2030-01-01"])


def test_simulation_without_sensors_has_the_same_truth(crop_year: demo_world.SiteSimulation):
  spec = demo_world.SiteSpec("XX-Cr1", 10.9, 51.1, "CRO")
  light = demo_world.simulate_site(spec, seed=5, size=32, start="2019-01-01", days=365, sensors=False)
  assert light.cube is None
  np.testing.assert_array_equal(light.gpp, crop_year.gpp)
  np.testing.assert_array_equal(light.truth_s1(light.s1_day_index, light.s1_direction),
                                crop_year.truth_s1(crop_year.s1_day_index, crop_year.s1_direction))


def test_evaluation_truth_provider(world: Path):
  from earthrep.evaluation.truth import TruthError
  provider = demo_world.evaluation_truth(world)
  site = pd.read_csv(world / "sites.csv")["site_id"].iloc[0]
  cube = cube_io.read_cube(world / "cubes" / site)
  truth = provider(site, cube)
  flux = pd.read_csv(next((world / "flux").glob(f"*_{site}_*")), na_values=[-9999])
  simulated = pd.Series(truth.flux_gpp, index=truth.days).reindex(pd.to_datetime(flux["TIMESTAMP"].astype(str)))
  np.testing.assert_allclose(simulated, flux["GPP_NT_VUT_REF"], atol=1e-3)   # the same world
  assert truth.kind.shape == cube.shape_hw and truth.kind_names[0] == "crop"
  values = truth.pixel_values(np.array(["2019-02-01"], "datetime64[D]"))
  assert set(values) == {"green_cover", "vegetation_water_content", "surface_soil_moisture"}
  assert values["green_cover"].shape == (1, *cube.shape_hw)
  moved = cube_io.SiteCube(cube.meta, cube.crs, (10.0, 0.0, cube.transform[2] + 10, 0.0, -10.0, cube.transform[5]),
                           cube.s2_reflectance, cube.cloud_mask, cube.s2_time, cube.s1_gamma0, cube.s1_time,
                           cube.s1_orbit_direction)
  with pytest.raises(TruthError, match="not on the simulated grid"):
    provider(site, moved)
