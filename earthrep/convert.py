"""Converts reference PyTorch weights into an earthrep Orbax checkpoint that the trainers can load.

  python -m earthrep.convert --state-dict fuse_model.ckpt --model fusion --out runs/converted/fusion

Only arguments are parsed here; see `earthrep.interop.convert` for the formats read and the layout written.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from earthrep.errors import run_tool
from earthrep.interop.convert import MODELS, convert

PROG = "python -m earthrep.convert"


def _main(argv: Sequence[str] | None) -> int:
  ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  ap.add_argument("--state-dict", required=True, help=".ckpt / .pt (torch) or .npz of param/* arrays")
  ap.add_argument("--model", required=True, choices=MODELS)
  ap.add_argument("--out", required=True, help="new directory for the Orbax checkpoint")
  ap.add_argument("--reference-batch-mixing", action="store_true",
                  help="encoder attends across the batch exactly like the reference")
  ap.add_argument("--reduced-tokens", type=int, default=None,
                  help="override N of s1_ae/s2_ae (train_modality.py used 7 for S2)")
  ap.add_argument("--allow-pickle", action="store_true",
                  help="torch.load with weights_only=False (trusted files only)")
  ap.add_argument("--overwrite", action="store_true", help="replace an earlier converted checkpoint in --out")
  args = ap.parse_args(argv)
  out = convert(args.state_dict, args.model, args.out, reference_batch_mixing=args.reference_batch_mixing,
                reduced_tokens=args.reduced_tokens, allow_pickle=args.allow_pickle, overwrite=args.overwrite)
  print(f"convert: wrote {out}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return run_tool(_main, argv, PROG)


if __name__ == "__main__":
  sys.exit(main())
