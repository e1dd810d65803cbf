"""Towers of an evaluation and what each one contributes: daily GPP data and per-pixel probe data.

Sites: `sites.csv` (site_id, lon, lat[, land_cover][, flux_file relative to the table's folder]) next to the
cubes folder, else the site ids in the flux file names that also have a cube. The tower is the pixel of its
lon/lat in the cube's grid (the cube centre without coordinates).
GPP data of a site (`gpp_site`): the days both the flux file and the cube cover; daily GPP and its QC; the
meteorological drivers (None, with the reason, when the file lacks one); every feature set's daily series
over the footprint (`evaluation.features`: S2-derived sets on the same clear dates, the clear-date ones made
daily by interpolation, the any-day embedding `fused_daily` taken day by day); the simulator's fAPAR and
noise-free GPP where a truth is known (`fapar_true`, the ceilings).
Probe data of a site (`probe_site`): a crop of the cube (`probe_crop`: the `probe_px` square with the most
kinds, then parcels, of the truth, so the probes see rare kinds such as roads, and many boundaries) on a few
clear dates (runs of consecutive clear windows spread over the period, `probe_dates`), every set's per-pixel
values there, and the truth's kinds, parcels and per-pixel values on the crop.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from earthrep.data import windows as windows_lib
from earthrep.errors import EarthrepError
from earthrep.evaluation import baselines, features
from earthrep.evaluation.embeddings import Crop, Embedder
from earthrep.evaluation.nested import SiteData
from earthrep.evaluation.probes import ProbeSite
from earthrep.evaluation.truth import PIXEL_VALUES, SiteTruth
from earthrep.io import flux as flux_lib
from earthrep.io.cube import find_cubes, read_cube
from earthrep.schema import CENTRE_PX, SiteCube

EMBEDDING_SETS = {"fused": ("fused", "clear"), "fused_daily": ("fused", "daily"), "s2_emb": ("s2", "clear"),
                  "s1_emb": ("s1", "clear")}
TRUTH_SETS = ("fapar_true",)


class SiteError(EarthrepError):
  """Sites, cubes and flux files that do not fit together."""


@dataclasses.dataclass
class Tower:
  site_id: str
  cube_path: Path
  flux_path: Path
  lon: float
  lat: float
  land_cover: str
  cube: SiteCube | None = None
  tower_rc: tuple[int, int] = (0, 0)
  tower_xy: tuple[float, float] = (0.0, 0.0)

  def load(self) -> "Tower":
    if self.cube is None:
      self.cube = read_cube(self.cube_path)
      h, w = self.cube.shape_hw
      a, _, c, _, e, f = self.cube.transform
      if np.isfinite(self.lon) and np.isfinite(self.lat):
        self.tower_xy = features.tower_xy(self.cube.crs, self.lon, self.lat)
        self.tower_rc = (int((self.tower_xy[1] - f) // e), int((self.tower_xy[0] - c) // a))
      else:
        self.tower_rc = (h // 2, w // 2)
        self.tower_xy = (c + a * (w // 2 + 0.5), f + e * (h // 2 + 0.5))
      if not (0 <= self.tower_rc[0] < h and 0 <= self.tower_rc[1] < w):
        raise SiteError(f"{self.cube_path}: transform: the tower ({self.lon}, {self.lat}) is outside the cube")
    return self


def load_towers(cubes: Path, flux_dir: Path) -> tuple[list[Tower], list[str]]:
  """(towers, notes on sites left out)."""
  if not cubes.is_dir():
    raise SiteError(f"--cubes {cubes}: not a folder")
  if not flux_dir.is_dir():
    raise SiteError(f"--flux {flux_dir}: not a folder")
  cube_paths = {p.name: p for p in find_cubes(cubes)}
  if not cube_paths:
    raise SiteError(f"--cubes {cubes}: holds no site cube")
  table, notes = cubes.parent / "sites.csv", []
  if table.exists():
    sites = pd.read_csv(table)
    if "site_id" not in sites.columns:
      raise SiteError(f"{table}: column site_id: missing")
  else:
    files = sorted(p for p in flux_dir.iterdir() if p.suffix.lower() in (".csv", ".zip"))
    sites = pd.DataFrame({"site_id": [flux_lib.site_id_of(p) for p in files]}).drop_duplicates("site_id")
  towers = []
  for row in sites.itertuples():
    site = str(row.site_id)
    listed = getattr(row, "flux_file", None)
    candidates = sorted(flux_dir.glob(f"*_{site}_*"))
    flux_path = candidates[0] if candidates else (table.parent / str(listed) if isinstance(listed, str) else None)
    if site not in cube_paths:
      notes.append(f"{site}: no cube under {cubes}")
    elif flux_path is None or not flux_path.exists():
      notes.append(f"{site}: no flux file under {flux_dir}")
    else:
      towers.append(Tower(site, cube_paths[site], flux_path, float(getattr(row, "lon", np.nan)),
                          float(getattr(row, "lat", np.nan)), str(getattr(row, "land_cover", "") or "")))
  if not towers:
    raise SiteError(f"--cubes {cubes} / --flux {flux_dir}: no site has both a cube and a flux file "
                    f"({'; '.join(notes[:3])})")
  return towers, notes


def _daily(series: pd.DataFrame, days: pd.DatetimeIndex, method: str) -> pd.DataFrame:
  series = series.copy()
  series.index = series.index.tz_localize(None) if series.index.tz else series.index
  return features.make_daily(series, days, method)


def gpp_site(tower: Tower, sets: Sequence[str], embedder: Embedder | None, radius_m: float, gpp_crop_px: int,
             interpolation: str, truth: SiteTruth | None, min_good_fraction: float,
             external: Callable[[str, str], Path | None], notes: list[str]) -> SiteData:
  cube = tower.load().cube
  daily = flux_lib.read_daily_gpp(tower.flux_path, min_good_fraction=min_good_fraction)
  s2_days = pd.DatetimeIndex(cube.s2_time).normalize()
  first, last = max(s2_days.min(), daily["date"].min()), min(s2_days.max(), daily["date"].max())
  if first > last:
    raise SiteError(f"{tower.flux_path}: TIMESTAMP: no day in common with the cube {tower.cube_path}")
  days = pd.date_range(first, last, freq="D")
  flux = daily.set_index("date")
  gpp = flux["gpp"].reindex(days).to_numpy(np.float64)
  qc_ok = flux["qc_ok"].reindex(days).fillna(False).to_numpy(bool)
  met = flux[list(flux_lib.METEO)].reindex(days)
  try:
    flux_lib.require_meteo(daily)
  except flux_lib.FluxFormatError as e:
    notes.append(f"{tower.site_id}: no meteorology models ({e})")
    met = None
  mask = features.cube_footprint(cube, tower.tower_xy, radius_m)
  keep = features.clear_days(cube, mask)
  series = {}
  crop = Crop.around(tower.tower_rc, gpp_crop_px, cube.shape_hw)
  for name in sets:
    if name in EMBEDDING_SETS and embedder is not None and embedder.available(EMBEDDING_SETS[name][0]):
      kind, dates = EMBEDDING_SETS[name]
      fc = embedder.feature_cube(tower.site_id, cube, tower.cube_path, crop, kind, dates)
      series[name] = features.feature_cube_series(fc, tower.tower_xy, radius_m, None if dates == "daily" else keep)
    elif name not in baselines.BASELINE_SETS and name not in TRUTH_SETS and name not in EMBEDDING_SETS:
      path = external(name, tower.site_id)
      if path is not None:
        series[name] = features.feature_cube_series(path, tower.tower_xy, radius_m, keep)
  # Every clear-date set and every S2 baseline uses the same dates: those all of them have.
  for name, frame in series.items():
    if name != "fused_daily":
      keep = keep.intersection(frame.index.normalize()[np.isfinite(frame.to_numpy()).all(1)])
  out = {}
  for name in sets:
    if name in baselines.BASELINE_SETS:
      out[name] = _daily(baselines.baseline_series(cube, baselines.BASELINE_SETS[name], mask, keep), days,
                         interpolation)
    elif name == "fused_daily" and name in series:
      out[name] = features.daily_reindex(series[name], days)
    elif name in series:
      out[name] = _daily(series[name][series[name].index.normalize().isin(keep)], days, interpolation)
    elif name == "fapar_true" and truth is not None and truth.fapar is not None:
      out[name] = pd.DataFrame({"fAPAR": truth.daily("fapar", days)}, index=days)
  truth_gpp = truth.daily("gpp", days) if truth is not None and truth.gpp is not None else None
  return SiteData(tower.site_id, days, gpp, qc_ok, out, met, tower.land_cover, truth_gpp)


def probe_dates(crop_cube: SiteCube, n_dates: int, run: int = 2) -> list[str]:
  """`n_dates` clear-window dates of the crop in runs of `run` consecutive ones (windows next to each other
  share 10 of their 11 frames, so a run costs little more than one date), one run in each of as many equal
  slices of the period: the run whose crop is clearest."""
  merged = windows_lib.merge(crop_cube, crop_cube.meta.site_id, with_s1=False)
  target = windows_lib.clear_windows(merged).target_days
  if not len(target):
    return []
  interior = merged.s2_thwc[:, CENTRE_PX:-CENTRE_PX or None, CENTRE_PX:-CENTRE_PX or None]
  share = dict(zip(merged.s2_days.tolist(), np.isfinite(interior).all(-1).reshape(len(interior), -1).mean(1)))
  clear = np.array([share.get(int(d), 0.0) for d in target])
  starts = np.arange(max(len(target) - run + 1, 1))
  score = np.array([clear[i:i + run].mean() for i in starts])
  chosen = []
  for part in np.array_split(starts, max(1, min(-(-n_dates // run), len(starts)))):
    if len(part):
      best = int(part[np.argmax(score[part])])
      chosen += [d for d in target[best:best + run] if d not in chosen]
  return [str(np.datetime64(int(d), "D")) for d in sorted(chosen)[:n_dates]]


def probe_crop(truth: SiteTruth, probe_px: int, cube_hw: tuple[int, int], tower_rc: tuple[int, int]) -> Crop:
  """The crop whose output grid holds the most kinds (then parcels) of the truth; the tower's if none known."""
  crop = Crop.around(tower_rc, probe_px, cube_hw)
  if truth.parcel is None:
    return crop
  best, best_score = crop, (-1, -1)
  for r in range(CENTRE_PX, max(cube_hw[0] - CENTRE_PX - probe_px, CENTRE_PX) + 1):
    for c in range(CENTRE_PX, max(cube_hw[1] - CENTRE_PX - probe_px, CENTRE_PX) + 1):
      window = (slice(r, r + probe_px), slice(c, c + probe_px))
      parcels = truth.parcel[window]
      kinds = truth.kind[window] if truth.kind is not None else parcels
      score = (len(np.unique(kinds[kinds >= 0])), len(np.unique(parcels[parcels >= 0])))
      if score > best_score:
        best, best_score = Crop.around((r + probe_px // 2, c + probe_px // 2), probe_px, cube_hw), score
  return best


def probe_site(tower: Tower, sets: Sequence[str], embedder: Embedder | None, truth: SiteTruth,
               probe_px: int, n_dates: int) -> ProbeSite | None:
  cube = tower.load().cube
  crop = probe_crop(truth, probe_px, cube.shape_hw, tower.tower_rc)
  crop_cube = crop.apply(cube)
  days = probe_dates(crop_cube, n_dates)
  if not days:
    return None
  rows = slice(crop.r0 + CENTRE_PX, crop.r0 + crop.rows - CENTRE_PX)
  cols = slice(crop.c0 + CENTRE_PX, crop.c0 + crop.cols - CENTRE_PX)
  out = {}
  for name in sets:
    if name in EMBEDDING_SETS and EMBEDDING_SETS[name][1] == "clear" and embedder is not None \
        and embedder.available(EMBEDDING_SETS[name][0]):
      fc = embedder.feature_cube(tower.site_id, cube, tower.cube_path, crop, EMBEDDING_SETS[name][0], tuple(days))
      if [str(t)[:10] for t in fc.time.astype("datetime64[D]")] != days:
        raise SiteError(f"{tower.site_id}: probe dates: the feature cube has {len(fc.time)} of {len(days)} dates")
      out[name] = np.moveaxis(fc.values_fthw, 0, -1)
  s2_days = pd.DatetimeIndex(cube.s2_time).normalize()
  s2_index = np.array([int(np.flatnonzero(s2_days == pd.Timestamp(d))[0]) for d in days])
  pixels = baselines.pixel_baselines(crop_cube, s2_index)
  for name in sets:
    if name in pixels:
      out[name] = pixels[name][:, CENTRE_PX:-CENTRE_PX or None, CENTRE_PX:-CENTRE_PX or None]
  values = {}
  if truth.pixel_values is not None:
    values = {k: v[:, rows, cols] for k, v in truth.pixel_values(np.asarray(days, "datetime64[D]")).items()
              if k in PIXEL_VALUES}
  return ProbeSite(tower.site_id, tower.land_cover, np.asarray(days, "datetime64[D]"), out,
                   None if truth.kind is None else truth.kind[rows, cols],
                   None if truth.parcel is None else truth.parcel[rows, cols], values)
