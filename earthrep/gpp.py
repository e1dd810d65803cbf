"""`python -m earthrep.gpp`: GPP skill of embeddings and baselines at flux towers.

  python -m earthrep.gpp --model FUSION_DIR --cubes DIR/cubes --flux DIR/flux --out REPORT_DIR \
      [--features fused,ndvi,indices,bands,s1] [--split loso|temporal] [--feature-cubes DIR] \
      [--regressors ridge,hgb,transformer] [--daily linear|ucm] [--radius-m 250 | --radius-m cube]

Sites: `sites.csv` next to the cubes folder (site_id, lon, lat, flux_file), else the site ids in the flux
file names that also have a cube. Feature sets: baselines (`ndvi`, `indices`, `bands`, `s1`, `s2s1`; see
evaluation/baselines.py) come from the cube; any other name is an embedding read from
`FEATURE_DIR/<name>/<site>.zarr` (default FEATURE_DIR = REPORT_DIR/feature_cubes). Missing `fused` cubes are
written there by `earthrep.inference.feature_cubes.embed_cube(--model)` (with `--daily reindex`,
`dates="daily"`); without --model, embedding sets without cubes are skipped with a message and the baselines
still run. Observation-date series become daily with `--daily` (evaluation/features.py).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from earthrep.evaluation import baselines, features, regressors, report
from earthrep.evaluation import splits as evaluate
from earthrep.io import flux as flux_lib
from earthrep.inference.feature_cubes import embed_cube
from earthrep.io.cube import find_cubes, read_cube

log = logging.getLogger("earthrep.gpp")
DEFAULT_FEATURES = "fused,ndvi,indices,bands,s1"


def load_sites(cubes: Path, flux_dir: Path) -> pd.DataFrame:
  """site_id, lon, lat (NaN if unknown), flux_path, cube_path."""
  cube_paths = {p.name: p for p in find_cubes(cubes)}
  table = cubes.parent / "sites.csv"
  if table.exists():
    sites = pd.read_csv(table)
    sites["flux_path"] = [next(iter(sorted(flux_dir.glob(f"*_{s}_*"))), cubes.parent / str(f))
                          for s, f in zip(sites["site_id"], sites.get("flux_file", [""] * len(sites)))]
  else:
    files = sorted(p for p in flux_dir.iterdir() if p.suffix.lower() in (".csv", ".zip"))
    sites = pd.DataFrame({"site_id": [flux_lib.site_id_of(p) for p in files], "flux_path": files,
                          "lon": np.nan, "lat": np.nan})
    sites = sites.drop_duplicates("site_id")
  sites = sites[sites["site_id"].isin(cube_paths)].copy()
  sites["cube_path"] = [cube_paths[s] for s in sites["site_id"]]
  if sites.empty:
    raise SystemExit(f"no site has both a cube under {cubes} and a flux file under {flux_dir}")
  return sites.reset_index(drop=True)


def _embedding_cube(name: str, site: str, cube_path: Path, feature_dir: Path, model: str | None,
                    daily: str, skipped: list[str]) -> Path | None:
  for candidate in (feature_dir / name / f"{site}.zarr", feature_dir / name / site / "features.zarr"):
    if candidate.exists():
      return candidate
  if name != "fused" or not model:
    skipped.append(f"{name}/{site}: no feature cube at {feature_dir / name / (site + '.zarr')}"
                   + ("" if name != "fused" else " and no --model to embed with"))
    return None

  out = feature_dir / name / f"{site}.zarr"
  out.parent.mkdir(parents=True, exist_ok=True)
  log.info("embedding %s with %s -> %s", cube_path, model, out)
  return embed_cube(model, str(cube_path), str(out), dates="daily" if daily == "reindex" else "clear")


def build_site(row, feature_sets: Sequence[str], args, skipped: list[str]) -> evaluate.SiteData | None:
  daily_gpp = flux_lib.read_daily_gpp(row.flux_path, min_good_fraction=args.min_good_fraction)
  cube = read_cube(row.cube_path)
  radius = None if args.radius_m == "cube" else float(args.radius_m)
  centre = None
  if np.isfinite(getattr(row, "lon", np.nan)) and np.isfinite(getattr(row, "lat", np.nan)):
    centre = features.tower_xy(cube.crs, float(row.lon), float(row.lat))
  days = features.site_days(daily_gpp["date"])
  gpp = daily_gpp.set_index("date")["gpp"].reindex(days).to_numpy(np.float64)
  qc_ok = daily_gpp.set_index("date")["qc_ok"].reindex(days).fillna(False).to_numpy(bool)
  mask = baselines.cube_footprint(cube, centre, radius)
  daily_method = "linear" if args.daily == "reindex" else args.daily   # baselines are observation dates
  out = {}
  for name in feature_sets:
    if name in baselines.BASELINE_SETS:
      series = baselines.baseline_series(cube, baselines.BASELINE_SETS[name], mask)
      series.index = series.index.tz_localize(None) if series.index.tz else series.index
      out[name] = features.make_daily(series, days, daily_method)
      continue
    path = _embedding_cube(name, row.site_id, row.cube_path, Path(args.feature_cubes), args.model, args.daily,
                           skipped)
    if path is not None:
      series = features.feature_cube_series(path, centre, radius)
      out[name] = features.make_daily(series, days, args.daily)
  return evaluate.SiteData(row.site_id, days, gpp, qc_ok, out)


def run(args: argparse.Namespace) -> dict[str, Path]:
  out = Path(args.out)
  args.feature_cubes = args.feature_cubes or str(out / "feature_cubes")
  feature_sets = [f.strip() for f in args.features.split(",") if f.strip()]
  regressor_names = [r.strip() for r in args.regressors.split(",") if r.strip()]
  for r in regressor_names:
    if r not in regressors.REGRESSORS:
      raise SystemExit(f"--regressors: unknown {r!r} (expected {regressors.REGRESSORS})")
  sites_table = load_sites(Path(args.cubes), Path(args.flux))
  skipped: list[str] = []
  sites = [build_site(row, feature_sets, args, skipped) for row in sites_table.itertuples()]
  for message in skipped:
    print(f"skipped: {message}", file=sys.stderr)
  config = regressors.TransformerConfig(steps=args.steps, layers=args.layers, seed=args.seed)
  metric_rows, prediction_parts = [], []
  for name in feature_sets:
    have = [s for s in sites if name in s.features]
    if len(have) < len(sites):
      continue
    for reg in regressor_names:
      factory = lambda reg=reg: regressors.make_regressor(reg, args.seed, config)
      predictions = evaluate.run_split(have, name, factory, args.split, args.train_stride, args.window_days)
      scores = evaluate.score(predictions, have, args.split)
      metric_rows.append(scores.assign(split=args.split, feature_set=name, regressor=reg))
      prediction_parts.append(predictions.assign(split=args.split, feature_set=name, regressor=reg))
      pooled = scores[scores["site"] == "pooled"]
      if len(pooled):
        print(f"{name:>10s} {reg:>11s}: pooled RMSE {pooled['rmse'].iloc[0]:.3f} R2 {pooled['r2'].iloc[0]:.3f}")
  if not metric_rows:
    raise SystemExit("no feature set could be evaluated (see the skipped messages)")
  metrics = pd.concat(metric_rows, ignore_index=True)
  metrics = metrics[["split", "feature_set", "regressor", "site", *evaluate.METRICS]]
  notes = [f"skipped: {m}" for m in skipped] + [
      f"daily series: {args.daily}; footprint radius: {args.radius_m} m; window {args.window_days} days; "
      f"training stride {args.train_stride} days; GPP QC: NEE_VUT_REF_QC >= {args.min_good_fraction}"]
  paths = report.write_report(metrics, pd.concat(prediction_parts, ignore_index=True), out, notes)
  print(f"wrote {paths['metrics']} and {paths['report']}")
  return paths


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m earthrep.gpp", description=__doc__.split("\n")[0])
  parser.add_argument("--model", default=None, help="fusion workdir for earthrep.embed (fused feature set)")
  parser.add_argument("--cubes", required=True, help="DIR/cubes (site folders with cube.zarr)")
  parser.add_argument("--flux", required=True, help="folder of flux files (FLUXNET/ICOS/AmeriFlux)")
  parser.add_argument("--out", required=True, help="report folder")
  parser.add_argument("--features", default=DEFAULT_FEATURES)
  parser.add_argument("--split", default="loso", choices=evaluate.SPLITS)
  parser.add_argument("--feature-cubes", default=None, help="FEATURE_DIR/<set>/<site>.zarr (default OUT/feature_cubes)")
  parser.add_argument("--regressors", default="ridge,hgb,transformer")
  parser.add_argument("--daily", default="linear", choices=features.DAILY_METHODS)
  parser.add_argument("--radius-m", default=str(features.DEFAULT_RADIUS_M), help="footprint radius or 'cube'")
  parser.add_argument("--window-days", type=int, default=regressors.WINDOW_DAYS)
  parser.add_argument("--train-stride", type=int, default=5)
  parser.add_argument("--min-good-fraction", type=float, default=flux_lib.DEFAULT_MIN_GOOD_FRACTION)
  parser.add_argument("--steps", type=int, default=regressors.TransformerConfig.steps)
  parser.add_argument("--layers", type=int, default=regressors.TransformerConfig.layers)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  run(args)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
