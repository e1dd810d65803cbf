"""`python -m earthrep.evaluate`: the evaluation of embeddings in one command and one report.

  python -m earthrep.evaluate --world DIR --model FUSION_DIR --out REPORT_DIR [--overwrite]
      [--cubes DIR/cubes --flux DIR/flux]            instead of --world
      [--features fused,fused_daily,s2_emb,s1_emb,ndvi,nirv,kndvi,indices,bands,s1] [--designs met,x,x_met,lue]
      [--regressors ridge,hgb,transformer] [--transformer-sets met,fused,bands,fapar_true|all]
      [--transformer-designs x_met|all] [--transformer-splits loso|all] [--splits loso,temporal]
      [--outer-folds 6] [--inner-folds 3]
      [--radius-m R] [--interpolation linear|ucm] [--no-probes] [--probe-px 12] [--probe-dates 6] [--probe-sites 12]
      [--labels FILE.tif] [--feature-cubes DIR] [--cache DIR] [--steps 600] [--seed 0]

GPP at flux towers from every feature set with and without meteorology (nested leave-sites-out and
leave-year-out), ceilings from the simulator's truth, per-pixel probes and the boundary contrast: see
`earthrep.evaluation.pipeline` and the modules it names. A world written by `data_prep.demo_world` (its
`world.json` names that generator) brings its truth: the tool loads `data_prep.demo_world.evaluation_truth` at
run time (demo only; the library never imports data_prep) and the footprint defaults to the demo's 5 x 5 px
(28.3 m); elsewhere it is 250 m and the probes need `--labels` (one GeoTIFF, or a folder of
`<site_id>.tif`). Inputs and the output folder are checked
before anything is computed; an existing report is replaced only with `--overwrite`.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from pathlib import Path
from typing import Sequence

from earthrep.errors import run_tool
from earthrep.evaluation import features, pipeline, regressors
from earthrep.evaluation.designs import DESIGNS
from earthrep.evaluation.splits import SPLITS

PROG = "python -m earthrep.evaluate"
DEMO_GENERATOR = "data_prep.demo_world"


def _names(text: str) -> tuple[str, ...]:
  return tuple(n.strip() for n in text.split(",") if n.strip())


def demo_truth(world: Path):
  """The truth provider of a demo world, or None for any other folder."""
  meta = world / "world.json"
  if not meta.exists():
    return None
  try:
    generator = json.loads(meta.read_text()).get("generator")
  except (json.JSONDecodeError, AttributeError) as e:
    raise pipeline.OptionError(f"{meta}: not a JSON object ({e})") from e
  if generator != DEMO_GENERATOR:
    return None
  return importlib.import_module(DEMO_GENERATOR).evaluation_truth(world)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0].split(": ", 1)[-1])
  p.add_argument("--world", default=None, help="folder with sites.csv, cubes/, flux/ (and world.json)")
  p.add_argument("--cubes", default=None, help="DIR/cubes (default WORLD/cubes)")
  p.add_argument("--flux", default=None, help="folder of flux files (default WORLD/flux)")
  p.add_argument("--model", default=None, help="fusion model dir (workdir or converted checkpoint)")
  p.add_argument("--out", required=True, help="report folder")
  p.add_argument("--overwrite", action="store_true", help="replace an existing report (and stale cache entries)")
  p.add_argument("--features", default=",".join(pipeline.ALL_SETS))
  p.add_argument("--designs", default=",".join(DESIGNS))
  p.add_argument("--regressors", default=",".join(regressors.REGRESSORS))
  p.add_argument("--transformer-sets", default="met,fused,bands,fapar_true", help="or 'all'")
  p.add_argument("--transformer-designs", default="x_met", help="or 'all'")
  p.add_argument("--transformer-splits", default="loso", help="or 'all'")
  p.add_argument("--splits", default=",".join(SPLITS))
  p.add_argument("--outer-folds", type=int, default=6, help="groups of held-out sites (0: one site per fold)")
  p.add_argument("--inner-folds", type=int, default=3)
  p.add_argument("--radius-m", type=float, default=None,
                 help=f"footprint radius (default {features.DEMO_RADIUS_M} m on demo worlds, else "
                      f"{features.DEFAULT_RADIUS_M:g} m)")
  p.add_argument("--interpolation", default="linear", choices=("linear", "ucm"))
  p.add_argument("--window-days", type=int, default=regressors.WINDOW_DAYS)
  p.add_argument("--train-stride", type=int, default=3)
  p.add_argument("--steps", type=int, default=regressors.TransformerConfig.steps, help="transformer max steps")
  p.add_argument("--layers", type=int, default=regressors.TransformerConfig.layers)
  p.add_argument("--no-probes", action="store_true")
  p.add_argument("--probe-px", type=int, default=12, help="side of the probe crop's output grid (px)")
  p.add_argument("--probe-dates", type=int, default=6)
  p.add_argument("--probe-sites", type=int, default=12, help="towers with probes, land covers in turn (0: all)")
  p.add_argument("--labels", default=None,
                 help="integer label GeoTIFF (or a folder of <site_id>.tif) for the probes of real cubes")
  p.add_argument("--no-truth", action="store_true", help="ignore a demo world's truth")
  p.add_argument("--feature-cubes", default=None, help="FEATURE_DIR/<set>/<site>.zarr of sets made elsewhere")
  p.add_argument("--cache", default=None, help="embedding cache (default OUT/cache)")
  p.add_argument("--min-good-fraction", type=float, default=0.7)
  p.add_argument("--bootstrap", type=int, default=1000)
  p.add_argument("--seed", type=int, default=0)
  return p


def options_from(args: argparse.Namespace) -> tuple[pipeline.Options, object]:
  if args.world is None and (args.cubes is None or args.flux is None):
    raise pipeline.OptionError("--world: give --world DIR, or both --cubes and --flux")
  world = Path(args.world) if args.world else Path(args.cubes).parent
  if args.world is not None and not world.is_dir():
    raise pipeline.OptionError(f"--world {world}: not a folder")
  truth = None if args.no_truth else demo_truth(world)
  radius = args.radius_m if args.radius_m is not None else (
      features.DEMO_RADIUS_M if truth is not None else features.DEFAULT_RADIUS_M)
  every = lambda text: None if text == "all" else _names(text)
  config = dataclasses.replace(regressors.TransformerConfig(), steps=args.steps, layers=args.layers, seed=args.seed)
  options = pipeline.Options(
      cubes=Path(args.cubes or world / "cubes"), flux=Path(args.flux or world / "flux"), out=Path(args.out),
      model=Path(args.model) if args.model else None, features=_names(args.features), designs=_names(args.designs),
      regressors=_names(args.regressors), transformer_sets=every(args.transformer_sets),
      transformer_designs=every(args.transformer_designs), transformer_splits=every(args.transformer_splits),
      splits=_names(args.splits), outer_folds=args.outer_folds, inner_folds=args.inner_folds, radius_m=radius,
      interpolation=args.interpolation, window_days=args.window_days, train_stride=args.train_stride,
      transformer=config, probes=not args.no_probes, probe_px=args.probe_px, probe_dates=args.probe_dates,
      probe_sites=args.probe_sites, labels=Path(args.labels) if args.labels else None,
      feature_cubes=Path(args.feature_cubes) if args.feature_cubes else None,
      cache=Path(args.cache) if args.cache else None, min_good_fraction=args.min_good_fraction,
      n_boot=args.bootstrap, seed=args.seed, overwrite=args.overwrite)
  return options, truth


def _main(argv: Sequence[str] | None) -> int:
  args = parser().parse_args(argv)
  options, truth = options_from(args)
  paths = pipeline.run(options, truth, log=lambda m: print(m, file=sys.stderr, flush=True))
  print(f"wrote {paths['report']} and {paths['metrics']}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return run_tool(_main, argv, PROG)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
