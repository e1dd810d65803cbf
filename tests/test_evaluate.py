"""earthrep.evaluation: nested selection never lets a held-out site (or year) choose its own model; folds,
designs, ridge paths, metrics with intervals; the per-pixel probes on a tiny world; embedding crops on the
cube's grid and their cache keys."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from earthrep.evaluation import designs, metrics, nested, probes
from earthrep.evaluation import regressors as reg
from earthrep.evaluation import splits

LAND_COVER = {"S0": "CRO", "S1": "CRO", "S2": "DBF", "S3": "ENF", "S4": "GRA", "S5": "MF"}


def _site(index: int) -> nested.SiteData:
  """Column `a` marks the site (100 x index), column `b` the calendar year; GPP follows the season."""
  sid = f"S{index}"
  days = pd.date_range("2019-01-01", "2020-12-31")
  rng = np.random.default_rng(index)
  season = np.sin(2 * np.pi * days.day_of_year / 365.0)
  toy = pd.DataFrame({"a": 100.0 * index + season, "b": days.year.astype(float)}, index=days)
  met = pd.DataFrame({"sw_in_w_m2": 200 + 100 * season, "ta_c": 10 + 8 * season,
                      "vpd_hpa": 8 + 4 * season + rng.normal(0, 1, len(days))}, index=days)
  gpp = 5 + 4 * season + rng.normal(0, 0.3, len(days))
  return nested.SiteData(sid, days, gpp, np.ones(len(days), bool), {"toy": toy}, met, LAND_COVER[sid])


class _Spy:
  """Stands in for every regressor and records the marker columns of each array it is given."""
  seen: list[np.ndarray] = []

  def __init__(self, *args, **kwargs):
    self.losses, self.val_losses, self.best_step = [0.0], [], 1

  @classmethod
  def record(cls, x: np.ndarray) -> None:
    cls.seen.append(np.asarray(x).reshape(len(x), -1)[:, :2].copy() if x.ndim == 2 else x[:, -1, :2].copy())

  def fit(self, x, y, val_x=None, val_y=None):
    self.record(x)
    if val_x is not None:
      self.record(val_x)
    self.mean = float(np.mean(y))
    return self

  def predict(self, x):
    return np.full(len(x), self.mean)


@pytest.fixture
def spied(monkeypatch):
  _Spy.seen = []

  def fit_path(x, y, x_eval, alphas=reg.RIDGE_ALPHAS):
    _Spy.record(x), _Spy.record(x_eval)
    return np.zeros((len(alphas), len(x_eval))) + np.mean(y)

  def curve(leaves, x, y, x_val, y_val, seed=0):
    _Spy.record(x), _Spy.record(x_val)
    return np.linspace(2, 1, reg.HGB_MAX_ITER)

  monkeypatch.setattr(reg.Ridge, "fit_path", staticmethod(fit_path))
  monkeypatch.setattr(reg, "Ridge", type("Ridge", (_Spy,), {"fit_path": staticmethod(fit_path)}))
  monkeypatch.setattr(reg, "hgb_validation_curve", curve)
  monkeypatch.setattr(reg, "boosted_trees", lambda *a, **k: _Spy())
  monkeypatch.setattr(reg, "TransformerRegressor", _Spy)
  return _Spy


@pytest.mark.parametrize("kind", reg.REGRESSORS)
def test_nested_leave_sites_out_never_selects_with_the_held_out_site(spied, kind):
  sites = [_site(i) for i in range(6)]
  combo = nested.make_combo(sites, "toy", "x_met")
  usable = nested.usable_days(sites, [combo], 30)
  rows = nested.make_rows(combo, sites, usable, 30, train_stride=7)
  folds = splits.outer_folds("loso", [s.site_id for s in sites], LAND_COVER, 3)
  assert sorted(s for f in folds for s in f.test_sites) == [s.site_id for s in sites]   # a partition
  for fold in folds:
    spied.seen = []
    result = nested.run_fold(kind, rows, fold, LAND_COVER, n_inner=2, config=reg.TransformerConfig(steps=2))
    held = {int(s[1:]) for s in fold.test_sites}
    touched = {int(v) for x in spied.seen for v in np.floor(x[:, 0] / 100 + 0.5)}   # site markers
    assert touched and not touched & held, (fold.name, touched, held)
    assert not (result.selection_sites | result.fit_sites) & fold.test_sites
    assert set(rows.site[result.test_index]) == set(fold.test_sites)
    assert len(spied.seen) >= (4 if kind == "ridge" else 2)        # inner folds were used, not skipped
    assert "selection" not in result.hyper


def test_nested_leave_year_out_never_sees_the_test_year(spied):
  sites = [_site(i) for i in range(4)]
  combo = nested.make_combo(sites, "toy", "x")
  rows = nested.make_rows(combo, sites, nested.usable_days(sites, [combo], 30), 30, train_stride=5)
  folds = splits.outer_folds("temporal", [s.site_id for s in sites], LAND_COVER, 0, [2019, 2020])
  assert [f.name for f in folds] == ["year_2019", "year_2020"]
  for fold in folds:
    for kind in reg.REGRESSORS:
      spied.seen = []
      result = nested.run_fold(kind, rows, fold, LAND_COVER, 2, reg.TransformerConfig(steps=2))
      years = {int(v) for x in spied.seen for v in x[:, 1]}
      assert years == {2019, 2020} - {fold.test_year} and result.years == years
      assert (pd.DatetimeIndex(rows.date[result.test_index]).year == fold.test_year).all()


def test_one_training_site_says_nothing_was_selected():
  sites = [_site(0), _site(2)]
  combo = nested.make_combo(sites, "toy", "x")
  rows = nested.make_rows(combo, sites, nested.usable_days(sites, [combo], 30), 30, 7)
  fold = splits.outer_folds("loso", ["S0", "S2"], LAND_COVER, 0)[0]
  result = nested.run_fold("ridge", rows, fold, LAND_COVER, 3, reg.TransformerConfig())
  assert result.hyper == {"alpha": 1.0, "selection": "none: one training site"}


def test_site_groups_mix_land_covers_and_spread():
  groups = splits.site_groups(list(LAND_COVER), LAND_COVER, 3)
  assert sorted(sum(groups, [])) == sorted(LAND_COVER) and all(len(g) == 2 for g in groups)
  assert all(len({LAND_COVER[s] for s in g}) == 2 for g in groups)
  assert splits.site_groups(list(LAND_COVER), LAND_COVER, 0) == [[s] for s in sorted(LAND_COVER)]
  inner = splits.inner_groups(["S1", "S2", "S3", "S4"], LAND_COVER, 3)
  assert sorted(sum(inner, [])) == ["S1", "S2", "S3", "S4"]
  assert splits.spread(list(LAND_COVER), LAND_COVER, 4) == ["S0", "S2", "S3", "S4"]
  assert splits.spread(list(LAND_COVER), LAND_COVER, 2, priority={"S1": 5}) == ["S1", "S2"]   # S1 before S0


def test_ridge_path_matches_single_fits():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 5)) * [1, 10, 100, 0.1, 1]
  y = x @ [1.0, 0.1, 0.01, 10.0, 0.0] + rng.normal(0, 0.1, 200)
  path = reg.Ridge.fit_path(x[:150], y[:150], x[150:])
  for i in (0, 7, 14):
    single = reg.Ridge(reg.RIDGE_ALPHAS[i]).fit(x[:150], y[:150]).predict(x[150:])
    np.testing.assert_allclose(path[i], single, rtol=1e-4, atol=1e-4)
  assert np.corrcoef(path[0], y[150:])[0, 1] > 0.99                  # small alpha: the linear truth


def test_summary_features_by_hand():
  table = np.arange(40, dtype=np.float32).reshape(20, 2)
  table[3, 1] = np.nan
  ends = reg.window_ends(table, np.ones(20), np.ones(20, bool), window_days=5, stride=2)
  assert ends.tolist() == [8, 10, 12, 14, 16, 18]                   # day 3 spoils windows ending 3..7
  summary = reg.summary_features(table, ends[:1], window_days=5)
  assert summary.tolist() == [[16, 17, 12, 13, 12, 13]]            # last day, 5-day mean, (<=30-day) mean


def test_designs():
  days = pd.date_range("2020-06-01", periods=3)
  met = pd.DataFrame({"sw_in_w_m2": [100.0, 200, 300], "ta_c": [-8.0, 2.01, 30], "vpd_hpa": [5.0, 24.75, 50]},
                     index=days)
  x = pd.DataFrame({"NDVI": [0.2, 0.5, 0.8]}, index=days)
  scalar = designs.lue_scalar(met)
  np.testing.assert_allclose(scalar, [0.0, 200 * 0.5 * 0.5, 0.0])   # f(T) 0, 1/2, 1; f(VPD) 1, 1/2, 0
  lue = designs.design_table("lue", x, met, days)
  assert list(lue.columns) == ["S", "NDVI*S"] and lue["NDVI*S"].iloc[1] == pytest.approx(0.5 * 50)
  assert list(designs.design_table("x_met", x, met, days).columns) == ["NDVI", "sw_in_w_m2", "ta_c", "vpd_hpa"]
  assert list(designs.design_table("x", x, None, days).columns) == ["NDVI"]
  with pytest.raises(ValueError, match="needs meteorology"):
    designs.design_table("lue", x, None, days)


def test_pooled_metrics_from_sums_and_intervals():
  rng = np.random.default_rng(1)
  frames = []
  for i in range(8):
    obs = rng.gamma(2, 2, 100)
    frames.append(pd.DataFrame({"site": f"S{i}", "date": pd.date_range("2020-01-01", periods=100), "obs": obs,
                                "pred": obs + rng.normal(0.2 * i, 1, 100)}))
  predictions = pd.concat(frames, ignore_index=True)
  site_ids = [f"S{i}" for i in range(8)]
  stats = metrics.site_stats(predictions, site_ids)
  pooled = metrics.score(predictions).set_index("site").loc["pooled"]
  from_sums = metrics.from_stats(stats.sum(0))
  for name in ("r2", "rmse", "bias"):
    assert from_sums[name] == pytest.approx(pooled[name], rel=1e-9)
  counts = metrics.bootstrap_draws(8, 500, seed=0)
  assert counts.shape == (500, 8) and (counts.sum(1) == 8).all()
  ci = metrics.intervals(stats[None], counts)
  assert ci["r2_lo"][0] < pooled["r2"] < ci["r2_hi"][0] and ci["bias_lo"][0] < pooled["bias"] < ci["bias_hi"][0]
  worse = predictions.assign(pred=predictions["pred"] + rng.normal(0, 2, len(predictions)))
  diff = metrics.paired_differences(stats, metrics.site_stats(worse, site_ids), counts)
  assert diff["r2"] > 0 and diff["r2_lo"] > 0 and diff["rmse"] < 0


# ---------------------------------------------------------------------------------------------
# Probes on a tiny demo world (baselines from the cubes, truth from the simulator).
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def probe_sites(tiny_world):
  from data_prep import demo_world
  from earthrep.evaluation import sites as sites_lib
  towers, notes = sites_lib.load_towers(tiny_world / "cubes", tiny_world / "flux")
  provider = demo_world.evaluation_truth(tiny_world)
  out = []
  for tower in towers:
    truth = provider(tower.site_id, tower.load().cube)
    site = sites_lib.probe_site(tower, ["bands", "ndvi", "s1"], None, truth, probe_px=20, n_dates=6)
    rng = np.random.default_rng(len(out))
    site.features["noise"] = rng.normal(size=site.features["ndvi"].shape).astype(np.float32)
    out.append(site)
  return out


def test_probe_data_share_pixel_dates_and_truth(probe_sites):
  for site in probe_sites:
    t, h, w = site.valid().shape
    assert (h, w) == (20, 20) and 2 <= t <= 6 and site.valid().mean() > 0.5
    assert all(v.shape[:3] == (t, h, w) for v in site.features.values())
    assert set(site.values) == {"green_cover", "vegetation_water_content", "surface_soil_moisture"}
    assert site.kind.shape == site.parcel.shape == (h, w) and len(np.unique(site.parcel)) >= 2
    # Features and truth share the grid: NDVI follows the pixel's own green cover, not its neighbour's.
    valid, ndvi, green = site.valid(), site.features["ndvi"][..., 0], site.values["green_cover"]
    aligned = np.corrcoef(ndvi[valid], green[valid])[0, 1]
    shifted = [np.corrcoef(ndvi[valid], np.roll(green, s, axis=(1, 2))[valid])[0, 1]
               for s in ((0, 1), (1, 0), (0, -1), (-1, 0))]
    assert aligned > 0.75 and aligned > max(shifted) + 0.05


def test_probes_tell_informative_features_from_noise(probe_sites):
  from data_prep.demo_world import SiteSimulation
  result = probes.run(probe_sites, SiteSimulation.KIND_NAMES, n_folds=0)
  land = result["land_cover"].set_index("feature_set")
  assert land.loc["bands", "balanced_accuracy"] > land.loc["noise", "balanced_accuracy"] + 0.15
  matrix = result["confusion"]["bands"]
  assert matrix.shape == (7, 7) and np.allclose(matrix.sum(1)[matrix.sum(1) > 0], 1)
  regression = result["regression"].set_index(["target", "feature_set"])
  assert regression.loc[("green_cover", "bands"), "r2"] > 0.6 > regression.loc[("green_cover", "noise"), "r2"]
  contrast = result["contrast"].set_index("feature_set")
  assert contrast.loc["ndvi", "contrast"] > 1.3 and 0.8 < contrast.loc["noise", "contrast"] < 1.2
  noise = contrast.loc["noise"]
  assert noise["contrast_lo"] <= noise["contrast"] <= noise["contrast_hi"]


# ---------------------------------------------------------------------------------------------
# Embedding crops: on the cube's grid, cached by key.
# ---------------------------------------------------------------------------------------------
def test_embedding_crop_is_on_the_cube_grid_and_cached_by_key(tiny_world, tmp_path):
  from earthrep.evaluation.embeddings import CacheError, Crop, Embedder
  from earthrep.io.cube import pixel_centre_coords, read_cube
  from tests.helpers import random_fusion, save_fusion_dir
  model_dir = save_fusion_dir(*random_fusion("test"), tmp_path / "model")
  site = sorted(p.name for p in (tiny_world / "cubes").iterdir())[0]
  cube_path = tiny_world / "cubes" / site
  cube = read_cube(cube_path)
  crop = Crop.around((30, 12), 4, cube.shape_hw)
  assert dataclasses.astuple(crop) == (21, 3, 18, 18)
  embedder = Embedder(model_dir, tmp_path / "cache", log=lambda m: None)
  fc = embedder.feature_cube(site, cube, cube_path, crop, "s2", "clear")
  x, y = pixel_centre_coords(cube.transform, *cube.shape_hw)
  np.testing.assert_allclose(fc.x, x[crop.c0 + 7:crop.c0 + 11]) and np.testing.assert_allclose(
      fc.y, y[crop.r0 + 7:crop.r0 + 11])
  assert fc.values_fthw.shape[2:] == (4, 4) and np.isfinite(fc.values_fthw).any()
  seconds = dict(embedder.seconds)
  again = embedder.feature_cube(site, cube, cube_path, crop, "s2", "clear")      # reused, not recomputed
  assert embedder.seconds == seconds and np.array_equal(again.values_fthw, fc.values_fthw, equal_nan=True)
  stored = next((tmp_path / "cache" / site).glob("s2_clear_*.zarr"))
  import zarr
  zarr.open_group(stored, mode="r+").attrs["evaluation_key"] = "another model"
  with pytest.raises(CacheError, match="evaluation_key"):
    embedder.feature_cube(site, cube, cube_path, crop, "s2", "clear")
  other = embedder.feature_cube(site, cube, cube_path, Crop.around((20, 20), 4, cube.shape_hw), "s2", "clear")
  assert not np.allclose(other.x, fc.x)                                          # another crop, another entry
