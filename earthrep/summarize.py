r"""`python -m earthrep.summarize`: what trained stages reached, on the held-out splits of their own shards.

  python -m earthrep.summarize --run s1_ae=demo/runs/s1_ae --run s2_ae=demo/runs/s2_ae \
      --run fusion=demo/runs/fusion --out demo/training [--splits validation,test] [--floors FLOORS.json]

Writes `OUT/summary.md` (centre-pixel MAE of each stage's best checkpoint per split and sensor; for a model
trained with hidden centre frames, every fusion model, also with the centre frame hidden, the any-day case;
against a noise floor per sensor from `--floors`, a JSON {"s2": .., "s1": ..}; and what simple rules reach
on the same samples: the training split's band means, the centre frame's mean, the mean of the 8
neighbours, the centre pixel linear in time) and `OUT/curves.png` (validation centre MAE against step), and prints the tables. See
`earthrep.training.summary`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from earthrep.errors import EarthrepError, run_tool
from earthrep.training import summary


def _main(argv: Sequence[str] | None) -> int:
  parser = argparse.ArgumentParser(prog="python -m earthrep.summarize", description=__doc__.split("\n")[0])
  parser.add_argument("--run", action="append", required=True, help="NAME=WORKDIR of a trained stage")
  parser.add_argument("--out", required=True)
  parser.add_argument("--splits", default="validation,test")
  parser.add_argument("--floors", default=None, help='JSON {"s2": floor, "s1": floor} in model units')
  args = parser.parse_args(argv)
  runs = {}
  for item in args.run:
    name, sep, workdir = item.partition("=")
    if not sep or not Path(workdir).is_dir():
      raise EarthrepError(f"--run {item!r}: expected NAME=WORKDIR of an existing stage workdir")
    runs[name] = workdir
  floors = None
  if args.floors:
    try:
      floors = json.loads(Path(args.floors).read_text())
    except (OSError, ValueError) as e:
      raise EarthrepError(f"--floors {args.floors}: unreadable JSON ({e})") from None
  rows = summary.write_summary(runs, args.out, [s for s in args.splits.split(",") if s], floors)
  print((Path(args.out) / "summary.md").read_text(), end="")
  return 0 if rows else 1


def main(argv: Sequence[str] | None = None) -> int:
  return run_tool(_main, argv, "summarize")


if __name__ == "__main__":
  sys.exit(main())
