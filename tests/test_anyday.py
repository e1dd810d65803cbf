"""The any-day API: shapes, validity, the hidden S2 observation of day d, S2-only models, load_fusion."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import random_fusion, save_fusion_dir
from data_prep.demo_world import make_site_cube
from earthrep.data import windows as W
from earthrep.inference import anyday

SIZE = 16


@pytest.fixture(scope="module")
def setup():
  model, params = random_fusion()
  cube = make_site_cube(0, size=SIZE, days=200)
  return model, params, cube, W.merge(cube)


def test_shapes_validity_and_load(setup, tmp_path):
  model, params, cube, merged = setup
  s2_days = merged.s2_days
  days = np.concatenate([[s2_days[0] - 3, s2_days[2]], W.daily_days(merged)[::20], [s2_days[-1] + 1]])
  res = anyday.embed_days(model, params, cube, 8, 8, days.astype("datetime64[D]"))
  n = len(days)
  assert res.days.dtype == np.dtype("datetime64[D]") and res.days.shape == (n,)
  assert res.embedding.shape == (n, 7) and res.embedding.dtype == np.float32
  assert res.s2_reflectance.shape == (n, 10) and res.valid.shape == (n,)
  assert not res.valid[[0, 1, -1]].any() and res.valid[2:-1].any()
  assert np.isnan(res.embedding[~res.valid]).all() and np.isfinite(res.embedding[res.valid]).all()
  assert np.isfinite(res.s2_reflectance[res.valid]).all()
  # the same through a saved model directory
  loaded_model, loaded_params = anyday.load_fusion(save_fusion_dir(model, params, tmp_path / "m"))
  again = anyday.embed_days(loaded_model, loaded_params, cube, 8, 8, days)
  np.testing.assert_allclose(again.embedding, res.embedding, atol=1e-6)


def test_observation_on_the_day_is_hidden(setup):
  model, params, cube, merged = setup
  i = len(merged.s2_days) // 2
  day = merged.s2_days[i]
  res = anyday.embed_days(model, params, cube, 8, 8, [day])
  assert res.valid[0]
  changed = cube.s2_reflectance.copy()
  t = int(np.flatnonzero(cube.s2_time.astype("datetime64[D]").astype(np.int64) == day)[0])
  changed[t] = np.where(np.isfinite(changed[t]), 0.9, changed[t])   # alter the observation of day d only
  cube2 = type(cube)(**{**cube.__dict__, "s2_reflectance": changed})
  res2 = anyday.embed_days(model, params, cube2, 8, 8, [day])
  np.testing.assert_array_equal(res2.embedding, res.embedding)
  np.testing.assert_array_equal(res2.s2_reflectance, res.s2_reflectance)


def test_s2_only_model(setup):
  _, _, cube, merged = setup
  model, params = random_fusion(sensor_names=("s2",))
  res = anyday.embed_days(model, params, cube, 8, 8, W.daily_days(merged)[::30])
  assert res.valid.any() and np.isfinite(res.embedding[res.valid]).all()


def test_a_centre_head_gives_the_days_reflectance(setup):
  """A fusion model with `centre_head` answers with its head: the decoder's centre pixel at a zero output
  layer, moved by the head otherwise; the embedding does not depend on the head."""
  _, _, cube, merged = setup
  model, params = random_fusion(centre_head=True)
  days = W.daily_days(merged)[::40]
  plain = model.clone(centre_head=False)
  plain_params = {k: v for k, v in params.items() if not k.startswith("centre_")}
  zero = {k: ({**v, "out": {n: np.zeros_like(a) for n, a in v["out"].items()}} if k.startswith("centre_")
              else v) for k, v in params.items()}
  res, base, at_zero = (anyday.embed_days(m, p, cube, 8, 8, days)
                        for m, p in ((model, params), (plain, plain_params), (model, zero)))
  assert res.valid.any()
  np.testing.assert_array_equal(res.embedding, base.embedding)
  np.testing.assert_allclose(at_zero.s2_reflectance, base.s2_reflectance, atol=1e-6)
  assert np.nanmax(np.abs(res.s2_reflectance - base.s2_reflectance)) > 1e-3


def test_an_anchored_centre_head_starts_from_the_interpolation_of_the_pixels_clear_observations(setup):
  """`centre_anchor`: at a zero output layer the day's reflectance is, per band, the linear interpolation
  at the day of the pixel's valid values in the window's 10 context dates (computed here from the merged
  series); the trained head moves it and the embedding does not depend on the head."""
  _, _, cube, merged = setup
  model, params = random_fusion(centre_head=True, centre_anchor=True)
  days = W.daily_days(merged)[::25]
  zero = {k: ({**v, "out": {n: np.zeros_like(a) for n, a in v["out"].items()}} if k.startswith("centre_")
              else v) for k, v in params.items()}
  res, at_zero = (anyday.embed_days(model, p, cube, 8, 8, days) for p in (params, zero))
  plain = anyday.embed_days(model.clone(centre_head=False, centre_anchor=False),
                            {k: v for k, v in params.items() if not k.startswith("centre_")}, cube, 8, 8, days)
  win = W.anyday_windows(merged, days)
  checked = 0
  for i in np.flatnonzero(at_zero.valid):
    frames = win.s2_frames[i][win.s2_frames[i] != W.HIDDEN]
    values, rel = merged.s2_thwc[frames, 8, 8], (merged.s2_days[frames] - days[i]).astype(float)
    for c in range(10):
      ok = np.isfinite(values[:, c])
      if ok[rel < 0].any() and ok[rel > 0].any():   # both sides observed: plain linear interpolation
        np.testing.assert_allclose(at_zero.s2_reflectance[i, c], np.interp(0.0, rel[ok], values[ok, c]),
                                   rtol=1e-5, atol=1e-6)
        checked += 1
  assert checked >= 20
  np.testing.assert_array_equal(res.embedding, plain.embedding)
  assert np.nanmax(np.abs(res.s2_reflectance - at_zero.s2_reflectance)) > 1e-3


def test_gap_regressor_starts_from_the_linear_interpolation_of_the_bracketing_observations():
  """earthrep.evaluation.gap_regressor: samples come from observations only; the regressor predicts a
  correction to the linear interpolation between the pixel's last clear observation before the day and
  its first after it (what benchmarks/anyday_reconstruction.py scores as linear interpolation)."""
  from earthrep.evaluation import gap_regressor as reg_lib
  cube = make_site_cube(0, size=SIZE, days=200)
  x, y = reg_lib.training_set([cube], n_pixels=20, n_targets=10, max_gap=60, seed=0)
  assert len(x) > 20 and x.shape[1] == 10 * 11 + 10 + 3 + 12 and np.isfinite(y).all()
  reg = reg_lib.GapRegressor(max_iter=20).fit(x, y)
  merged = W.merge(cube)
  rows, cols = np.arange(4, 12), np.arange(4, 12)
  day = int(merged.s2_days[len(merged.s2_days) // 2])
  clear = np.isfinite(merged.s2_thwc[:, rows, cols]).all(axis=-1) & (merged.s2_days != day)[:, None]
  pred = reg.predict(merged, rows, cols, day)

  class Zero:
    def predict(self, x):
      return np.zeros(len(x))
  reg.models = [Zero()] * 10
  lin = reg.predict(merged, rows, cols, day)
  checked = 0
  for i, (r, c) in enumerate(zip(rows, cols)):
    before = np.flatnonzero(clear[:, i] & (merged.s2_days < day))
    after = np.flatnonzero(clear[:, i] & (merged.s2_days > day))
    if len(before) == 0 or len(after) == 0:
      assert np.isnan(pred[i]).all() and np.isnan(lin[i]).all()
      continue
    a, b = before[-1], after[0]
    w = (day - merged.s2_days[a]) / (merged.s2_days[b] - merged.s2_days[a])
    expected = merged.s2_thwc[a, r, c] + w * (merged.s2_thwc[b, r, c] - merged.s2_thwc[a, r, c])
    np.testing.assert_allclose(lin[i], expected, atol=1e-6)
    assert np.isfinite(pred[i]).all()
    checked += 1
  assert checked >= 4
