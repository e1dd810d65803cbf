"""Model inputs from a site cube: the merged series, clear-date windows and any-day windows.

Merge (ARCHITECTURE.md section g step 1): S2 is masked where `cloud_mask != 0` (`prepare_s2`) and the dates
with any valid value are kept; S1 is prepared over all acquisitions (`prepare_s1`) and matched to each S2
date by nearest time (`nearest_s1_index`). Days are calendar days (datetime64[D] as int, since 1970).

Clear-date windows (section g steps 2-4, `clear_windows`): the output timeline is the merged S2 dates without
the first and last 5, kept when >= 3.5 % of the interior pixels (7-px border removed) have all 10 bands
finite; the window of a target date is the run of 11 consecutive merged dates with the target as frame 5.
Any-day windows (`anyday_windows`) for a day d: the 5 merged dates strictly before d, a centre frame AT d
that is fully masked (all NaN, day d) and the 5 merged dates strictly after d, so an S2 observation on d
itself is hidden and has to be reconstructed; a day without 5 merged dates on each side has no window.
Both kinds: S1 frame k = the S1 acquisition nearest to frame k's S2 time (any-day centre: nearest to d at
12:00 UTC); delta_days = |day(S1 frame 5) - day(S2 frame 5)| (calendar rule; any-day: |day(S1 centre) - d|);
a window whose S2 span is >= 200 days gets consecutive days centred on frame 5 for S2 and S1 (all gaps 1)
as the reference does. Not in the reference (it raises there, contradiction 9): a window whose S1 span
alone would pass the AE time table (> 200 days) gets the same replacement for its S1 days.
Pixel validity: clear dates as the reference (the centre pixel of frame 5 has a valid S2 value); any-day
windows hide frame 5, so there the centre pixel must have a valid S2 value in at least one of the 10
context frames.

Dimension letters: n windows, k frames (11), t merged S2 dates, u S1 acquisitions, h/w rows/cols, c channels.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from earthrep.data import preprocess
from earthrep.errors import EarthrepError
from earthrep.schema import (
    AE_MAX_POSITION, CENTRE_FRAME, CENTRE_PX, MAX_SPAN_DAYS, PATCH_FRAMES, PATCH_PX, SiteCube,
    datetime_to_days)

CONTEXT = CENTRE_FRAME            # 5 frames on each side of the target
BORDER_PX = CENTRE_PX             # 7: output grid = cube grid without this border
MIN_CLEAR_FRACTION = 0.035        # of interior pixels with all 10 S2 bands finite
HIDDEN = -1                       # frame index of the hidden any-day centre
_NOON_NS = 12 * 3600 * 10**9


@dataclasses.dataclass
class Merged:
  """The merged series of one cube: S2 dates with any valid value, S1 prepared (or None)."""
  s2_thwc: np.ndarray             # (t, h, w, 10) float32, NaN = invalid
  s2_time: np.ndarray             # (t,) datetime64[ns]
  s1_uhwc: np.ndarray | None      # (u, h, w, 2) float32, NaN = no data
  s1_time: np.ndarray | None      # (u,) datetime64[ns]
  source: str = "cube"

  @property
  def s2_days(self) -> np.ndarray:
    return datetime_to_days(self.s2_time)

  @property
  def s1_days(self) -> np.ndarray | None:
    return None if self.s1_time is None else datetime_to_days(self.s1_time)


@dataclasses.dataclass
class Windows:
  """One window per target day. Frame indices point into `Merged` (S2: HIDDEN = masked centre)."""
  target_days: np.ndarray         # (n,) int64 calendar day of frame 5
  s2_frames: np.ndarray           # (n, 11) int64 index into merged S2 dates, HIDDEN for a hidden centre
  s1_frames: np.ndarray           # (n, 11) int64 index into S1 acquisitions (zeros without S1)
  gaps_s2: np.ndarray             # (n, 10) int32
  gaps_s1: np.ndarray             # (n, 10) int32
  delta_days: np.ndarray          # (n,) int32
  valid: np.ndarray               # (n,) bool: the day has a window (else its output is NaN)
  hidden_centre: bool

  def __len__(self) -> int:
    return len(self.target_days)

  def take(self, index: np.ndarray) -> "Windows":
    return Windows(self.target_days[index], self.s2_frames[index], self.s1_frames[index], self.gaps_s2[index],
                   self.gaps_s1[index], self.delta_days[index], self.valid[index], self.hidden_centre)


class WindowError(EarthrepError):
  """A cube that yields no usable window; the message starts with the cube's path."""


def merge(cube: SiteCube, source: str = "cube", with_s1: bool = True) -> Merged:
  s2_thwc = preprocess.prepare_s2(cube.s2_reflectance, cube.cloud_mask)
  keep = preprocess.clear_dates(s2_thwc, preprocess.MERGE_MIN_VALID_FRACTION)
  s1_uhwc = s1_time = None
  if with_s1:
    if len(cube.s1_time) == 0:
      raise WindowError(f"{source}: s1_gamma0: no S1 acquisition, but the model fuses S1")
    s1_uhwc, s1_time = preprocess.prepare_s1(cube.s1_gamma0), np.asarray(cube.s1_time, "datetime64[ns]")
  return Merged(s2_thwc[keep], np.asarray(cube.s2_time, "datetime64[ns]")[keep], s1_uhwc, s1_time, source)


def _consecutive(centre_day_n: np.ndarray) -> np.ndarray:
  return centre_day_n[:, None] + np.arange(PATCH_FRAMES)[None, :] - CENTRE_FRAME


def _finish(merged: Merged, target_days: np.ndarray, s2_frames: np.ndarray, s2_days_nk: np.ndarray,
            s1_query_ns: np.ndarray, valid: np.ndarray, hidden: bool) -> Windows:
  """Shared tail: nearest S1 per frame, the >= 200-day replacement, gaps and delta_days."""
  n = len(target_days)
  if merged.s1_time is not None:
    s1_frames = preprocess.nearest_s1_index(s1_query_ns.reshape(-1), merged.s1_time).reshape(n, PATCH_FRAMES)
    s1_days_nk = merged.s1_days[s1_frames]
    delta = np.abs(s1_days_nk[:, CENTRE_FRAME] - s2_days_nk[:, CENTRE_FRAME]).astype(np.int32)
  else:
    s1_frames = np.zeros((n, PATCH_FRAMES), np.int64)
    s1_days_nk, delta = s2_days_nk.copy(), np.zeros(n, np.int32)   # no S1: offset row 0 (documented)
  long_s2 = ~preprocess.span_ok(s2_days_nk, MAX_SPAN_DAYS)
  long_s1 = (s1_days_nk[:, -1] - s1_days_nk[:, 0]) > AE_MAX_POSITION
  s2_days_nk = np.where(long_s2[:, None], _consecutive(s2_days_nk[:, CENTRE_FRAME]), s2_days_nk)
  s1_days_nk = np.where((long_s2 | long_s1)[:, None], _consecutive(s1_days_nk[:, CENTRE_FRAME]), s1_days_nk)
  return Windows(target_days.astype(np.int64), s2_frames, s1_frames, preprocess.time_gaps(s2_days_nk),
                 preprocess.time_gaps(s1_days_nk), delta, valid, hidden)


def output_timeline(merged: Merged) -> np.ndarray:
  """Indices of the merged dates that get a clear-date output (section g step 2)."""
  t = len(merged.s2_time)
  interior = merged.s2_thwc[:, BORDER_PX:-BORDER_PX or None, BORDER_PX:-BORDER_PX or None]
  if interior.size == 0:
    return np.zeros(0, np.int64)
  all_finite_t = np.isfinite(interior).all(axis=-1).reshape(t, -1).mean(axis=1)
  index = np.arange(t)
  keep = (index >= CONTEXT) & (index < t - CONTEXT) & (all_finite_t >= MIN_CLEAR_FRACTION)
  return index[keep]


def date_windows(merged: Merged, dates: np.ndarray) -> Windows:
  """Windows centred on merged S2 dates (indices into `merged`), centre visible: frames t-5..t+5; a date
  without 5 merged dates on each side has no window (`valid` False)."""
  dates = np.asarray(dates, np.int64).reshape(-1)
  t = len(merged.s2_time)
  valid = (dates >= CONTEXT) & (dates < t - CONTEXT)
  s2_frames = np.clip(dates[:, None] + np.arange(PATCH_FRAMES)[None, :] - CENTRE_FRAME, 0, max(t - 1, 0))
  s2_days_nk = merged.s2_days[s2_frames] if t else np.zeros(s2_frames.shape, np.int64)
  query = merged.s2_time[s2_frames] if t else np.zeros(s2_frames.shape, "datetime64[ns]")
  return _finish(merged, s2_days_nk[:, CENTRE_FRAME], s2_frames, s2_days_nk, query, valid, hidden=False)


def clear_windows(merged: Merged) -> Windows:
  """The reference feature-cube windows: one per output-timeline date, frames t-5..t+5."""
  return date_windows(merged, output_timeline(merged))


def as_days(days: Sequence | np.ndarray) -> np.ndarray:
  """Dates (datetime64, ISO strings, or int day numbers) -> (n,) int64 calendar days since 1970."""
  days = np.asarray(days)
  if np.issubdtype(days.dtype, np.integer):
    return days.astype(np.int64).reshape(-1)
  return np.asarray(days, "datetime64[D]").astype(np.int64).reshape(-1)


def context_dates(days: np.ndarray, before: np.ndarray, after: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Indices into the sorted `days` of the CONTEXT last dates strictly before each `before` (n, 5) and the
  CONTEXT first strictly after each `after` (n, 5), and (n,) whether both exist (the any-day rule; the gap
  windows of `data_prep.build_shards` take it with before < after)."""
  last_before = np.searchsorted(days, before, side="left") - 1
  first_after = np.searchsorted(days, after, side="right")
  valid = (last_before - (CONTEXT - 1) >= 0) & (first_after + CONTEXT - 1 <= len(days) - 1)
  steps = np.arange(CONTEXT)
  return last_before[:, None] - steps[::-1], first_after[:, None] + steps, valid


def anyday_windows(merged: Merged, days: Sequence | np.ndarray) -> Windows:
  """Windows centred on arbitrary days with the centre frame hidden (see the module docstring)."""
  days_n = as_days(days)
  s2_days = merged.s2_days
  t, n = len(s2_days), len(days_n)
  before, after, valid = context_dates(s2_days, days_n, days_n)
  s2_frames = np.concatenate([before, np.full((n, 1), HIDDEN), after], axis=1)
  s2_frames = np.where(valid[:, None], s2_frames, HIDDEN)
  safe = np.clip(s2_frames, 0, max(t - 1, 0))
  s2_days_nk = np.where(s2_frames == HIDDEN, days_n[:, None], s2_days[safe] if t else 0)
  query_ns = (merged.s2_time[safe].astype(np.int64) if t else np.zeros((n, PATCH_FRAMES), np.int64))
  query_ns = np.where(s2_frames == HIDDEN, days_n[:, None] * 86_400 * 10**9 + _NOON_NS, query_ns)
  return _finish(merged, days_n, s2_frames, s2_days_nk, query_ns.astype("datetime64[ns]"), valid, hidden=True)


def daily_days(merged: Merged) -> np.ndarray:
  """Every day with 5 merged dates strictly before and 5 strictly after it (int64 calendar days)."""
  s2_days = merged.s2_days
  if len(s2_days) < 2 * CONTEXT:
    return np.zeros(0, np.int64)
  return np.arange(s2_days[CONTEXT - 1] + 1, s2_days[-CONTEXT])


# ---------------------------------------------------------------------------------------------
# Patches and pixel validity (rows/cols are patch-centre pixels of the cube grid).
# ---------------------------------------------------------------------------------------------
def _crop_index(rows: np.ndarray, cols: np.ndarray, h: int, w: int):
  offsets = np.arange(PATCH_PX) - CENTRE_PX
  r_bp = rows[:, None] + offsets[None, :]
  c_bp = cols[:, None] + offsets[None, :]
  inside = ((r_bp >= 0) & (r_bp < h))[:, :, None] & ((c_bp >= 0) & (c_bp < w))[:, None, :]
  return np.clip(r_bp, 0, h - 1), np.clip(c_bp, 0, w - 1), inside


def gather_patches(series_thwc: np.ndarray, frames_bk: np.ndarray, rows: np.ndarray,
                   cols: np.ndarray) -> np.ndarray:
  """(b, 11, 15, 15, c) float32 crops centred on (rows, cols); NaN outside the grid and for HIDDEN frames."""
  _, h, w, _ = series_thwc.shape
  r_bp, c_bp, inside = _crop_index(np.asarray(rows), np.asarray(cols), h, w)
  safe = np.clip(frames_bk, 0, len(series_thwc) - 1)
  x = series_thwc[safe[:, :, None, None], r_bp[:, None, :, None], c_bp[:, None, None, :]]
  keep = (frames_bk != HIDDEN)[:, :, None, None] & inside[:, None]
  return np.where(keep[..., None], x, np.float32(np.nan)).astype(np.float32)


def pixel_valid(merged: Merged, windows: Windows, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """(n, p) bool: window n is valid at centre pixel p (the rule of the module docstring)."""
  s2_valid_thw = ~np.isnan(merged.s2_thwc).all(axis=-1)    # the pixel has a valid value in some band
  t, h, w = s2_valid_thw.shape
  rows, cols = np.asarray(rows), np.asarray(cols)
  inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
  if t == 0:
    return np.zeros((len(windows), len(rows)), bool)
  rr, cc = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
  safe = np.clip(windows.s2_frames, 0, t - 1)
  frame_ok = s2_valid_thw[safe][:, :, rr, cc] & (windows.s2_frames != HIDDEN)[:, :, None]   # (n, k, p)
  ok = frame_ok.any(axis=1) if windows.hidden_centre else frame_ok[:, CENTRE_FRAME]
  return ok & windows.valid[:, None] & inside[None, :]
