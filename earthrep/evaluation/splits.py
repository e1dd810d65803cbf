"""Outer and inner folds of the GPP evaluation: leave-sites-out and leave-year-out, inner folds over sites.

* `loso` (leave sites out): the sites are sorted by land cover and dealt round-robin into `n_folds` groups, so
  each group mixes land covers; each group is held out once and the model is trained on all other sites.
  `n_folds` 0 (or >= the number of sites) is one site per fold (classic leave-one-site-out).
* `temporal` (leave one year out): one fold per calendar year present in the test days; trained on the other
  years of every site, tested on that year of every site.
Inner folds (hyper-parameter selection, early stopping) are groups of the outer fold's *training* sites dealt
the same way, so a held-out site never takes part in choosing its own model; under `temporal` they are
groups of sites within the training years.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

SPLITS = ("loso", "temporal")


@dataclasses.dataclass(frozen=True)
class Fold:
  name: str
  test_sites: frozenset[str] | None = None   # loso: the held-out sites
  test_year: int | None = None               # temporal: the held-out year

  def is_test(self, sites: np.ndarray, dates: np.ndarray) -> np.ndarray:
    if self.test_sites is not None:
      return np.isin(np.asarray(sites, object), list(self.test_sites))
    return pd.DatetimeIndex(dates).year.to_numpy() == self.test_year


def site_groups(site_ids: Sequence[str], land_cover: Mapping[str, str], n_groups: int) -> list[list[str]]:
  """`n_groups` groups of sites (0 or >= len: one per site), land covers dealt round-robin."""
  ordered = sorted(site_ids, key=lambda s: (land_cover.get(s, ""), s))
  n = len(ordered) if n_groups <= 0 else min(n_groups, len(ordered))
  return [ordered[i::n] for i in range(n)] if n else []


def spread(site_ids: Sequence[str], land_cover: Mapping[str, str], n: int,
           priority: Mapping[str, float] | None = None) -> list[str]:
  """`n` sites taking one of each land cover in turn (all sites when n <= 0 or n >= their number); within a
  land cover, higher `priority` first."""
  by_cover: dict[str, list[str]] = {}
  for site in sorted(site_ids, key=lambda s: (-(priority or {}).get(s, 0.0), s)):
    by_cover.setdefault(land_cover.get(site, ""), []).append(site)
  order = [s for i in range(max(map(len, by_cover.values()), default=0))
           for _, sites in sorted(by_cover.items()) if i < len(sites) for s in [sites[i]]]
  return order if n <= 0 else order[:n]


def outer_folds(split: str, site_ids: Sequence[str], land_cover: Mapping[str, str], n_folds: int,
                years: Sequence[int] = ()) -> list[Fold]:
  if split == "loso":
    return [Fold("+".join(g) if len(g) <= 2 else f"{g[0]}+{len(g) - 1}", test_sites=frozenset(g))
            for g in site_groups(site_ids, land_cover, n_folds)]
  if split == "temporal":
    return [Fold(f"year_{y}", test_year=int(y)) for y in sorted(set(years))]
  raise ValueError(f"split {split!r}: expected one of {SPLITS}")


def inner_groups(train_sites: Sequence[str], land_cover: Mapping[str, str], n_inner: int) -> list[list[str]]:
  """Validation groups of the training sites (at least 2 groups when there are 2 sites)."""
  return site_groups(train_sites, land_cover, max(2, n_inner) if len(train_sites) >= 2 else 0)
