"""GPP models fitted with nested selection: every (feature set, design) x regressor x outer fold.

A *combo* is a feature set under a design (`evaluation.designs`): one daily table per site. All combos are
scored on the same site-days: a day is usable when its GPP is observed and passes QC and every combo of the
site has a complete window ending on it (`usable_days`); training takes every `train_stride`-th usable day,
testing every usable day. Per outer fold (`evaluation.splits`), hyper-parameters are chosen on the fold's
training sites only:
* ridge: alpha from `RIDGE_ALPHAS` by the pooled squared error over the inner folds (groups of training
  sites, each left out once), then refitted on all training sites;
* boosted trees: leaves x iterations by the validation curve on the first inner group (trained on the
  other training sites), then refitted on all training sites with them;
* transformer: trained on the training sites outside the first inner group, early-stopped on that group
  (the model of its best validation step predicts; its loss curves are kept).
With a single training site nothing can be selected: defaults (alpha 1, 15 leaves x 100 iterations, all
steps) are used and the fold says so. Every fold records the sites (and years) its selection and fit used,
so tests can check that no held-out site takes part in choosing its own model.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from earthrep.evaluation import regressors as reg
from earthrep.evaluation.designs import MET_COLUMNS, design_table
from earthrep.evaluation.splits import Fold, inner_groups

log_fn = Callable[[str], None]


@dataclasses.dataclass
class SiteData:
  site_id: str
  days: pd.DatetimeIndex                 # every day of the evaluation span
  gpp: np.ndarray                        # (D,) gC m-2 d-1, NaN missing
  qc_ok: np.ndarray                      # (D,) bool
  features: dict[str, pd.DataFrame]      # feature set -> (D, F) daily table on `days`
  met: pd.DataFrame | None = None        # (D, 3) MET_COLUMNS, None when a driver is missing
  land_cover: str = ""
  truth_gpp: np.ndarray | None = None    # (D,) noise-free GPP (demo)


@dataclasses.dataclass
class Combo:
  feature_set: str
  design: str
  tables: dict[str, np.ndarray]          # site -> (D, F) float32
  columns: list[str]

  @property
  def name(self) -> str:
    return f"{self.feature_set}/{self.design}"


def make_combo(sites: Sequence[SiteData], feature_set: str, design: str) -> Combo:
  """The design's daily table at every site that has what it needs (the others are left out)."""
  tables, columns = {}, []
  for s in sites:
    if (design != "x" and s.met is None) or (design != "met" and feature_set not in s.features):
      continue
    table = design_table(design, s.features.get(feature_set), s.met, s.days)
    tables[s.site_id], columns = table.to_numpy(np.float32), list(table.columns)
  return Combo(feature_set, design, tables, columns)


def usable_days(sites: Sequence[SiteData], combos: Sequence[Combo], window_days: int) -> dict[str, np.ndarray]:
  out = {}
  for s in sites:
    ok = s.qc_ok & np.isfinite(s.gpp)
    for combo in combos:
      if s.site_id in combo.tables:
        ok &= reg.complete_windows(combo.tables[s.site_id], window_days)
    out[s.site_id] = ok
  return out


@dataclasses.dataclass
class Rows:
  """The usable windows of one combo: one row per (site, target day)."""
  combo: Combo
  site: np.ndarray        # (N,) object
  end: np.ndarray         # (N,) day index in the site's table
  date: np.ndarray        # (N,) datetime64[ns]
  y: np.ndarray           # (N,) float32
  on_stride: np.ndarray   # (N,) bool: a training day
  summary: np.ndarray     # (N, 3F) float32
  window_days: int

  def windows(self, index: np.ndarray) -> np.ndarray:
    out = np.empty((len(index), self.window_days, len(self.combo.columns)), np.float32)
    for sid in np.unique(self.site[index]):
      here = self.site[index] == sid
      out[here] = reg.windows_at(self.combo.tables[sid], self.end[index][here], self.window_days)
    return out


def make_rows(combo: Combo, sites: Sequence[SiteData], usable: Mapping[str, np.ndarray], window_days: int,
              train_stride: int) -> Rows:
  parts = []
  for s in sites:
    if s.site_id not in combo.tables:
      continue
    ends = np.flatnonzero(usable[s.site_id])
    if not len(ends):
      continue
    table = combo.tables[s.site_id]
    day = (ends - ends[0]) % max(train_stride, 1) == 0
    parts.append((np.full(len(ends), s.site_id, object), ends, s.days.values[ends],
                  s.gpp[ends].astype(np.float32), day, reg.summary_features(table, ends, window_days)))
  if not parts:
    empty = np.zeros(0)
    return Rows(combo, empty.astype(object), empty.astype(int), empty.astype("datetime64[ns]"),
                empty.astype(np.float32), empty.astype(bool), np.zeros((0, 3 * len(combo.columns)), np.float32),
                window_days)
  site, end, date, y, stride, summary = (np.concatenate(v) for v in zip(*parts))
  return Rows(combo, site, end, date, y, stride, summary, window_days)


@dataclasses.dataclass
class FoldResult:
  fold: str
  regressor: str
  test_index: np.ndarray
  pred: np.ndarray
  hyper: dict
  selection_sites: set            # sites whose rows took part in selection (training or validation)
  fit_sites: set                  # sites the predicting model was trained on
  years: set                      # calendar years of every row used in selection and fit
  curves: dict | None = None      # transformer: {"train": [...], "val": [(step, loss)], "best_step": int}


def _fit_predict(kind: str, rows: Rows, train: np.ndarray, test: np.ndarray, groups: list[list[str]],
                 config: reg.TransformerConfig, seed: int) -> tuple[np.ndarray, dict, set, set, dict | None]:
  """Selects on `train` rows (by inner site groups), fits, predicts `test` rows."""
  x, y, site = rows.summary, rows.y, rows.site
  selectable = len(groups) >= 2
  val = np.isin(site, groups[0]) & train if selectable else np.zeros_like(train)
  inner_train = train & ~val
  if kind == "ridge":
    alpha = 1.0
    if selectable:
      sse = np.zeros(len(reg.RIDGE_ALPHAS))
      for group in groups:
        held = np.isin(site, group) & train
        if held.any() and (train & ~held).any():
          path = reg.Ridge.fit_path(x[train & ~held], y[train & ~held], x[held])
          sse += ((path - y[held][None]) ** 2).sum(1)
      alpha = reg.RIDGE_ALPHAS[int(np.argmin(sse))]
    pred = reg.Ridge(alpha).fit(x[train], y[train]).predict(x[test])
    return pred, {"alpha": alpha}, set(site[train]), set(site[train]), None
  if kind == "hgb":
    leaves, iterations = 15, 100
    if selectable and val.any():
      curves = {n: reg.hgb_validation_curve(n, x[inner_train], y[inner_train], x[val], y[val], seed)
                for n in reg.HGB_LEAVES}
      leaves = min(curves, key=lambda n: curves[n].min())
      iterations = int(np.argmin(curves[leaves])) + 1
    pred = reg.boosted_trees(leaves, iterations, seed).fit(x[train], y[train]).predict(x[test])
    return pred, {"leaves": leaves, "iterations": iterations}, set(site[train]), set(site[train]), None
  if kind == "transformer":
    fit_rows = inner_train if val.any() else train
    model = reg.TransformerRegressor(dataclasses.replace(config, seed=seed))
    val_idx = np.flatnonzero(val)
    model.fit(rows.windows(np.flatnonzero(fit_rows)), y[fit_rows],
              rows.windows(val_idx) if len(val_idx) else None, y[val_idx] if len(val_idx) else None)
    pred = model.predict(rows.windows(np.flatnonzero(test)))
    curves = {"train": model.losses, "val": model.val_losses, "best_step": model.best_step}
    return pred, {"best_step": model.best_step}, set(site[train]), set(site[fit_rows]), curves
  raise ValueError(f"regressor {kind!r}: expected one of {reg.REGRESSORS}")


def run_fold(kind: str, rows: Rows, fold: Fold, land_cover: Mapping[str, str], n_inner: int,
             config: reg.TransformerConfig, seed: int = 0) -> FoldResult | None:
  """One outer fold of one regressor on one combo; None when the fold has no training or test rows."""
  is_test = fold.is_test(rows.site, rows.date)
  train, test = ~is_test & rows.on_stride, is_test
  if train.sum() < 10 or not test.any():
    return None
  groups = inner_groups(sorted(set(rows.site[train])), land_cover, n_inner)
  pred, hyper, selection_sites, fit_sites, curves = _fit_predict(kind, rows, train, test, groups, config, seed)
  if len(groups) < 2:
    hyper["selection"] = "none: one training site"
  years = set(pd.DatetimeIndex(rows.date[train]).year)
  return FoldResult(fold.name, kind, np.flatnonzero(test), np.asarray(pred, np.float64), hyper,
                    selection_sites, fit_sites, years, curves)


def predictions_frame(rows: Rows, results: Sequence[FoldResult], split: str) -> pd.DataFrame:
  parts = [pd.DataFrame({"split": split, "feature_set": rows.combo.feature_set, "design": rows.combo.design,
                         "regressor": r.regressor, "fold": r.fold, "site": rows.site[r.test_index],
                         "date": rows.date[r.test_index], "obs": rows.y[r.test_index].astype(np.float64),
                         "pred": r.pred}) for r in results]
  return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
      columns=["split", "feature_set", "design", "regressor", "fold", "site", "date", "obs", "pred"])


def run_all(rows: Rows, kinds: Sequence[str], folds: Sequence[Fold], split: str, land_cover: Mapping[str, str],
            n_inner: int, config: reg.TransformerConfig, seed: int, seconds: dict[str, float]
            ) -> tuple[pd.DataFrame, list[FoldResult]]:
  """Every regressor over every outer fold of one combo: (predictions, fold results)."""
  results = []
  for kind in kinds:
    tic = time.perf_counter()
    for fold in folds:
      result = run_fold(kind, rows, fold, land_cover, n_inner, config, seed)
      if result is not None:
        results.append(result)
    seconds[kind] = seconds.get(kind, 0.0) + time.perf_counter() - tic
  return predictions_frame(rows, results, split), results


def met_available(met: pd.DataFrame | None) -> bool:
  return met is not None and all(c in met.columns and np.isfinite(met[c]).any() for c in MET_COLUMNS)
