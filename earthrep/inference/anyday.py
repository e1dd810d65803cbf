"""Embeddings and reconstructed S2 reflectance of one pixel on any days (any-day windows).

`embed_days(model, params, cube, row, col, days)` builds the any-day window of every requested day
(`earthrep.data.windows.anyday_windows`: 5 merged S2 dates strictly before the day, a fully masked centre frame
AT the day, 5 strictly after; S1 nearest to each frame's day), runs the full fusion forward in fixed
batches (jitted once per batch shape, the last batch padded) and returns the embedding zf and the S2
decoder's output at the centre frame and pixel (7, 7), i.e. the model's reconstruction of the hidden day.
A day without 5 merged dates on each side, or whose pixel has no valid S2 value in the 10 context frames,
is `valid=False` with NaN outputs. (row, col) index the cube grid; a patch reaching over the cube edge
sees NaN there (filled like clouds). Fusion models without S1 (`sensors=("s2",)`) get no S1 input and
offset row 0. `load_fusion(model_dir)` rebuilds (model, params) from a fusion workdir or converted checkpoint.
`AnyDay(model, params)` owns the compiled functions (an `Engine`): keep one for many calls; the function
`embed_days` builds one per call.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from earthrep.data import windows as windows_lib
from earthrep.inference.engine import Engine, check_model, full_forward, load_fusion  # noqa: F401 (re-export)
from earthrep.models.fusion import FusionModel
from earthrep.schema import S2_BANDS, SiteCube

DEFAULT_BATCH = 64


@dataclasses.dataclass
class AnyDayResult:
  days: np.ndarray            # (n,) datetime64[D]
  embedding: np.ndarray       # (n, Y) float32, NaN where not valid
  s2_reflectance: np.ndarray  # (n, 10) float32 reconstructed centre pixel of the hidden centre frame
  valid: np.ndarray           # (n,) bool


class AnyDay:
  """Any-day embeddings and reconstructions of one fusion model (compiled once, reused by every call)."""

  def __init__(self, model: FusionModel, params: Any, batch: int = DEFAULT_BATCH):
    check_model(model)
    self.model = model
    self.engine = Engine(model, params, batch)

  def embed_days(self, cube: SiteCube, row: int, col: int, days: Sequence, *,
                 merged: windows_lib.Merged | None = None) -> AnyDayResult:
    model = self.model
    h, w = cube.shape_hw
    if not (0 <= row < h and 0 <= col < w):
      raise IndexError(f"pixel ({row}, {col}) outside the cube grid {h}x{w}")
    merged = merged or windows_lib.merge(cube, with_s1="s1" in model.sensors)
    day_n = windows_lib.as_days(days)
    win = windows_lib.anyday_windows(merged, day_n)
    ok = windows_lib.pixel_valid(merged, win, np.array([row]), np.array([col]))[:, 0]
    embedding = np.full((len(day_n), model.bottleneck), np.nan, np.float32)
    reflectance = np.full((len(day_n), len(S2_BANDS)), np.nan, np.float32)
    w_q = np.flatnonzero(ok)
    if len(w_q):
      out = full_forward(self.engine, merged, win, w_q, np.full(len(w_q), row), np.full(len(w_q), col))
      embedding[w_q], reflectance[w_q] = out["zf"], out["s2_reflectance"]
    return AnyDayResult(day_n.astype("datetime64[D]"), embedding, reflectance, ok)


  def pixels(self, merged: windows_lib.Merged, windows: windows_lib.Windows, window_n: np.ndarray,
             rows: np.ndarray, cols: np.ndarray) -> AnyDayResult:
    """Many (window, pixel) pairs at once: window `window_n[i]` of `windows` (any-day or date windows of
    `merged`) at cube pixel (rows[i], cols[i]); the pairs whose window or pixel is not valid are NaN."""
    window_n, rows, cols = (np.asarray(a, np.int64).reshape(-1) for a in (window_n, rows, cols))
    ok = windows_lib.pixel_valid(merged, windows, rows, cols)[window_n, np.arange(len(rows))]
    embedding = np.full((len(rows), self.model.bottleneck), np.nan, np.float32)
    reflectance = np.full((len(rows), len(S2_BANDS)), np.nan, np.float32)
    q = np.flatnonzero(ok)
    if len(q):
      out = full_forward(self.engine, merged, windows, window_n[q], rows[q], cols[q])
      embedding[q], reflectance[q] = out["zf"], out["s2_reflectance"]
    days = windows.target_days[window_n].astype("datetime64[D]")
    return AnyDayResult(days, embedding, reflectance, ok)


def embed_days(model: FusionModel, params: Any, cube: SiteCube, row: int, col: int, days: Sequence, *,
               batch: int = DEFAULT_BATCH, merged: windows_lib.Merged | None = None) -> AnyDayResult:
  """`AnyDay(model, params, batch).embed_days(...)` for a single call."""
  return AnyDay(model, params, batch).embed_days(cube, row, col, days, merged=merged)
