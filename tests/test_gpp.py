"""earthrep.gpp and the GPP building blocks of earthrep.evaluation: footprints and the clear-share rule, daily
series, indices, metrics, windows, the transformer with early stopping, and the `earthrep.gpp` alias end to end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from earthrep.evaluation import baselines, features, metrics, regressors


def test_footprint_mask_and_mean():
  x = np.array([5.0, 15.0, 25.0, 35.0, 45.0])
  y = np.array([45.0, 35.0, 25.0, 15.0, 5.0])
  mask = features.footprint_mask(x, y, (25.0, 25.0), 10.0)
  assert mask.sum() == 5 and mask[2, 2] and mask[1, 2] and not mask[1, 1]     # a plus of 5 centres
  assert features.footprint_mask(x, y, (25.0, 25.0), None).all()
  assert features.footprint_mask(x, y, (21.0, 24.0), 1.0).sum() == 1          # nearest pixel
  values_tchw = np.arange(2 * 1 * 5 * 5, dtype=np.float32).reshape(2, 1, 5, 5)
  values_tchw[0, 0, 2, 2] = np.nan
  mean_tc = features.footprint_mean(values_tchw, mask)
  assert mean_tc[0, 0] == pytest.approx(np.mean([7, 11, 13, 17]))
  assert mean_tc[1, 0] == pytest.approx(np.mean([32, 36, 37, 38, 42]))


def test_daily_linear_matches_pandas():
  times = pd.to_datetime(["2020-01-03 10:30", "2020-01-03 11:00", "2020-01-10 10:00", "2020-02-01 10:00"])
  series = pd.DataFrame({"a": [1.0, 3.0, 9.0, np.nan], "b": [0.0, 0.0, np.nan, 4.0]}, index=times)
  days = pd.date_range("2020-01-01", "2020-02-05")
  daily = features.daily_linear(series, days)
  per_day = series.groupby(series.index.normalize()).mean()
  expected = per_day.reindex(days).interpolate(method="time", limit_area="inside").ffill().bfill()
  np.testing.assert_allclose(daily.to_numpy(), expected.to_numpy(), rtol=1e-6)
  assert daily.loc["2020-01-03", "a"] == 2.0                                 # duplicates averaged
  reindexed = features.daily_reindex(series, days)
  assert np.isnan(reindexed.loc["2020-01-04", "a"]) and reindexed.loc["2020-01-10", "a"] == 9.0


def test_ucm_fallback_path():
  days = pd.date_range("2019-01-01", "2020-12-31")
  obs = pd.date_range("2019-01-05", "2020-12-31", freq="5D")
  truth = np.sin(2 * np.pi * obs.day_of_year / 365.0)
  series = pd.DataFrame({"f": truth}, index=obs)
  series.loc["2019-06-01":"2019-08-15", "f"] = np.nan                       # a 75-day gap
  daily, n_fallback = features.daily_ucm(series, days, fit=False)
  assert n_fallback == 2 and np.isfinite(daily["f"]).all()
  assert daily.loc["2020-02-29", "f"] == pytest.approx(
      0.5 * (daily.loc["2020-02-28", "f"] + daily.loc["2020-03-01", "f"]))
  # Short gaps: PCHIP through the observations; the long gap: the other year's climatology.
  assert daily.loc["2020-04-14", "f"] == pytest.approx(np.sin(2 * np.pi * 105 / 365), abs=0.02)
  assert daily.loc["2019-07-10", "f"] == pytest.approx(np.sin(2 * np.pi * 191 / 365), abs=0.1)
  sparse = pd.DataFrame({"f": [1.0, 2.0, 3.0]}, index=pd.to_datetime(["2019-03-01", "2019-05-01", "2019-07-01"]))
  daily, n_fallback = features.daily_ucm(sparse, pd.date_range("2019-01-01", "2019-12-31"))
  assert n_fallback == 1 and np.isfinite(daily["f"]).all()                  # < 5 obs: no fit attempted


def test_ucm_fit_path():
  pytest.importorskip("statsmodels")
  days = pd.date_range("2019-01-01", "2019-12-31")
  obs = pd.date_range("2019-01-03", "2019-12-31", freq="5D")
  noise = np.random.default_rng(0).normal(0, 0.05, len(obs))
  series = pd.DataFrame({"f": np.sin(2 * np.pi * obs.day_of_year / 365.0) + noise}, index=obs)
  daily, n_fallback = features.daily_ucm(series, days)
  assert n_fallback == 0                                                    # the lbfgs fit converged
  assert np.abs(daily["f"] - np.sin(2 * np.pi * days.day_of_year / 365.0)).mean() < 0.1


def test_index_formulas_known_values():
  bands = {"B02": np.array([0.05]), "B03": np.array([0.08]), "B04": np.array([0.1]), "B05": np.array([0.2]),
           "B06": np.array([0.3]), "B07": np.array([0.4]), "B08": np.array([0.5]), "B11": np.array([0.3]),
           "B12": np.array([0.15])}
  out = {k: float(v[0]) for k, v in baselines.spectral_indices(bands).items()}
  ndvi = 0.4 / 0.6
  assert out["NDVI"] == pytest.approx(ndvi)
  assert out["NIRv"] == pytest.approx(ndvi * 0.5)
  assert out["kNDVI"] == pytest.approx(np.tanh(ndvi ** 2))
  assert out["EVI"] == pytest.approx(2.5 * 0.4 / (0.5 + 0.6 - 0.375 + 1.0))
  assert out["SAVI"] == pytest.approx(1.5 * 0.4 / 1.1)
  assert out["NDMI"] == pytest.approx(0.2 / 0.8)
  assert out["NDREI"] == pytest.approx(0.3 / 0.7)
  assert out["GNDVI"] == pytest.approx(0.42 / 0.58)
  assert out["CIRE"] == pytest.approx(0.4 / 0.2 - 1)
  assert out["MTCI"] == pytest.approx(0.1 / 0.1)
  assert out["NBR"] == pytest.approx(0.35 / 0.65)
  assert out["NDWI"] == pytest.approx(-0.42 / 0.58)
  assert set(out) == set(baselines.INDEX_NAMES)


def test_clear_share_rule_is_the_same_for_every_set():
  from data_prep import demo_world
  cube = demo_world.make_site_cube(seed=2, size=24, days=200)
  x, y = features.pixel_centre_coords(cube.transform, 24, 24)
  mask = features.cube_footprint(cube, (x[12], y[12]), features.DEMO_RADIUS_M)
  assert mask.sum() == 25 and mask[10:15, 10:15].all()                    # the demo's 5 x 5 footprint
  share = features.clear_share(cube, mask)
  keep = features.clear_days(cube, mask)
  assert set(keep) == set(share.index[share >= 0.5]) and 0 < len(keep) < len(share)
  s2 = baselines.s2_series(cube, mask, keep)
  assert set(s2.index.normalize()) == set(keep)
  fewer = keep[::2]                                                      # e.g. the dates an embedding has
  assert set(baselines.s2_series(cube, mask, fewer).index.normalize()) == set(fewer)


def test_metrics_by_hand():
  obs = np.array([1.0, 2.0, 3.0, 6.0])
  pred = np.array([1.5, 2.0, 2.0, 7.0])
  m = metrics.metrics(obs, pred, climatology=np.array([1.0, 1.0, 4.0, 4.0]))
  assert m["n"] == 4
  assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1 + 1) / 4))
  assert m["bias"] == pytest.approx(0.5 / 4)
  assert m["nrmse"] == pytest.approx(m["rmse"] / 5.0)
  assert m["nse"] == pytest.approx(1 - 2.25 / 14.0)                         # SST = 2.25+0.25+0.25+9
  assert m["r2"] == pytest.approx(np.corrcoef(obs, pred)[0, 1] ** 2)
  assert m["r2_anom"] == pytest.approx(np.corrcoef([0, 1, -1, 2], [0.5, 1, -2, 3])[0, 1] ** 2)
  cycle = metrics.seasonal_cycle(pd.date_range("2019-01-01", "2019-12-31"), np.full(365, 2.0))
  assert len(cycle) == 366 and np.allclose(cycle, 2.0)                     # 29 Feb from its neighbours


def test_windows_need_complete_features_and_qc():
  features_df = np.ones((100, 2), np.float32)
  features_df[5, 1] = np.nan
  usable = np.ones(100, bool)
  usable[99] = False
  x, y, ends = regressors.make_windows(features_df, np.arange(100.0), usable, window_days=90)
  assert ends.tolist() == [95, 96, 97, 98] and x.shape == (4, 90, 2) and y.tolist() == [95, 96, 97, 98]


def test_transformer_learns_simple_relation():
  rng = np.random.default_rng(0)
  days = 400
  drivers = rng.normal(size=(days, 2)).cumsum(0) * 0.1
  gpp = 3.0 * drivers[:, 0] - drivers[:, 1]
  x, y, _ = regressors.make_windows(drivers, gpp, np.ones(days, bool), window_days=30, stride=2)
  config = regressors.TransformerConfig(d_model=16, heads=2, layers=1, ffn=32, steps=120, batch=16)
  model = regressors.TransformerRegressor(config).fit(x, y)
  assert len(model.losses) == 120 and np.mean(model.losses[-15:]) < 0.5 * np.mean(model.losses[:5])
  again = regressors.TransformerRegressor(config).fit(x, y)
  np.testing.assert_allclose(again.losses, model.losses, rtol=1e-5)   # deterministic given the seed
  assert np.corrcoef(model.predict(x), y)[0, 1] > 0.8


def test_transformer_stops_early_on_validation():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(300, 30, 3)).astype(np.float32)   # the shape of the test above: one compilation
  y = rng.normal(size=300).astype(np.float32)                          # nothing to learn: validation stalls
  config = regressors.TransformerConfig(d_model=16, heads=2, ffn=32, steps=400, batch=16, eval_every=10, patience=3)
  model = regressors.TransformerRegressor(config).fit(x[:200], y[:200], x[200:], y[200:])
  steps, losses = zip(*model.val_losses)
  assert len(model.losses) < 400 and steps[-1] == len(model.losses)   # stopped before the last step
  assert model.best_step == steps[int(np.argmin(losses))] and len(steps) - 1 - int(np.argmin(losses)) == 3
  pred = model.predict(x[200:])                                        # the parameters of the best step
  assert np.mean(np.abs(model.y_scale(pred) - model.y_scale(y[200:]))) == pytest.approx(min(losses), rel=1e-4)


def _fake_feature_cube(cube_path: Path, out: Path) -> None:
  """A feature cube in earthrep.embed's layout: (feature, time, y, x) on the grid without its 7-px border."""
  import xarray as xr
  from earthrep.data.preprocess import prepare_s2
  from earthrep.io.cube import pixel_centre_coords, read_cube
  cube = read_cube(cube_path)
  h, w = cube.shape_hw
  x, y = pixel_centre_coords(cube.transform, h, w)
  s2_thwc = prepare_s2(cube.s2_reflectance, cube.cloud_mask)[:, 7:-7, 7:-7]
  ndvi_thw = (s2_thwc[..., 6] - s2_thwc[..., 2]) / (s2_thwc[..., 6] + s2_thwc[..., 2])
  noise_thw = np.random.default_rng(0).normal(size=ndvi_thw.shape).astype(np.float32)
  features_fthw = np.stack([ndvi_thw, np.where(np.isfinite(ndvi_thw), noise_thw, np.nan)])
  times = np.asarray(cube.s2_time).astype("datetime64[D]").astype("datetime64[ns]")
  ds = xr.Dataset({"features": (("feature", "time", "y", "x"), features_fthw.astype(np.float32),
                                {"grid_mapping": "spatial_ref"})},
                  coords={"feature": ["F01", "F02"], "time": times, "y": y[7:-7], "x": x[7:-7],
                          "spatial_ref": ((), 0, {"crs_wkt": cube.crs})})
  ds.to_zarr(out, mode="w", consolidated=False)


def test_gpp_alias_end_to_end_baselines_and_fake_embedding(tmp_path, capsys):
  from data_prep import demo_world
  from earthrep.gpp import main
  world = tmp_path / "world"
  site_ids = demo_world.make_world(world, seed=5, size=32, sites=3, start="2019-01-01", days=365)
  feature_dir = tmp_path / "feature_cubes"
  for site in site_ids:
    _fake_feature_cube(world / "cubes" / site, feature_dir / "fake" / f"{site}.zarr")
  out = tmp_path / "report"
  args = ["--cubes", str(world / "cubes"), "--flux", str(world / "flux"), "--out", str(out),
          "--features", "fused,fake,ndvi,s1", "--feature-cubes", str(feature_dir), "--regressors", "ridge",
          "--window-days", "30", "--radius-m", "50"]
  assert main(args) == 0
  assert "skipped: fused: no --model" in capsys.readouterr().err
  table = pd.read_csv(out / "metrics.csv")
  assert set(table["feature_set"]) == {"fake", "ndvi", "s1"} and set(table["design"]) == {"x"}
  assert set(table["site"]) == {"pooled", *site_ids} and set(table["split"]) == {"loso"}
  assert len(table) == 3 * (len(site_ids) + 1)
  pooled = table[table["site"] == "pooled"].set_index(["feature_set", "regressor"])
  assert np.isfinite(pooled["rmse"]).all() and (pooled["n"] > 100).all()
  assert (pooled["r2_lo"] <= pooled["r2"] + 1e-9).all() and (pooled["r2"] <= pooled["r2_hi"] + 1e-9).all()
  # The fake set's first feature is NDVI itself: both must score alike on the same days.
  assert pooled.loc[("fake", "ridge"), "n"] == pooled.loc[("ndvi", "ridge"), "n"]
  text = (out / "report.md").read_text()
  assert text.index("## Verdict (loso)") < text.index("## Pooled skill (loso") < text.index("## Per site")
  for name in ("skill_loso.png", "scatter.png", "series.png"):
    assert (out / name).stat().st_size > 1000
  before = (out / "metrics.csv").read_bytes()
  assert main(args) == 2 and "pass --overwrite" in capsys.readouterr().err   # an existing report is kept
  assert (out / "metrics.csv").read_bytes() == before
