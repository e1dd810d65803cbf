r"""`python -m earthrep.refit_heads`: fits the centre heads of a trained fusion model alone, on every window.

  python -m earthrep.refit_heads --model runs/fusion --data-dir SHARDS --out runs/fusion_refit \
      [--hide-centre-prob 0.5] [--epochs 200] [--patience 20] [--batch-size 256] [--lr 1e-3] [--seed 0]

Computes what each centre head reads for every window of SHARDS' training and validation splits (one
forward pass of the frozen model), fits the heads on it for many epochs, each stopped at its best epoch on
the validation split, and writes the model with the refitted heads to OUT (a model directory; every
other parameter is the source model's). Prints each head's validation centre MAE before and after. See
`earthrep.training.head_refit`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from earthrep.errors import run_tool
from earthrep.training import head_refit


def _main(argv: Sequence[str] | None) -> int:
  parser = argparse.ArgumentParser(prog="python -m earthrep.refit_heads", description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True, help="fusion workdir or model directory with centre heads")
  parser.add_argument("--data-dir", required=True, help="shards the model reads (its fused or s2 shards)")
  parser.add_argument("--out", required=True, help="output model directory (new, or an earlier one with --overwrite)")
  parser.add_argument("--hide-centre-prob", type=float, default=0.5,
                      help="share of the windows whose S2 centre frame is hidden (0.5: gap days and clear "
                           "days alike; 1.0: gap days only)")
  parser.add_argument("--epochs", type=int, default=200)
  parser.add_argument("--patience", type=int, default=20, help="epochs without a better validation MAE")
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--weight-decay", type=float, default=1e-4)
  parser.add_argument("--seed", type=int, default=0, help="seed of the hiding draws and the batch order")
  parser.add_argument("--limit", type=int, default=None, help="use only the first LIMIT training records")
  parser.add_argument("--overwrite", action="store_true", help="replace an earlier output model directory")
  args = parser.parse_args(argv)
  record = head_refit.refit(args.model, args.data_dir, args.out, hide_centre_prob=args.hide_centre_prob,
                            seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            weight_decay=args.weight_decay, patience=args.patience, limit=args.limit,
                            overwrite=args.overwrite)
  for s, r in record["sensors"].items():
    print(f"{s} head: validation centre MAE {r['val_mae_before']:.5f} -> {r['val_mae_after']:.5f} (epoch "
          f"{r['best_epoch']}; its base alone {r['val_mae_base']:.5f})")
  print(f"wrote {args.out}: {record['records']} records, {record['seconds']} s")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return run_tool(_main, argv, "refit_heads")


if __name__ == "__main__":
  sys.exit(main())
