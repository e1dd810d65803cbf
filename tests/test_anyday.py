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
