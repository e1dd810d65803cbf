"""`python -m earthrep.gpp`: GPP skill of embeddings and baselines at flux towers (the GPP part of
`earthrep.evaluate`, with the flags it always had).

  python -m earthrep.gpp --model FUSION_DIR --cubes DIR/cubes --flux DIR/flux --out REPORT_DIR \
      [--features fused,ndvi,indices,bands,s1] [--split loso|temporal] [--feature-cubes DIR] \
      [--regressors ridge,hgb,transformer] [--daily linear|ucm|reindex] [--radius-m 250] [--overwrite]

Runs `earthrep.evaluation.pipeline` with the `x` design only (each feature set alone, no meteorology), one
split, one site per outer fold, the transformer on every set, no probes and no ceilings; `--daily reindex`
takes `fused` from the any-day model (`fused_daily`). Sets other than the built-in ones are read from
`FEATURE_DIR/<name>/<site>.zarr`. For meteorology, ceilings, probes and intervals use `earthrep.evaluate`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

from earthrep.errors import run_tool
from earthrep.evaluation import features, pipeline, regressors
from earthrep.evaluation.splits import SPLITS

PROG = "python -m earthrep.gpp"
DEFAULT_FEATURES = "fused,ndvi,indices,bands,s1"


def _main(argv: Sequence[str] | None) -> int:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0].split(": ", 1)[-1])
  p.add_argument("--model", default=None, help="fusion workdir (the fused feature set)")
  p.add_argument("--cubes", required=True, help="DIR/cubes (site folders with cube.zarr)")
  p.add_argument("--flux", required=True, help="folder of flux files (FLUXNET/ICOS/AmeriFlux)")
  p.add_argument("--out", required=True, help="report folder")
  p.add_argument("--features", default=DEFAULT_FEATURES)
  p.add_argument("--split", default="loso", choices=SPLITS)
  p.add_argument("--feature-cubes", default=None, help="FEATURE_DIR/<set>/<site>.zarr of sets made elsewhere")
  p.add_argument("--regressors", default="ridge,hgb,transformer")
  p.add_argument("--daily", default="linear", choices=("linear", "ucm", "reindex"))
  p.add_argument("--radius-m", type=float, default=features.DEFAULT_RADIUS_M)
  p.add_argument("--window-days", type=int, default=regressors.WINDOW_DAYS)
  p.add_argument("--train-stride", type=int, default=5)
  p.add_argument("--min-good-fraction", type=float, default=0.7)
  p.add_argument("--steps", type=int, default=regressors.TransformerConfig.steps)
  p.add_argument("--layers", type=int, default=regressors.TransformerConfig.layers)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--overwrite", action="store_true", help="replace an existing report")
  args = p.parse_args(argv)
  names = [n.strip() for n in args.features.split(",") if n.strip()]
  if args.daily == "reindex":
    names = ["fused_daily" if n == "fused" else n for n in names]
  if args.model is None:   # the old behaviour: embeddings without a model are left out, baselines still run
    skipped = [n for n in names if n in pipeline.ALL_SETS and n in ("fused", "fused_daily", "s2_emb", "s1_emb")]
    names = [n for n in names if n not in skipped]
    for n in skipped:
      print(f"skipped: {n}: no --model to embed with", file=sys.stderr)
  config = dataclasses.replace(regressors.TransformerConfig(), steps=args.steps, layers=args.layers, seed=args.seed)
  options = pipeline.Options(
      cubes=Path(args.cubes), flux=Path(args.flux), out=Path(args.out),
      model=Path(args.model) if args.model else None, features=tuple(names), designs=("x",),
      regressors=tuple(r.strip() for r in args.regressors.split(",") if r.strip()), transformer_sets=None,
      transformer_designs=None, splits=(args.split,), outer_folds=0, radius_m=args.radius_m,
      interpolation="linear" if args.daily == "reindex" else args.daily, window_days=args.window_days,
      train_stride=args.train_stride, transformer=config, probes=False,
      feature_cubes=Path(args.feature_cubes) if args.feature_cubes else None,
      min_good_fraction=args.min_good_fraction, seed=args.seed, overwrite=args.overwrite, truth_ceilings=False)
  paths = pipeline.run(options, None, log=lambda m: print(m, file=sys.stderr, flush=True))
  print(f"wrote {paths['metrics']} and {paths['report']}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return run_tool(_main, argv, PROG)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
