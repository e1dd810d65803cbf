r"""Feature cubes: the fused embedding of every pixel and date of a site cube, written to Zarr.

  python -m earthrep.embed --model runs/fusion --cube data/XX/cube.zarr --out out/XX_features.zarr \
      [--dates clear|daily|2019-06-01,2019-07-15] [--geotiff DIR] [--batch N] [--resume|--overwrite] \
      [--scheduler tcp://host:8786] [--quicklook 2019-06-01|auto] [--naive] [--tile 32] [--embedding fused|s1|s2]

Only arguments are parsed here; the work is `earthrep.inference.feature_cubes.embed_cube` (its docstring
describes the output, resume and the cluster mode) and the format `earthrep.io.feature_cube`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from earthrep.errors import run_tool
from earthrep.inference.feature_cubes import DEFAULT_TILE, embed_cube

PROG = "python -m earthrep.embed"


def _main(argv: Sequence[str] | None) -> int:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True, help="fusion workdir or converted checkpoint")
  parser.add_argument("--cube", required=True, help="site cube (.zarr, site dir or GeoTIFF stack)")
  parser.add_argument("--out", required=True, help="output .zarr")
  parser.add_argument("--dates", default="clear", help="clear | daily | comma-separated ISO days")
  parser.add_argument("--geotiff", help="also write one COG per date into this directory")
  parser.add_argument("--batch", type=int, help="windows per batch (default: from available memory)")
  parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help="tile / chunk size in output pixels")
  group = parser.add_mutually_exclusive_group()
  group.add_argument("--resume", action="store_true", help="finish an interrupted run (same arguments)")
  group.add_argument("--overwrite", action="store_true",
                     help="replace an existing output (feature cube, GeoTIFFs, quick-look) or partial run")
  parser.add_argument("--scheduler", help="address of a dask.distributed scheduler")
  parser.add_argument("--quicklook", help="ISO date of a PNG quick-look, or auto (the clearest date)")
  parser.add_argument("--naive", action="store_true", help="reference path: full forward per window")
  parser.add_argument("--embedding", default="fused",
                      help="fused (zf, default) or a sensor (s1, s2): that sensor's own autoencoder code")
  args = parser.parse_args(argv)
  embed_cube(args.model, args.cube, args.out, dates=args.dates, naive=args.naive, batch=args.batch,
             tile=args.tile, resume=args.resume, overwrite=args.overwrite, scheduler=args.scheduler,
             geotiff=args.geotiff, quicklook=args.quicklook, embedding=args.embedding)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return run_tool(_main, argv, PROG)


if __name__ == "__main__":
  sys.exit(main())
