"""Window rules: clear dates (first/last 5, the 3.5 % rule, >= 200-day replacement), any-day windows (hidden
centre, nearest S1, delta_days, invalid days) and the pixel validity rules."""
from __future__ import annotations

import numpy as np
import pytest

from data_prep.demo_world import make_site_cube
from earthrep.data import windows as W
from earthrep.schema import datetime_to_days


@pytest.fixture(scope="module")
def merged():
  return W.merge(make_site_cube(0, size=24, days=200))


def _synthetic(days, clear_fraction=None, size=20):
  """Merged series with S2 on `days` (all clear unless `clear_fraction` per date) and S1 every 3 days."""
  t = len(days)
  s2 = np.full((t, size, size, 10), 0.2, np.float32)
  if clear_fraction is not None:
    for i, frac in enumerate(clear_fraction):
      n = int(round(frac * size * size))
      flat = s2[i].reshape(-1, 10)
      flat[n:] = np.nan
  s2_time = (np.asarray(days, "datetime64[D]") + np.timedelta64(10, "h")).astype("datetime64[ns]")
  s1_days = np.arange(days[0] - 3, days[-1] + 4, 3)
  s1_time = (np.asarray(s1_days, "datetime64[D]") + np.timedelta64(5, "h")).astype("datetime64[ns]")
  return W.Merged(s2, s2_time, np.full((len(s1_days), size, size, 2), 0.5, np.float32), s1_time)


def test_merge_keeps_dates_with_any_valid_value(merged):
  assert len(merged.s2_time) > 0
  assert (~np.isnan(merged.s2_thwc)).reshape(len(merged.s2_time), -1).any(axis=1).all()


def test_clear_windows_skip_first_and_last_five_and_apply_the_clear_rule():
  days = np.arange(20) * 5 + 18000
  # interior of a 20 px grid = 6x6 = 36 px; 3.5 % -> 2 px; fraction of the *full* grid set clear row-major
  frac = np.ones(20)
  frac[8] = 0.0          # no clear pixel at all
  merged = _synthetic(days, frac)
  merged.s2_thwc[9, 7:13, 7:13] = np.nan        # interior fully cloudy, border clear
  merged.s2_thwc[10, 7:13, 7:13] = np.nan
  merged.s2_thwc[10, 7, 7] = 0.3                # 1 of 36 interior pixels = 2.8 % < 3.5 %
  merged.s2_thwc[11, 7:13, 7:13] = np.nan
  merged.s2_thwc[11, 7, 7:9] = 0.3              # 2 of 36 = 5.6 %
  win = W.clear_windows(merged)
  expected = [i for i in range(5, 15) if i not in (8, 9, 10)]
  np.testing.assert_array_equal(win.s2_frames[:, 5], expected)
  np.testing.assert_array_equal(win.target_days, days[expected])
  np.testing.assert_array_equal(win.s2_frames, np.array(expected)[:, None] + np.arange(-5, 6))
  assert (win.gaps_s2 == 5).all() and not win.hidden_centre


def test_long_windows_get_consecutive_days_and_delta_is_calendar():
  days = np.concatenate([np.arange(5) * 30, [150, 152], np.arange(5) * 30 + 200]) + 18000
  merged = _synthetic(days)
  win = W.clear_windows(merged)
  assert len(win) == 2 and (win.gaps_s2 == 1).all() and (win.gaps_s1 == 1).all()
  s1_days = datetime_to_days(merged.s1_time)
  for n in range(len(win)):
    s1_day = s1_days[win.s1_frames[n, 5]]
    assert win.delta_days[n] == abs(s1_day - win.target_days[n])
    # S1 frame k is the acquisition nearest to S2 frame k
    for k in range(11):
      s2_ns = merged.s2_time[win.s2_frames[n, k]].astype(np.int64)
      best = np.abs(merged.s1_time.astype(np.int64) - s2_ns).min()
      assert abs(merged.s1_time[win.s1_frames[n, k]].astype(np.int64) - s2_ns) == best


def test_anyday_windows_hide_the_centre_and_use_five_dates_each_side():
  days = np.arange(15) * 10 + 18000
  merged = _synthetic(days)
  query = np.array([days[7], days[7] + 3, days[4], days[4] + 1, days[10] - 1, days[10]])
  win = W.anyday_windows(merged, query)
  np.testing.assert_array_equal(win.valid, [True, True, False, True, True, False])
  assert win.hidden_centre and (win.s2_frames[:, 5] == W.HIDDEN).all()
  np.testing.assert_array_equal(win.s2_frames[0], [2, 3, 4, 5, 6, -1, 8, 9, 10, 11, 12])  # day 7 itself hidden
  np.testing.assert_array_equal(win.s2_frames[1], [3, 4, 5, 6, 7, -1, 8, 9, 10, 11, 12])
  np.testing.assert_array_equal(win.gaps_s2[1], [10, 10, 10, 10, 3, 7, 10, 10, 10, 10])
  s1_days = datetime_to_days(merged.s1_time)
  centre_s1 = s1_days[win.s1_frames[:, 5]]
  for n in np.flatnonzero(win.valid):
    assert np.abs(s1_days - query[n]).min() == abs(centre_s1[n] - query[n])
    assert win.delta_days[n] == abs(centre_s1[n] - query[n])
  daily = W.daily_days(merged)
  assert daily[0] == days[4] + 1 and daily[-1] == days[10] - 1
  assert W.anyday_windows(merged, daily).valid.all()


def test_pixel_validity_rules():
  days = np.arange(15) * 10 + 18000
  merged = _synthetic(days)
  merged.s2_thwc[7, 3, 3] = np.nan
  merged.s2_thwc[:, 4, 4] = np.nan
  merged.s2_thwc[2, 4, 4] = 0.1                 # the only valid value of pixel (4, 4): in frame 0 of window 7
  clear = W.clear_windows(merged)
  rows, cols = np.array([3, 4, 5]), np.array([3, 4, 5])
  ok = W.pixel_valid(merged, clear, rows, cols)
  n7 = int(np.flatnonzero(clear.s2_frames[:, 5] == 7)[0])
  assert not ok[n7, 0] and not ok[n7, 1] and ok[n7, 2]
  anyday = W.anyday_windows(merged, [days[7]])
  ok = W.pixel_valid(merged, anyday, rows, cols)
  assert ok[0].tolist() == [True, True, True]   # (4, 4): one valid context frame is enough
  merged.s2_thwc[2, 4, 4] = np.nan
  assert not W.pixel_valid(merged, anyday, rows, cols)[0, 1]


def test_patches_are_nan_outside_and_for_the_hidden_frame(merged):
  win = W.anyday_windows(merged, W.daily_days(merged)[:2])
  x = W.gather_patches(merged.s2_thwc, win.s2_frames, np.array([0, 10]), np.array([0, 10]))
  assert x.shape == (2, 11, 15, 15, 10)
  assert np.isnan(x[:, 5]).all() and np.isnan(x[0, :, :7, :7]).all()
  np.testing.assert_array_equal(x[1, 0], merged.s2_thwc[win.s2_frames[1, 0], 3:18, 3:18])
