"""The reference's input rules (ARCHITECTURE.md sections a, f, g, i) as vectorised numpy functions.

Dimension letters: b batch (any number of leading dims), t time/frame, c channel, h/w space. Outputs are
channels-last. S2: clip reflectance to [0, 1], NaN where the cloud class is not clear (all bands) or no data.
S1: 3-sample centred rolling mean over the cube's S1 acquisitions (all orbits, in time order) in linear
power, NaN-skipping with min_periods 1 exactly like pandas `rolling(3, center=True, min_periods=1).mean()`,
then dB, clip to [-30, 5] dB and map to [0, 1]. Linear values <= 0 are not backscatter (RTC fill/border) and
are treated as NaN *before* the rolling mean; the reference would average them in, turning a 0 into -inf dB
(clipped to 0.0) and a negative value into NaN or a biased neighbour mean. ±inf is not a valid cube value
(`cube.read_cube` rejects it). Date filters: training keeps dates whose valid count over (h, w, c) is
>= int(0.03 * h*w*c) (`TRAIN_MIN_VALID_FRACTION`; the reference comment says 3.5 %), the inference merge
keeps dates with any valid value (`MERGE_MIN_VALID_FRACTION` = 0; the reference argument says 1.5 %).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from earthrep.schema import (
    CENTRE_FRAME, CENTRE_PX, CLOUD_CLEAR, MAX_SPAN_DAYS, S1_DB_MAX, S1_DB_MIN, S1_ROLLING_WINDOW, check_fill,
    datetime_to_days)

TRAIN_MIN_VALID_FRACTION = 0.03
MERGE_MIN_VALID_FRACTION = 0.0
DELTA_DAYS_RULES = ("calendar", "reference_training")
_NS_PER_DAY = 86_400 * 10**9


def prepare_s2(s2_reflectance_tchw: np.ndarray, cloud_mask_thw: np.ndarray) -> np.ndarray:
  """(t, 10, h, w) reflectance + (t, h, w) classes -> (t, h, w, 10) float32 in [0, 1], NaN = invalid."""
  s2_thwc = np.clip(np.moveaxis(np.asarray(s2_reflectance_tchw, np.float32), 1, -1), 0.0, 1.0)
  cloudy_thw1 = (np.asarray(cloud_mask_thw) != CLOUD_CLEAR)[..., None]
  return np.where(cloudy_thw1, np.float32(np.nan), s2_thwc)


def rolling_mean_time(x_t: np.ndarray, window: int = S1_ROLLING_WINDOW) -> np.ndarray:
  """Centred NaN-skipping mean over `window` samples along axis 0 (pandas `rolling(window, center=True,
  min_periods=1).mean()`): NaN only where the whole window is NaN; the window is cut at both ends."""
  if window % 2 != 1:
    raise ValueError(f"window {window}: a centred window must be odd")
  x_t, half = np.asarray(x_t, np.float64), window // 2
  padded = np.pad(x_t, [(half, half)] + [(0, 0)] * (x_t.ndim - 1), constant_values=np.nan)
  stacked = np.stack([padded[k:k + x_t.shape[0]] for k in range(window)])
  valid = ~np.isnan(stacked)
  total, count = np.where(valid, stacked, 0.0).sum(axis=0), valid.sum(axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / count, np.nan)


def prepare_s1(s1_gamma0_tchw: np.ndarray) -> np.ndarray:
  """(t, 2, h, w) linear gamma0 -> (t, h, w, 2) float32 `(clip(dB, -30, 5) + 30) / 35`, NaN = no data."""
  linear = np.asarray(s1_gamma0_tchw, np.float64)
  linear = np.where(linear > 0, linear, np.nan)   # also maps NaN to NaN
  smoothed = rolling_mean_time(linear)
  with np.errstate(invalid="ignore", divide="ignore"):
    gamma0_db = 10.0 * np.log10(smoothed)
  scaled = (np.clip(gamma0_db, S1_DB_MIN, S1_DB_MAX) - S1_DB_MIN) / (S1_DB_MAX - S1_DB_MIN)
  return np.moveaxis(scaled, 1, -1).astype(np.float32)


def nearest_s1_index(s2_time: np.ndarray, s1_time: np.ndarray) -> np.ndarray:
  """Index of the S1 acquisition nearest to each S2 time; no tolerance; an exact tie goes to the earlier one.

  (xarray/pandas `method="nearest"` would take the later one on a tie; with real acquisition times in ns
  exact ties do not occur.) `s1_time` must be increasing.
  """
  s1_ns = np.asarray(s1_time, "datetime64[ns]").astype(np.int64)
  s2_ns = np.asarray(s2_time, "datetime64[ns]").astype(np.int64)
  if s1_ns.size == 0:
    raise ValueError("no S1 acquisition to match")
  right = np.searchsorted(s1_ns, s2_ns, side="left").clip(0, s1_ns.size - 1)   # first S1 at or after S2
  left = np.maximum(right - 1, 0)
  take_left = np.abs(s2_ns - s1_ns[left]) <= np.abs(s1_ns[right] - s2_ns)
  return np.where(take_left, left, right).astype(np.int64)


def fill_patches(x_nan_bthwc: np.ndarray, mode: str = "window") -> tuple[np.ndarray, np.ndarray]:
  """NaN -> a mean of the valid values of the same channel; returns (filled, mask).

  `mode="window"` (the reference, section a): the per-sample, per-channel mean over (t, h, w), so the value
  put into a cloudy frame depends on the other 10 frames of its window. `mode="frame"` (earthrep's default):
  the per-frame, per-channel mean over (h, w) of that frame's crop alone, so a filled crop, and the
  convolutional feature computed from it, is the same in every window holding the frame (the feature-cube
  fast path reuses it; see `earthrep.inference.engine`). `mask = ~isnan` before filling. ±inf counts as valid,
  adds 0 to the sum and stays in place; a channel without valid values over the averaged axes is filled
  with 0 (a hidden or fully clouded frame is all zeros under "frame"). Works for any leading dims
  (..., t, h, w, c).
  """
  check_fill(mode)
  x_nan_bthwc = np.asarray(x_nan_bthwc)
  mask_bthwc = ~np.isnan(x_nan_bthwc)
  summable = np.where(np.isfinite(x_nan_bthwc), x_nan_bthwc, 0).astype(np.float64)
  axes = (-4, -3, -2) if mode == "window" else (-3, -2)
  mean_b111c = summable.sum(axis=axes, keepdims=True) / np.maximum(mask_bthwc.sum(axis=axes, keepdims=True), 1)
  filled = np.where(mask_bthwc, x_nan_bthwc, mean_b111c.astype(x_nan_bthwc.dtype))
  return filled, mask_bthwc


def centre_valid(x_nan_bthwc: np.ndarray, channels: Sequence[int] | slice) -> np.ndarray:
  """(...,) bool: the centre pixel (7, 7) of the centre frame (5) has a valid value in `channels`
  (the reference uses channels 0..9 for S2 and fused data, both channels for S1-only data)."""
  centre_bc = np.asarray(x_nan_bthwc)[..., CENTRE_FRAME, CENTRE_PX, CENTRE_PX, :][..., channels]
  return (~np.isnan(centre_bc)).any(axis=-1)


def time_gaps(days_bt: np.ndarray) -> np.ndarray:
  """(..., T) day numbers (already floored to calendar days) -> (..., T-1) int32 consecutive differences."""
  return np.diff(np.floor(np.asarray(days_bt)).astype(np.int64), axis=-1).astype(np.int32)


def positions(gaps_bt: np.ndarray) -> np.ndarray:
  """(..., T-1) gaps -> (..., T) int64 positions `[0, cumsum(gaps)]` (rows of the time table)."""
  gaps_bt = np.asarray(gaps_bt, np.int64)
  return np.concatenate([np.zeros(gaps_bt.shape[:-1] + (1,), np.int64), np.cumsum(gaps_bt, axis=-1)], axis=-1)


def span_ok(days_bt: np.ndarray, max_span: int = MAX_SPAN_DAYS) -> np.ndarray:
  """(...,) bool: the frames' span in days (last - first, = sum of gaps) is strictly below `max_span`."""
  days_bt = np.floor(np.asarray(days_bt)).astype(np.int64)
  return (days_bt[..., -1] - days_bt[..., 0]) < max_span


def clear_dates(s2_prepared_thwc: np.ndarray, min_fraction: float) -> np.ndarray:
  """(t,) bool: dates with valid count over (h, w, c) >= int(min_fraction * h*w*c); any valid if 0."""
  valid_count_t = (~np.isnan(np.asarray(s2_prepared_thwc))).reshape(len(s2_prepared_thwc), -1).sum(axis=1)
  if min_fraction <= 0:
    return valid_count_t > 0
  return valid_count_t >= int(min_fraction * np.prod(np.shape(s2_prepared_thwc)[1:]))


def delta_days(s1_time: np.ndarray, s2_time: np.ndarray, rule: str = "calendar") -> np.ndarray:
  """|S1 - S2| in whole days, int32 (ARCHITECTURE.md section a and contradiction 8).

  'calendar' (inference): both times floored to calendar days, then subtracted. 'reference_training':
  the nanosecond difference S1 - S2 floored to days (numpy timedelta64[D] cast), then made absolute; S1 at
  05:00 and S2 at 10:30 on one day give 1 here and 0 with 'calendar'.
  """
  s1_time, s2_time = np.asarray(s1_time, "datetime64[ns]"), np.asarray(s2_time, "datetime64[ns]")
  if rule == "calendar":
    return np.abs(datetime_to_days(s1_time) - datetime_to_days(s2_time)).astype(np.int32)
  if rule == "reference_training":
    difference_ns = (s1_time - s2_time).astype(np.int64)
    return np.abs(np.floor_divide(difference_ns, _NS_PER_DAY)).astype(np.int32)
  raise ValueError(f"delta_days rule {rule!r}: expected one of {DELTA_DAYS_RULES}")
