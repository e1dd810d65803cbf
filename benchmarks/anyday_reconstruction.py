r"""Any-day reconstruction: how well the fusion model restores a hidden cloud-free S2 observation.

  python benchmarks/anyday_reconstruction.py --model demo/runs/fusion --model-s2only demo/runs/fusion_s2only \
      --cubes demo/cubes --shards demo/shards/fused --pixels 48

Held-out data: the cubes of the shards' test split (never seen in training). For sampled interior pixels,
every S2 date on which the pixel is cloud-free in all 10 bands is hidden in turn: the fusion model answers
for that day from the 5 S2 dates before and after it plus S1 (`earthrep.inference.anyday`, the centre
frame fully masked). The centre-pixel reconstruction is compared with the observation, per band (MAE of
reflectance), against (a) linear interpolation in time between the pixel's previous and next cloud-free
observations and (b) the same fusion architecture trained without S1. Only pixel-dates that all methods
answer are scored. Prints a markdown table (and writes it with --out).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from earthrep import schema  # noqa: E402
from earthrep.data import preprocess  # noqa: E402
from earthrep.inference import anyday  # noqa: E402
from earthrep.io import cube as cube_lib  # noqa: E402


def clear_series(cube: schema.SiteCube, row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
  """Days (datetime64[D]) and reflectances (n, 10) of the pixel's cloud-free observations."""
  s2 = preprocess.prepare_s2(cube.s2_reflectance[:, :, row:row + 1, col:col + 1],
                             cube.cloud_mask[:, row:row + 1, col:col + 1])[:, 0, 0, :]
  ok = np.isfinite(s2).all(axis=1)
  return cube.s2_time[ok].astype("datetime64[D]"), s2[ok]


def linear_interpolation(days: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Leave-one-out: each observation from its neighbours in time (NaN at the ends)."""
  t = days.astype(np.int64).astype(np.float64)
  out = np.full_like(values, np.nan)
  for i in range(1, len(t) - 1):
    w = (t[i] - t[i - 1]) / (t[i + 1] - t[i - 1])
    out[i] = (1 - w) * values[i - 1] + w * values[i + 1]
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", required=True, help="fusion workdir (S1 + S2)")
  p.add_argument("--model-s2only", required=True, help="fusion workdir trained without S1")
  p.add_argument("--cubes", required=True)
  p.add_argument("--shards", required=True, help="shard dir whose test split names the held-out cubes")
  p.add_argument("--pixels", type=int, default=48, help="sampled pixels per held-out cube")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="")
  a = p.parse_args()

  meta = json.loads((Path(a.shards) / schema.SHARD_METADATA).read_text())
  held_out = meta["splits"]["test"]["cube_ids"]
  models = {"fusion (S1+S2)": anyday.AnyDay(*anyday.load_fusion(a.model)),
            "fusion without S1": anyday.AnyDay(*anyday.load_fusion(a.model_s2only))}
  errors: dict[str, list[np.ndarray]] = {name: [] for name in ["linear interpolation", *models]}
  rng = np.random.default_rng(a.seed)
  n_dates = 0
  for cube_id in held_out:
    cube = cube_lib.read_cube(Path(a.cubes) / cube_id)
    h, w = cube.shape_hw
    m = schema.CENTRE_PX
    for _ in range(a.pixels):
      row, col = int(rng.integers(m, h - m)), int(rng.integers(m, w - m))
      days, truth = clear_series(cube, row, col)
      if len(days) < 3:
        continue
      answers = {"linear interpolation": linear_interpolation(days, truth)}
      for name, model in models.items():
        result = model.embed_days(cube, row, col, days)
        answers[name] = np.where(result.valid[:, None], result.s2_reflectance, np.nan)
      ok = np.all([np.isfinite(v).all(axis=1) for v in answers.values()], axis=0)
      n_dates += int(ok.sum())
      for name, v in answers.items():
        errors[name].append(np.abs(v[ok] - truth[ok]))
  rows = {name: np.concatenate(e).mean(axis=0) for name, e in errors.items()}
  header = "| method | " + " | ".join(schema.S2_BANDS) + " | mean |"
  lines = [f"Held-out cubes {held_out}; {n_dates} hidden cloud-free pixel-dates; centre-pixel MAE of "
           f"reflectance.", "", header, "|" + "---|" * (len(schema.S2_BANDS) + 2)]
  for name, mae in rows.items():
    lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in mae) + f" | {mae.mean():.4f} |")
  text = "\n".join(lines)
  print(text)
  if a.out:
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
  main()
