"""Preprocessing rules (ARCHITECTURE.md sections a, f): hand-computed examples, pandas, reference vectors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from earthrep.data import preprocess

VECTORS = Path(os.environ.get("EARTHREP_REFERENCE_VECTORS",
                              Path(__file__).resolve().parents[2] / "shared" / "reference" / "vectors"))
NAN = np.nan


def _times(*stamps: str) -> np.ndarray:
  return np.array(stamps, dtype="datetime64[ns]")


def test_prepare_s2_clips_and_masks_all_bands():
  s2_reflectance = np.zeros((2, 10, 1, 3), np.float32)
  s2_reflectance[0, :, 0] = [[-0.1, 1.3, 0.25]] * 10
  s2_reflectance[0, 4, 0, 2] = NAN
  s2_reflectance[1] = 0.5
  cloud_mask = np.array([[[0, 0, 0]], [[0, 2, 255]]], np.uint8)
  s2 = preprocess.prepare_s2(s2_reflectance, cloud_mask)
  assert s2.shape == (2, 1, 3, 10) and s2.dtype == np.float32
  np.testing.assert_array_equal(s2[0, 0, 0], np.zeros(10))
  np.testing.assert_array_equal(s2[0, 0, 1], np.ones(10))
  np.testing.assert_array_equal(s2[0, 0, 2], [0.25] * 4 + [NAN] + [0.25] * 5)
  np.testing.assert_array_equal(s2[1, 0, 0], [0.5] * 10)
  assert np.isnan(s2[1, 0, 1:]).all()


def test_prepare_s1_by_hand():
  # pixel 0 (VV): non-positive values are no data; rolling mean over 3 dates, NaN only if all three are NaN
  vv = [0.1, 0.1, 0.1, NAN, NAN, NAN, 10.0, 0.0, -1.0]
  # pixel 1 (VV): the mean is taken in linear power: (0.01 + 0.19) / 2 = 0.1 -> -10 dB, not the dB mean
  vv_linear_mean = [0.01, 0.19, NAN, NAN, NAN, NAN, NAN, NAN, 1e-4]
  gamma0 = np.full((9, 2, 1, 2), 1.0)
  gamma0[:, 0, 0, 0], gamma0[:, 0, 0, 1] = vv, vv_linear_mean
  s1 = preprocess.prepare_s1(gamma0)
  assert s1.shape == (9, 1, 2, 2) and s1.dtype == np.float32
  minus_10_db = 20 / 35
  np.testing.assert_allclose(s1[:, 0, 0, 0], [minus_10_db] * 4 + [NAN, 1.0, 1.0, 1.0, NAN], atol=1e-6)
  np.testing.assert_allclose(s1[:2, 0, 1, 0], [minus_10_db] * 2, atol=1e-6)
  assert s1[2, 0, 1, 0] == pytest.approx((10 * np.log10(0.19) + 30) / 35, abs=1e-6)   # window cut at NaNs
  assert np.isnan(s1[3:7, 0, 1, 0]).all()
  np.testing.assert_array_equal(s1[7:, 0, 1, 0], [0.0, 0.0])   # 1e-4 = -40 dB, clipped to -30 dB
  np.testing.assert_allclose(s1[..., 1], 30 / 35, atol=1e-6)           # 1.0 = 0 dB


def test_prepare_s1_matches_pandas_rolling():
  rng = np.random.default_rng(0)
  gamma0 = rng.lognormal(np.log(0.05), 1.5, (12, 2, 4, 5))
  gamma0[rng.random(gamma0.shape) < 0.3] = NAN
  gamma0[rng.random(gamma0.shape) < 0.05] = 0.0
  gamma0[rng.random(gamma0.shape) < 0.05] = -0.01
  gamma0[3:6, :, 0, 0] = NAN
  s1 = preprocess.prepare_s1(gamma0.astype(np.float32))
  for c in range(2):
    for y in range(4):
      for x in range(5):
        series = pd.Series(gamma0[:, c, y, x].astype(np.float32).astype(np.float64))
        series = series.where(series > 0)
        smoothed = series.rolling(3, center=True, min_periods=1).mean()
        expected = (np.clip(10 * np.log10(smoothed), -30, 5) + 30) / 35
        np.testing.assert_allclose(s1[:, y, x, c], expected.to_numpy(), rtol=0, atol=1e-6)


def test_nearest_s1_index_ties_go_to_the_earlier_acquisition():
  s1_time = _times("2020-01-01", "2020-01-11", "2020-01-21")
  s2_time = _times("2019-12-27", "2020-01-06T00:00:00", "2020-01-06T00:00:00.000000001", "2020-01-16",
                   "2020-01-17", "2020-02-10")
  np.testing.assert_array_equal(preprocess.nearest_s1_index(s2_time, s1_time), [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(preprocess.nearest_s1_index(s2_time, s1_time[:1]), np.zeros(6))
  with pytest.raises(ValueError):
    preprocess.nearest_s1_index(s2_time, s1_time[:0])


def test_fill_patches_by_hand_including_inf():
  x = np.full((1, 2, 1, 2, 3), NAN, np.float32)    # (b, t, h, w, c)
  x[0, :, 0, :, 0] = [[1.0, NAN], [3.0, np.inf]]
  x[0, :, 0, :, 2] = [[-np.inf, 2.0], [NAN, NAN]]
  filled, mask = preprocess.fill_patches(x)
  np.testing.assert_array_equal(mask[..., 0].ravel(), [True, False, True, True])
  np.testing.assert_array_equal(filled[..., 0].ravel(), np.float32([1.0, 4 / 3, 3.0, np.inf]))  # inf: +0, n=3
  np.testing.assert_array_equal(filled[..., 1], 0.0)                                            # no valid value
  np.testing.assert_array_equal(filled[..., 2].ravel(), np.float32([-np.inf, 2.0, 1.0, 1.0]))
  assert filled.dtype == np.float32 and mask.dtype == bool


def test_fill_patches_is_per_sample_for_any_leading_dims():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(2, 3, 11, 4, 4, 5)).astype(np.float32)
  x[rng.random(x.shape) < 0.4] = NAN
  filled, mask = preprocess.fill_patches(x)
  flat_filled, flat_mask = preprocess.fill_patches(x.reshape(6, 11, 4, 4, 5))
  np.testing.assert_array_equal(filled.reshape(flat_filled.shape), flat_filled)
  for b in range(6):
    alone, _ = preprocess.fill_patches(x.reshape(6, 11, 4, 4, 5)[b:b + 1])
    np.testing.assert_array_equal(alone[0], flat_filled[b])
  np.testing.assert_array_equal(mask, ~np.isnan(x))


def test_frame_fill_uses_each_frame_alone():
  rng = np.random.default_rng(2)
  x = rng.uniform(size=(3, 11, 5, 5, 4)).astype(np.float32)
  x[rng.random(x.shape) < 0.3] = NAN
  x[0, 5] = NAN                       # a hidden / fully clouded frame
  x[1, 2, ..., 1] = NAN               # one channel without any valid value in that frame
  filled, mask = preprocess.fill_patches(x, "frame")
  np.testing.assert_array_equal(mask, ~np.isnan(x))
  for b, t, c in np.ndindex(3, 11, 4):
    frame = x[b, t, ..., c]
    expected = np.nanmean(frame) if np.isfinite(frame).any() else 0.0
    np.testing.assert_allclose(filled[b, t, ..., c][np.isnan(frame)], expected, rtol=1e-6)
  np.testing.assert_array_equal(filled[0, 5], 0.0)
  # Changing another frame of the window leaves a frame's filled values unchanged ("window" does not).
  changed = x.copy()
  changed[:, 0] = 1.0
  np.testing.assert_array_equal(preprocess.fill_patches(changed, "frame")[0][:, 1:], filled[:, 1:])
  assert not np.array_equal(preprocess.fill_patches(changed)[0][:, 1:], preprocess.fill_patches(x)[0][:, 1:])
  with pytest.raises(ValueError, match="fill mode 'pixel'"):
    preprocess.fill_patches(x, "pixel")


@pytest.mark.parametrize("name", ["s1_ae", "s2_ae", "fusion"])
def test_fill_patches_matches_reference_vectors(name):
  path = VECTORS / f"{name}.npz"
  if not path.exists():
    pytest.skip(f"{path} not available")
  vectors = np.load(path)
  to_bthwc = lambda a: np.moveaxis(a, 2, -1)   # (b, t, c, h, w) -> (b, t, h, w, c)
  filled, mask = preprocess.fill_patches(to_bthwc(vectors["inputs/x_nan"]))
  np.testing.assert_array_equal(mask, to_bthwc(vectors["inputs/mask"]))
  np.testing.assert_allclose(filled, to_bthwc(vectors["inputs/x"]), rtol=0, atol=1e-6)
  channels = slice(0, 2) if name == "s1_ae" else slice(0, 10)
  assert preprocess.centre_valid(to_bthwc(vectors["inputs/x_nan"]), channels).all()
  if "inputs/days" in vectors:
    gaps = preprocess.time_gaps(np.floor(vectors["inputs/days"]))
    np.testing.assert_array_equal(gaps, vectors["inputs/time_gaps"])
    assert gaps.dtype == np.int32 and gaps.shape == (len(gaps), 10)
    np.testing.assert_array_equal(preprocess.positions(gaps), vectors["inputs/positions"])
    assert preprocess.span_ok(np.floor(vectors["inputs/days"])).all()


def test_centre_valid():
  x = np.full((4, 11, 15, 15, 12), NAN, np.float32)
  x[0, 5, 7, 7, 3] = 0.2      # centre pixel, centre frame, an S2 channel
  x[1, 5, 7, 7, 10] = 0.4     # only S1 valid at the centre
  x[2, 5, 7, 8, :] = 0.1      # neighbour pixel
  x[3, 4, 7, 7, :] = 0.1      # other frame
  np.testing.assert_array_equal(preprocess.centre_valid(x, slice(0, 10)), [True, False, False, False])
  np.testing.assert_array_equal(preprocess.centre_valid(x, [10, 11]), [False, True, False, False])
  assert preprocess.centre_valid(x.reshape(2, 2, 11, 15, 15, 12), slice(0, 10)).shape == (2, 2)


def test_time_gaps_positions_and_span():
  days = np.array([[0, 3, 3, 10], [100, 150, 200, 299]])
  gaps = preprocess.time_gaps(days)
  np.testing.assert_array_equal(gaps, [[3, 0, 7], [50, 50, 99]])
  assert gaps.dtype == np.int32
  positions = preprocess.positions(gaps)
  np.testing.assert_array_equal(positions, [[0, 3, 3, 10], [0, 50, 100, 199]])
  assert positions.dtype == np.int64
  np.testing.assert_array_equal(preprocess.span_ok(days), [True, True])
  np.testing.assert_array_equal(preprocess.span_ok(np.array([[0, 199], [0, 200], [5, 300]])), [True, False, False])
  np.testing.assert_array_equal(preprocess.span_ok(days, max_span=199), [True, False])


def test_clear_dates_thresholds():
  s2 = np.full((4, 10, 10, 10), NAN, np.float32)   # (t, h, w, c): 1000 values, int(0.03 * 1000) = 30
  s2[0].ravel()[:30] = 0.1
  s2[1].ravel()[:29] = 0.1
  s2[2].ravel()[:1] = 0.1
  train = preprocess.clear_dates(s2, preprocess.TRAIN_MIN_VALID_FRACTION)
  merge = preprocess.clear_dates(s2, preprocess.MERGE_MIN_VALID_FRACTION)
  np.testing.assert_array_equal(train, [True, False, False, False])
  np.testing.assert_array_equal(merge, [True, True, True, False])


def test_delta_days_rules():
  s1 = _times("2020-01-01T05:00", "2020-01-01T10:30", "2020-01-03T01:00", "2020-01-01T23:00")
  s2 = _times("2020-01-01T10:30", "2020-01-01T05:00", "2020-01-01T23:00", "2020-01-03T01:00")
  calendar = preprocess.delta_days(s1, s2, rule="calendar")
  training = preprocess.delta_days(s1, s2, rule="reference_training")
  np.testing.assert_array_equal(calendar, [0, 0, 2, 2])
  np.testing.assert_array_equal(training, [1, 0, 1, 2])    # contradiction 8: same day, yet 1 in training
  assert calendar.dtype == training.dtype == np.int32
  rng = np.random.default_rng(2)
  s1 = np.datetime64("2020-01-01", "ns") + rng.integers(0, 400 * 86_400 * 10**9, 1000).astype("timedelta64[ns]")
  s2 = np.datetime64("2020-01-01", "ns") + rng.integers(0, 400 * 86_400 * 10**9, 1000).astype("timedelta64[ns]")
  numpy_floor = np.abs((s1 - s2).astype("timedelta64[D]").astype(np.int64))
  np.testing.assert_array_equal(preprocess.delta_days(s1, s2, rule="reference_training"), numpy_floor)
  calendar_days = np.abs(s1.astype("datetime64[D]").astype(np.int64) - s2.astype("datetime64[D]").astype(np.int64))
  np.testing.assert_array_equal(preprocess.delta_days(s1, s2), calendar_days)
  with pytest.raises(ValueError, match="rule"):
    preprocess.delta_days(s1, s2, rule="round")
