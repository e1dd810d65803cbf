r"""The noise floor of the demo's observations: the MAE of what the models see against the simulator's
noise-free values, on the held-out cubes of a shard split, in the models' units.

  python -m benchmarks.noise_floor --world demo --shards demo/shards/s2 [--out demo/training/floors.json]

S2: every clear pixel-date of the held-out cubes (validation and test): the observed reflectance clipped to
[0, 1] (`preprocess.prepare_s2`) against the noise-free surface reflectance of that day
(`SiteSimulation.truth_s2`). S1: every pixel-acquisition: the observation through the model's S1
preprocessing (3-acquisition rolling mean, dB, [-30, 5] dB -> [0, 1]) against the speckle-free gamma0 of the
same acquisitions through the same preprocessing. A stage-1 centre MAE (measured against the observation)
cannot go below these; the demo's S2 noise is 0.003 + 1 % of the value (data_prep/README.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from data_prep import demo_world
from earthrep import schema
from earthrep.data import preprocess
from earthrep.io import atomic
from earthrep.io import cube as cube_lib


def floors(world: Path, shards: Path) -> dict:
  meta = json.loads((shards / schema.SHARD_METADATA).read_text())
  held_out = [c for split in ("validation", "test") for c in meta["splits"][split]["cube_ids"]]
  args = json.loads((world / "world.json").read_text())
  specs = {s.site_id: s for s in demo_world.site_specs(args["seed"], args["sites"])}
  s2_err, s1_err = [], []
  for site_id in held_out:
    sim = demo_world.simulate_site(specs[site_id], args["seed"], args["size"], args["start"], args["days"])
    cube = cube_lib.read_cube(world / "cubes" / site_id)
    obs = preprocess.prepare_s2(cube.s2_reflectance, cube.cloud_mask)                # (t, h, w, 10)
    truth = np.moveaxis(sim.truth_s2(sim.s2_day_index), 1, -1)
    clear = np.isfinite(obs).all(axis=-1)
    s2_err.append(np.abs(obs - truth)[clear])
    s1_obs = preprocess.prepare_s1(cube.s1_gamma0)
    s1_true = preprocess.prepare_s1(sim.truth_s1(sim.s1_day_index, sim.s1_direction))
    ok = np.isfinite(s1_obs) & np.isfinite(s1_true)
    s1_err.append(np.abs(s1_obs - s1_true)[ok])
  s2, s1 = np.concatenate(s2_err), np.concatenate(s1_err)
  return {"s2": float(s2.mean()), "s1": float(s1.mean()), "s2_per_band": s2.mean(axis=0).tolist(),
          "held_out": held_out, "s2_pixel_dates": int(len(s2)), "s1_values": int(s1.size)}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--world", required=True)
  p.add_argument("--shards", required=True, help="a shard dir whose validation and test splits name the held-out cubes")
  p.add_argument("--out", default=None)
  a = p.parse_args(argv)
  result = floors(Path(a.world), Path(a.shards))
  print(json.dumps({k: v for k, v in result.items() if k != "s2_per_band"}))
  if a.out:
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(a.out, json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
