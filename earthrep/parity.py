"""Compares earthrep's models and losses with the reference parity vectors, array by array.

  python -m earthrep.parity --vectors ../shared/reference/vectors/s2_ae.npz --model s2_ae
  python -m earthrep.parity --vectors tests/data/parity/fusion.npz --model fusion   # compact vectors

Prints `name  max_abs_err  tol  ok|FAIL` per array and `parity: N/N arrays within tolerance`; exits 0 only
if every array passes, 2 for a file that cannot be compared. See `earthrep.interop.parity`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from earthrep.errors import run_tool
from earthrep.interop.parity import MODELS, run_parity

PROG = "python -m earthrep.parity"


def _main(argv: Sequence[str] | None) -> int:
  ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  ap.add_argument("--vectors", required=True, help="a parity .npz (s1_ae.npz, s2_ae.npz or fusion.npz)")
  ap.add_argument("--model", required=True, choices=MODELS)
  args = ap.parse_args(argv)
  rows = run_parity(args.vectors, args.model)
  width = max(len(r[0]) for r in rows)
  for name, err, tol, ok in rows:
    print(f"{name:<{width}}  {err:.3e}  {tol:.0e}  {'ok' if ok else 'FAIL'}")
  n_ok = sum(r[3] for r in rows)
  print(f"parity: {n_ok}/{len(rows)} arrays within tolerance")
  return 0 if n_ok == len(rows) else 1


def main(argv: Sequence[str] | None = None) -> int:
  return run_tool(_main, argv, PROG)


if __name__ == "__main__":
  sys.exit(main())
