"""What each feature set knows per pixel: linear probes, leave-sites-out, and the boundary contrast.

Inputs per site (`ProbeSite`): every feature set's value at the same pixel-dates (a probe crop around the tower
on a few clear dates; a pixel-date counts only where every set is finite), the pixel's land-cover kind and
parcel, and per-pixel truth values where known (green cover, vegetation water content, surface soil
moisture). Folds are groups of sites (`splits.site_groups`): a probe is always scored on sites it never saw.
* Land cover: per pixel, the mean, standard deviation, minimum and maximum of each feature over its dates
  (its time series, summarised the same way for every set), standardised; multinomial logistic regression
  (C = 1, classes weighted by their inverse frequency). Scores: balanced accuracy (mean recall over the
  kinds present) and accuracy over all held-out pixels; the confusion matrix is normalised per true kind.
* Regressions: per pixel-date, ridge (alpha 1) on the standardised features against each truth value;
  R2 = 1 - SSE/SST and RMSE over all held-out pixel-dates (at most `MAX_TRAIN_ROWS` training rows, drawn
  with a fixed seed).
* Boundary contrast: on each date, the distance between 4-neighbour pixels (features standardised per set
  over all its pixel-dates, Euclidean distance / sqrt(F)); contrast = mean distance across a parcel boundary
  / mean distance within a parcel, per site, then averaged over sites with a bootstrap interval. Sharp 10 m
  detail gives a high contrast; blurred features a contrast near 1.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from earthrep.evaluation.metrics import bootstrap_draws
from earthrep.evaluation.splits import site_groups

MAX_TRAIN_ROWS = 20000
MIN_PIXEL_DATES = 2


@dataclasses.dataclass
class ProbeSite:
  site_id: str
  land_cover: str
  days: np.ndarray                        # (t,) datetime64[D]
  features: dict[str, np.ndarray]         # set -> (t, h, w, F)
  kind: np.ndarray | None = None          # (h, w) int, -1 unknown
  parcel: np.ndarray | None = None        # (h, w) int, -1 unknown
  values: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)   # truth -> (t, h, w)

  def valid(self) -> np.ndarray:
    """(t, h, w): every set finite (the same pixel-dates for all sets)."""
    masks = [np.isfinite(v).all(-1) for v in self.features.values()]
    return np.logical_and.reduce(masks) if masks else np.zeros((0, 0, 0), bool)


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
  mean, std = train.mean(0), train.std(0)
  std = np.where(std > 1e-8, std, 1.0)
  return [(a - mean) / std for a in (train, *others)]


def _pixel_summary(site: ProbeSite, name: str, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(P, 4F) per-pixel summary of the set over its valid dates and (P,) flat pixel index."""
  values = np.where(valid[..., None], site.features[name], np.nan)
  count = valid.sum(0).reshape(-1)
  keep = np.flatnonzero(count >= MIN_PIXEL_DATES)
  flat = values.reshape(values.shape[0], -1, values.shape[-1])[:, keep]
  with np.errstate(invalid="ignore"):
    stats = [np.nanmean(flat, 0), np.nanstd(flat, 0), np.nanmin(flat, 0), np.nanmax(flat, 0)]
  return np.concatenate(stats, -1), keep


def land_cover_probe(sites: Sequence[ProbeSite], kind_names: Sequence[str], n_folds: int
                     ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
  """Per set: balanced accuracy, accuracy, pixels; and the normalised confusion matrix (kinds x kinds)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import balanced_accuracy_score
  usable = [s for s in sites if s.kind is not None]
  if not usable:
    return pd.DataFrame(), {}
  names = list(usable[0].features)
  land_cover = {s.site_id: s.land_cover for s in usable}
  groups = site_groups([s.site_id for s in usable], land_cover, n_folds)
  rows, matrices = [], {}
  for name in names:
    xs, ys, owner = [], [], []
    for s in usable:
      summary, keep = _pixel_summary(s, name, s.valid())
      labels = s.kind.reshape(-1)[keep]
      known = labels >= 0
      xs.append(summary[known]), ys.append(labels[known]), owner.append(np.full(known.sum(), s.site_id, object))
    x, y, owner = np.concatenate(xs), np.concatenate(ys), np.concatenate(owner)
    truth, pred = [], []
    for group in groups:
      test = np.isin(owner, group)
      if not test.any() or len(np.unique(y[~test])) < 2:
        continue
      x_train, x_test = _standardise(x[~test], x[test])
      model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=500)
      model.fit(x_train, y[~test])
      truth.append(y[test]), pred.append(model.predict(x_test))
    if not truth:
      continue
    truth, pred = np.concatenate(truth), np.concatenate(pred)
    matrix = np.zeros((len(kind_names), len(kind_names)))
    np.add.at(matrix, (truth, pred), 1)
    matrices[name] = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    rows.append({"feature_set": name, "balanced_accuracy": balanced_accuracy_score(truth, pred),
                 "accuracy": float(np.mean(truth == pred)), "pixels": len(truth),
                 "kinds": int(len(np.unique(truth)))})
  return pd.DataFrame(rows), matrices


def regression_probes(sites: Sequence[ProbeSite], n_folds: int, seed: int = 0) -> pd.DataFrame:
  """Per set and truth value: R2, RMSE, pixel-dates (held-out, pooled over folds)."""
  from earthrep.evaluation.regressors import Ridge
  usable = [s for s in sites if s.values]
  if not usable:
    return pd.DataFrame()
  land_cover = {s.site_id: s.land_cover for s in usable}
  groups = site_groups([s.site_id for s in usable], land_cover, n_folds)
  rng = np.random.default_rng(seed)
  rows = []
  for target in usable[0].values:
    for name in usable[0].features:
      xs, ys, owner = [], [], []
      for s in usable:
        valid = s.valid() & np.isfinite(s.values[target])
        xs.append(s.features[name][valid]), ys.append(s.values[target][valid])
        owner.append(np.full(valid.sum(), s.site_id, object))
      x, y = np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)
      owner = np.concatenate(owner)
      truth, pred = [], []
      for group in groups:
        test = np.isin(owner, group)
        train = np.flatnonzero(~test)
        if not test.any() or len(train) < 10:
          continue
        if len(train) > MAX_TRAIN_ROWS:
          train = rng.choice(train, MAX_TRAIN_ROWS, replace=False)
        truth.append(y[test]), pred.append(Ridge(1.0).fit(x[train], y[train]).predict(x[test]))
      if not truth:
        continue
      truth, pred = np.concatenate(truth), np.concatenate(pred).astype(np.float64)
      sst = np.sum((truth - truth.mean()) ** 2)
      r2 = 1 - np.sum((pred - truth) ** 2) / sst if sst else np.nan
      rows.append({"target": target, "feature_set": name, "r2": r2,
                   "rmse": float(np.sqrt(np.mean((pred - truth) ** 2))), "pixel_dates": len(truth)})
  return pd.DataFrame(rows)


def _site_contrast(values: np.ndarray, valid: np.ndarray, parcel: np.ndarray) -> tuple[float, float]:
  """(mean within-parcel, mean across-boundary) neighbour distance of one site's standardised features."""
  within, across = [], []
  for axis in (1, 2):
    a = [slice(None)] * 3
    b = [slice(None)] * 3
    a[axis], b[axis] = slice(0, -1), slice(1, None)
    both = valid[tuple(a)] & valid[tuple(b)]
    dist = np.sqrt(np.mean((values[tuple(a)] - values[tuple(b)]) ** 2, axis=-1))
    pa, pb = parcel[tuple(a)[1:]], parcel[tuple(b)[1:]]
    known = (pa >= 0) & (pb >= 0)
    same = np.broadcast_to(pa == pb, both.shape) & both & known
    other = np.broadcast_to(pa != pb, both.shape) & both & known
    within.append(dist[same]), across.append(dist[other])
  within, across = np.concatenate(within), np.concatenate(across)
  return (float(within.mean()) if len(within) else np.nan, float(across.mean()) if len(across) else np.nan)


def boundary_contrast(sites: Sequence[ProbeSite], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
  """Per set: mean over sites of across/within neighbour distance, its interval, and the mean distances."""
  usable = [s for s in sites if s.parcel is not None]
  if not usable:
    return pd.DataFrame()
  rows = []
  for name in usable[0].features:
    stack = np.concatenate([s.features[name][s.valid()] for s in usable]).astype(np.float64)
    if not len(stack):
      continue
    mean, std = stack.mean(0), np.where(stack.std(0) > 1e-8, stack.std(0), 1.0)
    per_site = np.array([_site_contrast((s.features[name] - mean) / std, s.valid(), s.parcel) for s in usable])
    ok = np.isfinite(per_site).all(1) & (per_site[:, 0] > 0)
    if not ok.any():
      continue
    ratio = per_site[ok, 1] / per_site[ok, 0]
    counts = bootstrap_draws(len(ratio), n_boot, seed)
    boot = counts @ ratio / counts.sum(1)
    rows.append({"feature_set": name, "contrast": float(ratio.mean()),
                 "contrast_lo": float(np.percentile(boot, 2.5)), "contrast_hi": float(np.percentile(boot, 97.5)),
                 "within": float(per_site[ok, 0].mean()), "across": float(per_site[ok, 1].mean()),
                 "sites": int(ok.sum())})
  return pd.DataFrame(rows)


def run(sites: Sequence[ProbeSite], kind_names: Sequence[str], n_folds: int, seed: int = 0
        ) -> dict[str, object]:
  """All probes: {"land_cover": table, "confusion": {set: matrix}, "regression": table, "contrast": table,
  "pixel_dates": per-site counts}."""
  land_cover, confusion = land_cover_probe(sites, kind_names, n_folds)
  return {"land_cover": land_cover, "confusion": confusion, "regression": regression_probes(sites, n_folds, seed),
          "contrast": boundary_contrast(sites, seed=seed),
          "pixel_dates": {s.site_id: int(s.valid().sum()) for s in sites}}


def kinds_present(sites: Sequence[ProbeSite], kind_names: Sequence[str]) -> Mapping[str, int]:
  counts = np.zeros(len(kind_names), int)
  for s in sites:
    if s.kind is not None:
      known = s.kind[s.kind >= 0]
      counts += np.bincount(known.reshape(-1), minlength=len(kind_names))[:len(kind_names)]
  return dict(zip(kind_names, counts.tolist()))
