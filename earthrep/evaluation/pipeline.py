"""The evaluation run behind `python -m earthrep.evaluate` (and `earthrep.gpp`): towers -> features -> nested
GPP models, ceilings and per-pixel probes -> metrics with intervals -> report.

`Options` holds every choice (the CLI fills it); `run(options, truth_provider, log)` checks the inputs and
the output folder before it computes anything, then writes `report.md`, `metrics.csv`, `predictions.csv.gz`,
`selection.csv` (hyper-parameters per fold), `probes_*.csv` and the figures (`evaluation.report`).
Combos: every requested feature set under every requested design except `met`, which runs once (feature
set `met`); the transformer only on `transformer_sets` x `transformer_designs` (CPU cost; the report says
which). The truth's fAPAR (`fapar_true`) joins as a ceiling wherever a truth is known, and the flux-noise
ceiling compares observed with noise-free GPP on the same scored days.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from earthrep.errors import EarthrepError
from earthrep.evaluation import metrics as metrics_lib
from earthrep.evaluation import nested, probes, report, sites as sites_lib
from earthrep.evaluation import regressors as reg
from earthrep.evaluation import splits as splits_lib
from earthrep.evaluation.designs import DESIGNS
from earthrep.evaluation.embeddings import Embedder
from earthrep.evaluation.truth import SiteTruth, TruthProvider, check_against_flux, harmonise_labels
from earthrep.io import atomic
from earthrep.io import flux as flux_lib
from earthrep.schema import CENTRE_PX

ALL_SETS = ("fused", "fused_daily", "s2_emb", "s1_emb", "ndvi", "nirv", "kndvi", "indices", "bands", "s1")
FLUX_NOISE = "flux_noise"


class OptionError(EarthrepError):
  """An argument of the evaluation that cannot work."""


@dataclasses.dataclass
class Options:
  cubes: Path
  flux: Path
  out: Path
  model: Path | None = None
  features: tuple[str, ...] = ALL_SETS
  designs: tuple[str, ...] = DESIGNS
  regressors: tuple[str, ...] = reg.REGRESSORS
  transformer_sets: tuple[str, ...] | None = ("met", "fused", "bands", "fapar_true")
  transformer_designs: tuple[str, ...] | None = ("x_met",)
  transformer_splits: tuple[str, ...] | None = ("loso",)
  splits: tuple[str, ...] = splits_lib.SPLITS
  outer_folds: int = 6
  inner_folds: int = 3
  radius_m: float = 250.0
  gpp_crop_px: int | None = None        # output px of the GPP crop; None: the footprint's diameter
  interpolation: str = "linear"
  window_days: int = reg.WINDOW_DAYS
  train_stride: int = 3
  transformer: reg.TransformerConfig = reg.TransformerConfig()
  probes: bool = True
  probe_px: int = 12
  probe_dates: int = 6
  probe_sites: int = 12                 # towers with probes (land covers dealt round-robin); 0: all
  labels: Path | None = None
  feature_cubes: Path | None = None     # FEATURE_DIR/<set>/<site>.zarr of sets made elsewhere
  cache: Path | None = None
  min_good_fraction: float = 0.7
  n_boot: int = metrics_lib.N_BOOT
  seed: int = 0
  overwrite: bool = False
  truth_ceilings: bool = True


OUTPUT_FILES = ("report.md", "metrics.csv", "predictions.csv.gz", "selection.csv", "probes_land_cover.csv",
                "probes_regression.csv", "probes_contrast.csv", "skill_loso.png", "skill_temporal.png",
                "scatter.png", "series.png", "loss_curves.png", "confusion.png")


def check(options: Options) -> None:
  """Raises OptionError / OutputError for arguments that cannot work, before anything is computed."""
  unknown = [f for f in options.features if f in ("met", *sites_lib.TRUTH_SETS)]
  if unknown:
    raise OptionError(f"--features {','.join(options.features)}: {unknown[0]} is not a feature set (the "
                      "meteorology-only model and the truth ceilings are added by themselves)")
  bad = [d for d in options.designs if d not in DESIGNS]
  if bad:
    raise OptionError(f"--designs: unknown {bad[0]!r}; expected some of {', '.join(DESIGNS)}")
  bad = [r for r in options.regressors if r not in reg.REGRESSORS]
  if bad:
    raise OptionError(f"--regressors: unknown {bad[0]!r}; expected some of {', '.join(reg.REGRESSORS)}")
  bad = [s for s in options.splits if s not in splits_lib.SPLITS]
  if bad:
    raise OptionError(f"--splits: unknown {bad[0]!r}; expected some of {', '.join(splits_lib.SPLITS)}")
  needs_model = [f for f in options.features if f in sites_lib.EMBEDDING_SETS]
  if needs_model and options.model is None:
    raise OptionError(f"--features {','.join(needs_model)}: embeddings need --model (a fusion model dir)")
  if options.model is not None and not Path(options.model).is_dir():
    raise OptionError(f"--model {options.model}: not a folder")
  external = [f for f in options.features if f not in ALL_SETS]
  if external and options.feature_cubes is None:
    raise OptionError(f"--features {external[0]}: unknown set; sets made elsewhere need --feature-cubes DIR")
  for name, value, low in (("--outer-folds", options.outer_folds, 0), ("--inner-folds", options.inner_folds, 2),
                           ("--window-days", options.window_days, 1), ("--train-stride", options.train_stride, 1),
                           ("--probe-px", options.probe_px, 1), ("--probe-dates", options.probe_dates, 1)):
    if value < low:
      raise OptionError(f"{name} {value}: expected >= {low}")
  if not options.radius_m > 0:
    raise OptionError(f"--radius-m {options.radius_m}: expected a radius > 0 in metres")
  if not 0.0 <= options.min_good_fraction <= 1.0:
    raise OptionError(f"--min-good-fraction {options.min_good_fraction}: expected a fraction in [0, 1]")
  if options.n_boot < 10:
    raise OptionError(f"--bootstrap {options.n_boot}: expected at least 10 draws")
  if options.labels is not None and not Path(options.labels).exists():
    raise OptionError(f"--labels {options.labels}: no such file or folder")
  out = Path(options.out)
  atomic.check_writable(out, "--out")
  if out.exists() and not out.is_dir():
    raise OptionError(f"--out {out}: is a file; expected a folder for the report")
  existing = [name for name in OUTPUT_FILES if (out / name).exists()]
  if existing and not options.overwrite:   # other files in the folder are left alone
    raise OptionError(f"--out {out}: holds a report ({', '.join(existing[:3])}); pass --overwrite to replace it")
  atomic.check_apart(out, {"--cubes": options.cubes, "--flux": options.flux, "--model": options.model})


def _truth_for(tower: sites_lib.Tower, provider: TruthProvider | None, options: Options) -> SiteTruth | None:
  """The simulator's truth (checked against the site's flux file), else the label raster's, else None."""
  from earthrep.evaluation.truth import label_truth
  if provider is not None:
    truth = provider(tower.site_id, tower.load().cube)
    daily = flux_lib.read_daily_gpp(tower.flux_path, min_good_fraction=options.min_good_fraction)
    check_against_flux(truth, pd.DatetimeIndex(daily["date"]), daily["gpp"].to_numpy(), str(tower.flux_path))
    return truth
  if options.labels is not None:
    raster = Path(options.labels) / f"{tower.site_id}.tif" if Path(options.labels).is_dir() else options.labels
    return label_truth(raster, tower.load().cube, tower.site_id) if Path(raster).exists() else None
  return None


def _noise_ceiling(sites: list[nested.SiteData], usable: dict[str, np.ndarray], split: str) -> pd.DataFrame:
  parts = []
  for s in sites:
    if s.truth_gpp is None:
      continue
    ok = usable[s.site_id] & np.isfinite(s.truth_gpp)
    parts.append(pd.DataFrame({"split": split, "feature_set": FLUX_NOISE, "design": "-", "regressor": "truth",
                               "fold": "-", "site": s.site_id, "date": s.days.values[ok], "obs": s.gpp[ok],
                               "pred": s.truth_gpp[ok]}))
  return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _scores(predictions: pd.DataFrame, site_ids: list[str], n_boot: int, seed: int) -> pd.DataFrame:
  keys = ["split", "feature_set", "design", "regressor"]
  counts = metrics_lib.bootstrap_draws(len(site_ids), n_boot, seed)
  rows, stats = [], []
  for key, part in predictions.groupby(keys, sort=False):
    table = metrics_lib.score(part)
    rows.append(table.assign(**dict(zip(keys, key))))
    stats.append(metrics_lib.site_stats(part, site_ids))
  scores = pd.concat(rows, ignore_index=True)
  ci = metrics_lib.intervals(np.stack(stats), counts)
  pooled = scores["site"] == "pooled"
  for name, values in ci.items():
    scores.loc[pooled, name] = values
  return scores[[*keys, "site", *metrics_lib.METRICS, *ci]]


def _combos(options: Options, sets: list[str], gpp_sites: list[nested.SiteData]) -> list[nested.Combo]:
  combos = [nested.make_combo(gpp_sites, "met", "met")] if "met" in options.designs else []
  combos += [nested.make_combo(gpp_sites, name, design) for name in sets for design in options.designs
             if design != "met"]
  return [c for c in combos if c.tables]


def _kinds(options: Options, split: str, combo: nested.Combo) -> list[str]:
  """The regressors of a combo: the transformer only where the options allow it (CPU cost)."""
  def allowed(chosen, value):
    return chosen is None or value in chosen
  transformer = (allowed(options.transformer_splits, split) and allowed(options.transformer_sets, combo.feature_set)
                 and (combo.design == "met" or allowed(options.transformer_designs, combo.design)))
  return [k for k in options.regressors if k != "transformer" or transformer]


def _models(options: Options, gpp_sites: list[nested.SiteData], combos: list[nested.Combo],
            usable: dict[str, np.ndarray], seconds: dict[str, float], log: Callable[[str], None]
            ) -> tuple[pd.DataFrame, list]:
  land_cover = {s.site_id: s.land_cover for s in gpp_sites}
  parts, folds_out = [], []
  for split in options.splits:
    years = sorted({d.year for s in gpp_sites for d in s.days[usable[s.site_id]]})
    folds = splits_lib.outer_folds(split, [s.site_id for s in gpp_sites], land_cover, options.outer_folds, years)
    for combo in combos:
      kinds = _kinds(options, split, combo)
      rows = nested.make_rows(combo, gpp_sites, usable, options.window_days, options.train_stride)
      frame, results = nested.run_all(rows, kinds, folds, split, land_cover, options.inner_folds,
                                      options.transformer, options.seed, seconds)
      parts.append(frame)
      folds_out += [(split, combo, r) for r in results]
      log(f"{split} {combo.name}: {', '.join(kinds)} over {len(folds)} folds")
    parts.append(_noise_ceiling(gpp_sites, usable, split))
  parts = [p for p in parts if len(p)]
  return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()), folds_out


def _probe_sites(options: Options, towers: list, truths: dict, embedder: Embedder | None) -> list:
  labelled = [t for t in towers if truths[t.site_id] is not None and truths[t.site_id].kind is not None]
  kinds = {}   # prefer the towers whose probe crop holds the most kinds (rare ones such as roads included)
  for t in labelled:
    crop = sites_lib.probe_crop(truths[t.site_id], options.probe_px, t.load().cube.shape_hw, t.tower_rc)
    window = truths[t.site_id].kind[crop.r0 + CENTRE_PX:crop.r0 + crop.rows - CENTRE_PX,
                                    crop.c0 + CENTRE_PX:crop.c0 + crop.cols - CENTRE_PX]
    kinds[t.site_id] = len(np.unique(window[window >= 0]))
  chosen = set(splits_lib.spread([t.site_id for t in labelled], {t.site_id: t.land_cover for t in towers},
                                 options.probe_sites, kinds))
  out = [sites_lib.probe_site(t, options.features, embedder, truths[t.site_id], options.probe_px,
                              options.probe_dates) for t in towers if t.site_id in chosen]
  return [p for p in out if p is not None]


def run(options: Options, truth_provider: TruthProvider | None = None,
        log: Callable[[str], None] = print) -> dict[str, Path]:
  # sklearn's OpenMP runtime must be loaded before it is limited: one loaded inside `threadpool_limits`
  # keeps its default threads (measured 20-50x slower boosted trees on a busy 2-core machine)
  import sklearn.ensemble  # noqa: F401
  import sklearn.linear_model  # noqa: F401
  from threadpoolctl import threadpool_limits
  check(options)
  tic, seconds = time.perf_counter(), {}
  towers, notes = sites_lib.load_towers(Path(options.cubes), Path(options.flux))
  embedder = None
  if options.model is not None and any(f in sites_lib.EMBEDDING_SETS for f in options.features):
    embedder = Embedder(options.model, Path(options.cache or Path(options.out) / "cache"),
                        overwrite=options.overwrite, log=log)
    notes += [f"{f}: the model has no {sites_lib.EMBEDDING_SETS[f][0]} sensor; left out"
              for f in options.features if f in sites_lib.EMBEDDING_SETS
              and not embedder.available(sites_lib.EMBEDDING_SETS[f][0])]
  external = (lambda name, site: next((p for p in (Path(options.feature_cubes) / name / f"{site}.zarr",)
                                       if p.exists()), None)) if options.feature_cubes else (lambda n, s: None)
  gpp_crop = options.gpp_crop_px or 2 * int(options.radius_m // 10.0) + 1   # the disc's pixels (10 m grid)
  sets = list(options.features) + (["fapar_true"] if options.truth_ceilings and truth_provider else [])
  truths = {t.site_id: _truth_for(t, truth_provider, options) for t in towers}
  if truth_provider is None and options.labels is not None:
    harmonise_labels([t for t in truths.values() if t is not None])
  gpp_sites = [sites_lib.gpp_site(t, sets, embedder, options.radius_m, gpp_crop, options.interpolation,
                                  truths[t.site_id] if options.truth_ceilings else None, options.min_good_fraction,
                                  external, notes) for t in towers]
  seconds["features (GPP)"] = time.perf_counter() - tic
  probe_sites = []
  if options.probes and any(t is not None and t.kind is not None for t in truths.values()):
    tic_probe = time.perf_counter()
    probe_sites = _probe_sites(options, towers, truths, embedder)
    seconds["features (probes)"] = time.perf_counter() - tic_probe
  combos = _combos(options, sets, gpp_sites)
  usable = nested.usable_days(gpp_sites, combos, options.window_days)
  model_seconds, probe_results = {}, None
  # sklearn single-threaded: OpenMP threads on these small fits cost far more than they give (worst on a
  # shared machine: a 2-thread boosted-tree fit measured 10-20x slower than 1 thread)
  with threadpool_limits(1):
    predictions, folds_out = _models(options, gpp_sites, combos, usable, model_seconds, log)
    if predictions.empty:
      raise OptionError("no model could be fitted: no site-day has GPP, QC and complete feature windows "
                        f"({options.window_days} days); see the notes: {'; '.join(notes[:3])}")
    scores = _scores(predictions, [s.site_id for s in gpp_sites], options.n_boot, options.seed)
    if probe_sites:
      tic_probe = time.perf_counter()
      kind_names = next(t.kind_names for t in truths.values() if t is not None and t.kind is not None)
      probe_results = probes.run(probe_sites, kind_names, options.outer_folds, options.seed)
      probe_results["kind_names"] = kind_names
      probe_results["kinds_present"] = probes.kinds_present(probe_sites, kind_names)
      seconds["probes"] = time.perf_counter() - tic_probe
  seconds.update({f"models: {k}": v for k, v in model_seconds.items()})
  if embedder is not None:
    seconds.update({f"embedding: {k}": v for k, v in embedder.seconds.items()})
  seconds["total"] = time.perf_counter() - tic
  context = report.Context(options=options, towers=towers, sites=gpp_sites, usable=usable, combos=combos,
                           notes=notes, seconds=seconds, truth=truth_provider is not None,
                           labels=options.labels is not None)
  return report.write(Path(options.out), scores, predictions, folds_out, probe_results, context, options.seed)
