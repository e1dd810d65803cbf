r"""A gap-aware pixel regressor: a learned any-day baseline, and what the data in an any-day window allow.

Self-supervised like the models: trained on the training cubes only, against observations (never the
simulator's truth). A sample is a clear S2 observation of a pixel (the target) with every clear observation
within G/2 days of it removed (G drawn uniformly in [0, `max_gap`] days); its features are the pixel's 5
last clear observations before the gap and 5 first after it (10 bands and the day offset each, NaN where
fewer), their linear interpolation at the target day, the day of year, and (unless `with_s1=False`) the
S1 backscatter at the two acquisitions nearest to the target day and at those nearest to the bracketing
observations (pixel and 5x5 means, VV and VH). One gradient-boosted regressor per band predicts the
observation minus the linear interpolation. `benchmarks.anyday_reconstruction --regressor` scores it beside
the fusion model on the held-out cubes.
"""
from __future__ import annotations

import numpy as np

from earthrep.data import windows as W
from earthrep.schema import CENTRE_PX

CONTEXT = 5
S1_BOX = 5
TRAIN_PIXELS, TRAIN_TARGETS, MAX_GAP_DAYS = 600, 40, 100   # ~85k samples from the demo's 4 training cubes


def _box_mean(x_uhwc: np.ndarray, k: int) -> np.ndarray:
  """NaN-skipping k x k box mean over (h, w) of (u, h, w, c) (edges: shrunk windows)."""
  valid = np.isfinite(x_uhwc)
  v = np.where(valid, x_uhwc, 0.0).astype(np.float64)
  pad = k // 2
  s = np.pad(v, ((0, 0), (pad + 1, pad), (pad + 1, pad), (0, 0))).cumsum(1).cumsum(2)
  n = np.pad(valid.astype(np.float64), ((0, 0), (pad + 1, pad), (pad + 1, pad), (0, 0))).cumsum(1).cumsum(2)
  def box(a):
    return a[:, k:, k:] - a[:, :-k, k:] - a[:, k:, :-k] + a[:, :-k, :-k]
  with np.errstate(invalid="ignore", divide="ignore"):
    return (box(s) / box(n)).astype(np.float32)


class PixelFeatures:
  """Features of (pixel, target day, gap) samples of one merged cube (see the module docstring)."""

  def __init__(self, merged: W.Merged, with_s1: bool = True):
    self.merged, self.with_s1 = merged, with_s1
    if with_s1:
      self.s1_box = _box_mean(merged.s1_uhwc, S1_BOX)
      self.s1_days = merged.s1_days

  def _s1(self, day: int, r: int, c: int) -> list[float]:
    order = np.argsort(np.abs(self.s1_days - day), kind="stable")[:2]
    px = self.merged.s1_uhwc[order, r, c].mean(axis=0)
    bx = self.s1_box[order, r, c].mean(axis=0)
    return [*px, *bx]

  def sample(self, r: int, c: int, target_day: int, half_gap: float, clear_t: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray] | None:
    """(features, linear interpolation (10,)) of pixel (r, c) at `target_day` with the clear observations
    within `half_gap` days of it ignored, or None without a clear observation on both sides of the gap.
    `clear_t` (t,) bool is the pixel's clear-observation mask (after any masking)."""
    days = self.merged.s2_days
    series = self.merged.s2_thwc[:, r, c]
    before = np.flatnonzero(clear_t & (days < target_day - half_gap))[-CONTEXT:]
    after = np.flatnonzero(clear_t & (days > target_day + half_gap))[:CONTEXT]
    if len(before) == 0 or len(after) == 0:
      return None
    obs = np.full((2 * CONTEXT, 11), np.nan, np.float32)
    for slot, idx in ((slice(CONTEXT - len(before), CONTEXT), before), (slice(CONTEXT, CONTEXT + len(after)), after)):
      obs[slot, :10] = series[idx]
      obs[slot, 10] = (days[idx] - target_day) / 100.0
    da, db = days[before[-1]], days[after[0]]
    w = (target_day - da) / max(db - da, 1)
    lin = series[before[-1]] + w * (series[after[0]] - series[before[-1]])
    doy = 2 * np.pi * ((target_day + 4) % 365.25) / 365.25   # the season's phase (its origin is arbitrary)
    feats = [obs.reshape(-1), lin, [np.sin(doy), np.cos(doy), (db - da) / 100.0]]
    if self.with_s1:
      feats.append(self._s1(target_day, r, c) + self._s1(int(da), r, c) + self._s1(int(db), r, c))
    return np.concatenate([np.asarray(f, np.float32).reshape(-1) for f in feats]), lin


def training_set(cubes, n_pixels: int, n_targets: int, max_gap: int, seed: int, with_s1: bool = True):
  """(X, y) from the given cubes: y = observation - linear interpolation (n, 10)."""
  rng = np.random.default_rng(seed)
  xs, ys = [], []
  for cube in cubes:
    merged = W.merge(cube, with_s1=with_s1)
    feats = PixelFeatures(merged, with_s1)
    t, h, w, _ = merged.s2_thwc.shape
    b = CENTRE_PX   # pixels whose 15 x 15 patch lies inside the cube, as the benchmark's
    clear = np.isfinite(merged.s2_thwc).all(axis=-1)              # (t, h, w)
    for _ in range(n_pixels):
      r, c = rng.integers(b, h - b), rng.integers(b, w - b)
      cands = np.flatnonzero(clear[:, r, c])
      if len(cands) < 2 * CONTEXT + 1:
        continue
      for j in rng.choice(cands, min(n_targets, len(cands)), replace=False):
        half = rng.uniform(0, max_gap) / 2
        out = feats.sample(r, c, int(merged.s2_days[j]), half, clear[:, r, c])
        if out is None:
          continue
        x, lin = out
        xs.append(x)
        ys.append(merged.s2_thwc[j, r, c] - lin)
  return np.stack(xs), np.stack(ys)


class GapRegressor:
  """One HistGradientBoostingRegressor per band on `training_set` samples."""

  def __init__(self, with_s1: bool = True, seed: int = 0, max_iter: int = 300):
    self.with_s1, self.seed, self.max_iter, self.models = with_s1, seed, max_iter, []

  def fit(self, x: np.ndarray, y: np.ndarray) -> "GapRegressor":
    from sklearn.ensemble import HistGradientBoostingRegressor
    self.models = [HistGradientBoostingRegressor(loss="absolute_error", max_iter=self.max_iter, learning_rate=0.1,
                                                 random_state=self.seed).fit(x, y[:, k])
                   for k in range(y.shape[1])]
    return self

  def predict(self, merged: W.Merged, rows, cols, target_day: int) -> np.ndarray:
    """(p, 10) reconstruction at `target_day` of each pixel from its clear observations in `merged` (the
    gap is whatever `merged` lacks: half_gap 0), NaN where there is none on one side."""
    feats = PixelFeatures(merged, self.with_s1)
    clear = np.isfinite(merged.s2_thwc).all(axis=-1)
    out = np.full((len(rows), 10), np.nan, np.float32)
    xs, where, lins = [], [], []
    for i, (r, c) in enumerate(zip(rows, cols)):
      s = feats.sample(int(r), int(c), target_day, 0.0, clear[:, r, c] & (merged.s2_days != target_day))
      if s is not None:
        xs.append(s[0]); lins.append(s[1]); where.append(i)
    if xs:
      x = np.stack(xs)
      out[where] = np.stack(lins) + np.stack([m.predict(x) for m in self.models], axis=1)
    return out
