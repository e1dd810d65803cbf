r"""What a learned any-day correction needs: samples, the season's phase, S1, or the model class.

  python -m benchmarks.anyday_regressor_ablation --world demo --shards demo/shards/fused --seed 0 \
      [--out benchmarks/results/anyday_regressor_ablation.md]

The gap-aware pixel regressor of `earthrep.evaluation.gap_regressor` beats linear interpolation on the
held-out cubes (`benchmarks/results/anyday_gaps.md`) where the fusion's centre heads, which also learn a
correction of the centre pixel, do not. This script refits it under the fusion's constraints, one at a time:
* fewer samples: the fusion stage sees about as many informative samples (hidden centre frames) in its
  training as `--small` (default 8,000) regressor samples;
* no season phase: the fusion sees day gaps only, never the day of year;
* no S1;
* a small MLP (one hidden layer of 128, as the fusion's heads; scikit-learn, NaNs zeroed with validity
  flags beside them) in place of the boosted trees.
Samples are drawn as the regressor's (`gap_regressor.training_set`: a clear observation, every clear
observation within G/2 days removed, G ~ U[0, 100] days), from the training cubes for fitting and from the
held-out cubes (validation and test) for scoring; scored against the held-out observation (so the S2 noise
is in every figure), as the MAE over the 10 bands, for G < 30 and G >= 30 days.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from earthrep import schema
from earthrep.evaluation import gap_regressor as reg_lib
from earthrep.io import cube as cube_lib

DOY_COLUMNS = (120, 121)   # sin, cos of the day of year in `PixelFeatures.sample` (after 110 obs + 10 lin)
SPAN_COLUMN = 122          # the bracketing observations' distance (days / 100)


def _cubes(world: Path, meta: dict, splits: tuple[str, ...]):
  return [cube_lib.read_cube(world / "cubes" / c) for s in splits for c in meta["splits"][s]["cube_ids"]]


def _mlp_inputs(x: np.ndarray) -> np.ndarray:
  finite = np.isfinite(x)
  return np.concatenate([np.where(finite, x, 0.0), finite[:, :110:11].astype(np.float32)], axis=1)


class _Mlp:
  def __init__(self, seed: int):
    self.seed = seed

  def fit(self, x, y):
    from sklearn.neural_network import MLPRegressor
    from sklearn.preprocessing import StandardScaler
    self.scale = StandardScaler().fit(_mlp_inputs(x))
    self.model = MLPRegressor(hidden_layer_sizes=(128,), learning_rate_init=1e-3, max_iter=200, early_stopping=True,
                              random_state=self.seed).fit(self.scale.transform(_mlp_inputs(x)), y)
    return self

  def predict_all(self, x):
    return self.model.predict(self.scale.transform(_mlp_inputs(x)))


def _hgb(x, y, seed):
  reg = reg_lib.GapRegressor(seed=seed).fit(x, y)
  return lambda xs: np.stack([m.predict(xs) for m in reg.models], axis=1)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog="python -m benchmarks.anyday_regressor_ablation", description=__doc__.split("\n")[0])
  p.add_argument("--world", default="demo")
  p.add_argument("--shards", default="demo/shards/fused")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--small", type=int, default=8000, help="samples of the fewer-samples rows")
  p.add_argument("--out", default=None)
  a = p.parse_args(argv)
  world, shards = Path(a.world), Path(a.shards)
  meta = json.loads((shards / schema.SHARD_METADATA).read_text())
  args = (reg_lib.TRAIN_PIXELS, reg_lib.TRAIN_TARGETS, reg_lib.MAX_GAP_DAYS)
  x_tr, y_tr = reg_lib.training_set(_cubes(world, meta, ("train",)), *args, seed=a.seed)
  x_te, y_te = reg_lib.training_set(_cubes(world, meta, ("validation", "test")), 200, 40,
                                    reg_lib.MAX_GAP_DAYS, seed=a.seed + 1)
  # the imposed gap of a sample: the bracketing observations' distance (>= G)
  long_te = x_te[:, SPAN_COLUMN] * 100 >= 30
  small = np.random.default_rng(a.seed).choice(len(x_tr), min(a.small, len(x_tr)), replace=False)
  no_doy = np.ones(x_tr.shape[1], bool)
  no_doy[list(DOY_COLUMNS)] = False
  s2_only = np.arange(x_tr.shape[1]) < x_tr.shape[1] - 12    # the last 12 columns are S1
  variants = [
      ("boosted trees, all features", slice(None), np.ones_like(no_doy), "hgb"),
      ("boosted trees, no day of year", slice(None), no_doy, "hgb"),
      ("boosted trees, no S1", slice(None), s2_only, "hgb"),
      (f"boosted trees, {len(small)} samples", small, np.ones_like(no_doy), "hgb"),
      (f"boosted trees, {len(small)} samples, no day of year", small, no_doy, "hgb"),
      ("MLP (128), all features", slice(None), np.ones_like(no_doy), "mlp"),
      (f"MLP (128), {len(small)} samples", small, np.ones_like(no_doy), "mlp"),
      (f"MLP (128), {len(small)} samples, no day of year", small, no_doy, "mlp"),
  ]
  lin_err = np.abs(y_te).mean(axis=1)   # the correction's target is observation - interpolation
  rows = [("linear interpolation", lin_err[~long_te].mean(), lin_err[long_te].mean(), 0.0)]
  for name, rows_sel, cols, kind in variants:
    start = time.time()
    xf, yf = x_tr[rows_sel][:, cols], y_tr[rows_sel]
    predict = _hgb(xf, yf, a.seed) if kind == "hgb" else _Mlp(a.seed).fit(xf, yf).predict_all
    err = np.abs(y_te - predict(x_te[:, cols])).mean(axis=1)
    rows.append((name, err[~long_te].mean(), err[long_te].mean(), time.time() - start))
    print(f"{name}: {rows[-1][1]:.4f} {rows[-1][2]:.4f}", flush=True)
  lines = ["# What a learned any-day correction needs (gap-aware pixel regressor, refitted)", "",
           f"Command: `python -m benchmarks.anyday_regressor_ablation --world {a.world} --shards {a.shards} "
           f"--seed {a.seed} --small {a.small}`", "",
           f"Fitted on {len(x_tr)} samples of the training cubes; scored on {len(x_te)} samples of the held-out "
           f"cubes ({int((~long_te).sum())} with the bracketing observations < 30 days apart, "
           f"{int(long_te.sum())} >= 30), against the held-out observation (MAE over 10 bands; the S2 noise is "
           "in every figure).", "",
           "| method | MAE, < 30 days | / linear | MAE, >= 30 days | / linear | fit (s) |", "|---|---|---|---|---|---|"]
  for name, short, long, secs in rows:
    lines.append(f"| {name} | {short:.4f} | {short / rows[0][1]:.2f} | {long:.4f} | {long / rows[0][2]:.2f} | "
                 f"{secs:.0f} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if a.out:
    Path(a.out).write_text(text)


if __name__ == "__main__":
  main()
