"""`python -m earthrep.flux FILE --out daily.csv`: daily GPP with its QC from a FLUXNET, ICOS or AmeriFlux file.

Columns written: date, gpp, qc_ok, source_column, qc_column, qc_fraction, valid_fraction (the readers and
their rules are in `earthrep.io.flux`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from earthrep.io import atomic
from earthrep.io.flux import (DEFAULT_MIN_GOOD_FRACTION, DEFAULT_MIN_VALID_FRACTION, FluxFormatError,
                              read_daily_gpp)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m earthrep.flux", description=__doc__.split("\n")[0].split(": ", 1)[-1])
  parser.add_argument("file", help="FLUXNET DD/HH/HR csv, ICOS ETC L2 archive zip or AmeriFlux BASE csv")
  parser.add_argument("--out", required=True, help="daily csv to write")
  parser.add_argument("--gpp-column", default=None)
  parser.add_argument("--min-good-fraction", type=float, default=DEFAULT_MIN_GOOD_FRACTION)
  parser.add_argument("--min-valid-fraction", type=float, default=DEFAULT_MIN_VALID_FRACTION)
  args = parser.parse_args(argv)
  try:
    daily = read_daily_gpp(args.file, gpp_column=args.gpp_column, min_good_fraction=args.min_good_fraction,
                           min_valid_fraction=args.min_valid_fraction)
  except FluxFormatError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = daily.assign(date=daily["date"].dt.strftime("%Y-%m-%d"))
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  with atomic.atomic_path(args.out) as tmp:
    out.to_csv(tmp, index=False, float_format="%.6g")
  print(f"{args.file}: {daily.attrs['format']}, {len(daily)} days, {int(daily['qc_ok'].sum())} qc_ok, "
        f"GPP from {daily['source_column'].iloc[0]} -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
