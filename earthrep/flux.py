"""`python -m earthrep.flux FILE --out daily.csv`: daily GPP with its QC and the meteorological drivers from a
FLUXNET, ICOS or AmeriFlux file.

Columns written: `earthrep.io.flux.OUTPUT_COLUMNS` (date, gpp and its QC, then sw_in_w_m2, ta_c, vpd_hpa with
their QC fractions; the readers and their rules are in `earthrep.io.flux`). The input is read and checked
before anything is written; `--out` must not be the input, and an existing `--out` is replaced only with
`--overwrite`. Drivers the file lacks are NaN columns and named on stderr; duplicated identical rows are
dropped and counted, conflicting duplicates refused.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from earthrep.errors import run_tool
from earthrep.io import atomic
from earthrep.io.flux import (DEFAULT_MIN_GOOD_FRACTION, DEFAULT_MIN_VALID_FRACTION, METEO, FluxFormatError,
                              read_daily_gpp)

PROG = "python -m earthrep.flux"


def _main(argv: Sequence[str] | None) -> int:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0].split(": ", 1)[-1])
  parser.add_argument("file", help="FLUXNET DD/HH/HR csv, ICOS ETC L2 archive zip or AmeriFlux BASE csv")
  parser.add_argument("--out", required=True, help="daily csv to write")
  parser.add_argument("--gpp-column", default=None)
  parser.add_argument("--min-good-fraction", type=float, default=DEFAULT_MIN_GOOD_FRACTION)
  parser.add_argument("--min-valid-fraction", type=float, default=DEFAULT_MIN_VALID_FRACTION)
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  args = parser.parse_args(argv)
  source, out = Path(args.file), Path(args.out)
  if out.exists() and source.exists() and out.resolve() == source.resolve():
    raise FluxFormatError(f"--out {out}: is the input file {source}; choose another output")
  for name in ("min_good_fraction", "min_valid_fraction"):
    if not 0.0 <= getattr(args, name) <= 1.0:
      raise FluxFormatError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected a fraction in [0, 1]")
  daily = read_daily_gpp(source, gpp_column=args.gpp_column, min_good_fraction=args.min_good_fraction,
                         min_valid_fraction=args.min_valid_fraction)
  atomic.check_target(out, arg="--out", overwrite=args.overwrite, kind="daily flux csv",
                      is_kind=lambda p: p.is_file(), directory=False)
  table = daily.assign(date=daily["date"].dt.strftime("%Y-%m-%d"))
  out.parent.mkdir(parents=True, exist_ok=True)
  with atomic.atomic_path(out) as tmp:
    table.to_csv(tmp, index=False, float_format="%.6g")
  meteo = daily.attrs["meteo"]
  drivers = ", ".join(f"{n} from {m['column']} ({m['units']})" if "column" in m else f"{n} missing ({m['missing']})"
                      for n, m in meteo.items())
  print(f"{args.file}: {daily.attrs['format']}, {len(daily)} days, {int(daily['qc_ok'].sum())} qc_ok, "
        f"GPP from {daily['source_column'].iloc[0]}; {drivers} -> {args.out}")
  if daily.attrs["duplicates_dropped"]:
    print(f"{args.file}: warning: {daily.attrs['duplicates_dropped']} duplicated identical rows dropped",
          file=sys.stderr)
  missing = [n for n in METEO if "missing" in meteo[n]]
  if missing:
    print(f"{args.file}: warning: no {', '.join(missing)} in this file", file=sys.stderr)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return run_tool(_main, argv, PROG)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
