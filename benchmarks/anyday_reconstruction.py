r"""Any-day reconstruction on the demo world's held-out cubes, scored against the simulator's noise-free truth.

  python -m benchmarks.anyday_reconstruction --world demo --shards demo/shards/fused --model demo/runs/fusion \
      [--model-s2only demo/runs/fusion_s2only] [--gaps 10,30,60,90] [--targets 10] [--pixels 40] \
      [--out benchmarks/results/anyday_demo.md]

Protocol (issue 13). On every held-out cube of the shards' split (validation and test) and for pixels of
each land cover (crop, grassland, forest = deciduous + evergreen; `--pixels` per cover and cube, drawn
from the 7-px interior), for target days spread over the cube period (`--targets`) and for every gap G in
`--gaps`: every S2 observation within G/2 days of the target is masked on a copy of the cube (its cloud
mask set to thick cloud), so that every method loses the same data; then each method reconstructs the
S2 reflectance of the target day, scored against the noise-free, cloud-free surface reflectance of the
simulator at that day (`SiteSimulation.truth_s2`), per band and land cover. Methods:
* linear interpolation of the pixel's clear observations left on either side of the gap;
* the fusion model (S1 + S2) asked for the target day (any-day window, centre hidden);
* the same without S1 (`--model-s2only`, a fusion model trained on S2 alone);
* interpolation of the model's own reconstructions at the two observed dates that bracket the gap
  (centre visible there), i.e. the model as a denoiser with linear interpolation in between.
* with `--regressor`, the gap-aware pixel regressors of `earthrep.evaluation.gap_regressor` (S1 + S2,
  and S2 alone), fitted on the shards' training cubes against observations: what the window's data allow a
  learned method that sees the pixel's own series.
A pixel-target is scored only where every method gives a value. Also reported:
* the model's penalty for hiding the day: on target days that are clear acquisitions of the pixel (no gap
  imposed), the model's error with that day hidden minus its error with the day visible;
* targets whose gap holds a mowing or harvest event (the pixel's true green cover falls by >= 0.25 within
  5 days inside the gap), reported separately: S1 can see them, interpolating S2 cannot.
Costs a few minutes per cube with the runlocal models (full forwards of every window).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from data_prep import demo_world
from earthrep import schema
from earthrep.data import windows as W
from earthrep.evaluation import gap_regressor as regressor_lib
from earthrep.inference import anyday
from earthrep.io import atomic
from earthrep.io import cube as cube_lib

REGRESSOR, REGRESSOR_S2 = "pixel regressor (S1+S2)", "pixel regressor without S1"
COVERS = {"crop": ("crop",), "grassland": ("grass",), "forest": ("deciduous", "evergreen")}
EVENT_DROP, EVENT_DAYS = 0.25, 5


def _simulation(world: Path, site_id: str):
  args = json.loads((world / "world.json").read_text())
  spec = next(s for s in demo_world.site_specs(args["seed"], args["sites"]) if s.site_id == site_id)
  return demo_world.simulate_site(spec, args["seed"], args["size"], args["start"], args["days"])


def _pixels(sim, rng, per_cover: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  kind = sim.land_cover_kind
  names = np.array(sim.KIND_NAMES)[kind]
  b = schema.CENTRE_PX
  interior = np.zeros(kind.shape, bool)
  interior[b:-b, b:-b] = True
  out = {}
  for cover, kinds in COVERS.items():
    rows, cols = np.nonzero(interior & np.isin(names, kinds))
    if len(rows):
      pick = rng.choice(len(rows), min(per_cover, len(rows)), replace=False)
      out[cover] = (rows[pick], cols[pick])
  return out


def _gapped(cube, target: np.datetime64, gap: int):
  """A copy of the cube whose S2 acquisitions within gap/2 days of the target are thick cloud."""
  days = cube.s2_time.astype("datetime64[D]")
  hide = np.abs((days - target).astype(np.int64)) <= gap // 2
  cloud = cube.cloud_mask.copy()
  cloud[hide] = schema.CLOUD_THICK
  return dataclasses.replace(cube, cloud_mask=cloud)


def _bracketing(merged: W.Merged, rows, cols, target_day: int):
  """Per pixel, the merged-date indices of its last clear observation before and first after the target."""
  clear = np.isfinite(merged.s2_thwc[:, rows, cols]).all(axis=-1)          # (t, p)
  days = merged.s2_days[:, None]
  before = np.where(clear & (days < target_day), np.arange(len(days))[:, None], -1).max(axis=0)
  after = np.where(clear & (days > target_day), np.arange(len(days))[:, None], len(days)).min(axis=0)
  return before, np.where(after < len(days), after, -1)


def _interp(day_a, val_a, day_b, val_b, day):
  w = ((day - day_a) / np.maximum(day_b - day_a, 1))[:, None]
  return val_a + w * (val_b - val_a)


def _events(sim, rows, cols, target: np.datetime64, gap: int) -> np.ndarray:
  days = target + np.arange(-(gap // 2), gap // 2 + 1).astype("timedelta64[D]")
  green = sim.green_cover(sim.day_index(days))[:, rows, cols]              # (d, p)
  drop = green[:-EVENT_DAYS] - green[EVENT_DAYS:] if len(days) > EVENT_DAYS else np.zeros((1, len(rows)))
  return (drop >= EVENT_DROP).any(axis=0)


def train_regressors(world: Path, shards: Path, seed: int) -> dict:
  """The gap-aware pixel regressors (`earthrep.evaluation.gap_regressor`), with and without S1, fitted on
  the shards' training cubes (observations only)."""
  meta = json.loads((shards / schema.SHARD_METADATA).read_text())
  cubes = [cube_lib.read_cube(world / "cubes" / c) for c in meta["splits"]["train"]["cube_ids"]]
  out = {}
  for with_s1, name in ((True, REGRESSOR), (False, REGRESSOR_S2)):
    x, y = regressor_lib.training_set(cubes, regressor_lib.TRAIN_PIXELS, regressor_lib.TRAIN_TARGETS,
                                      regressor_lib.MAX_GAP_DAYS, seed, with_s1=with_s1)
    out[name] = regressor_lib.GapRegressor(with_s1, seed).fit(x, y)
    print(f"{name}: fitted on {len(x)} samples", flush=True)
  return out


def run(world: Path, shards: Path, models: dict, gaps: list[int], n_targets: int, per_cover: int,
        seed: int, regressors: dict | None = None) -> list[dict]:
  meta = json.loads((shards / schema.SHARD_METADATA).read_text())
  held_out = [c for split in ("validation", "test") for c in meta["splits"][split]["cube_ids"]]
  rng = np.random.default_rng(seed)
  rows_out = []
  for site_id in held_out:
    sim = _simulation(world, site_id)
    cube = cube_lib.read_cube(world / "cubes" / site_id)
    pixels = _pixels(sim, rng, per_cover)
    span = cube.s2_time.astype("datetime64[D]")
    first, last = span[0] + np.timedelta64(max(gaps) + 60, "D"), span[-1] - np.timedelta64(max(gaps) + 60, "D")
    targets = first + (np.linspace(0, 1, n_targets) * (last - first).astype(np.int64)).astype("timedelta64[D]")
    for target in targets:
      truth = sim.truth_s2(sim.day_index([target]))[0]                      # (10, h, w)
      for gap in [0] + gaps:
        merged = {name: W.merge(_gapped(cube, target, gap) if gap else cube, with_s1="s1" in m.model.sensors)
                  for name, m in models.items()}
        for cover, (r, c) in pixels.items():
          t_day = int(target.astype(np.int64))
          any_win = {name: W.anyday_windows(merged[name], [target]) for name in models}
          pred = {name: m.pixels(merged[name], any_win[name], np.zeros(len(r)), r, c).s2_reflectance
                  for name, m in models.items()}
          base = merged["fusion (S1+S2)"]
          before, after = _bracketing(base, r, c, t_day)
          ok = (before >= 0) & (after >= 0)
          series = base.s2_thwc[:, r, c]                                       # (t, p, 10)
          idx = np.arange(len(r))
          lin = np.full((len(r), 10), np.nan, np.float32)
          lin[ok] = _interp(base.s2_days[before[ok]], series[before[ok], idx[ok]],
                            base.s2_days[after[ok]], series[after[ok], idx[ok]], t_day)
          fusion = models["fusion (S1+S2)"]
          dwin = W.date_windows(base, np.concatenate([before, after]))
          at_obs = fusion.pixels(base, dwin, np.arange(2 * len(r)), np.tile(r, 2), np.tile(c, 2)).s2_reflectance
          own = _interp(base.s2_days[before], at_obs[:len(r)], base.s2_days[after], at_obs[len(r):], t_day)
          answers = {"linear interpolation": lin, **pred, "model at observed dates, interpolated": own}
          answers |= {name: reg.predict(base, r, c, t_day) for name, reg in (regressors or {}).items()}
          if gap == 0:
            # penalty for hiding the day: only where the target is a clear acquisition of the pixel
            obs = np.flatnonzero(base.s2_days == t_day)
            if len(obs):
              visible_win = W.date_windows(base, np.full(len(r), obs[0]))
              visible = fusion.pixels(base, visible_win, np.arange(len(r)), r, c).s2_reflectance
              clear = np.isfinite(series[obs[0]]).all(axis=-1)
              keep = clear & np.isfinite(visible).all(1) & np.isfinite(pred["fusion (S1+S2)"]).all(1)
              for name, val in (("hidden", pred["fusion (S1+S2)"]), ("visible", visible)):
                rows_out += [dict(site=site_id, cover=cover, gap=0, method=f"fusion, day {name}", event=False,
                                  abs_err=np.abs(val[i] - truth[:, r[i], c[i]]).tolist()) for i in np.flatnonzero(keep)]
            continue
          keep = np.all([np.isfinite(v).all(axis=1) for v in answers.values()], axis=0)
          events = _events(sim, r, c, target, gap)
          for name, val in answers.items():
            for i in np.flatnonzero(keep):
              rows_out.append(dict(site=site_id, cover=cover, gap=gap, method=name, event=bool(events[i]),
                                   abs_err=np.abs(val[i] - truth[:, r[i], c[i]]).tolist()))
    print(f"{site_id}: {len(rows_out)} scored pixel-targets so far", flush=True)
  return rows_out


def report(rows: list[dict], header: str) -> str:
  err = np.array([r["abs_err"] for r in rows])
  gap = np.array([r["gap"] for r in rows])
  method = np.array([r["method"] for r in rows])
  cover = np.array([r["cover"] for r in rows])
  event = np.array([r["event"] for r in rows])
  methods = [m for m in dict.fromkeys(method) if not m.startswith("fusion, day")]
  out = [header, "", "## MAE of the reconstructed reflectance at the target day (mean over 10 bands), by gap", "",
         "| land cover | gap (days) | n | " + " | ".join(methods) + " | fusion / linear |"
         + (" regressor / linear |" if REGRESSOR in methods else ""),
         "|---|---|---|" + "---|" * (len(methods) + 1 + (REGRESSOR in methods))]
  for cv in [*COVERS, "all"]:
    for g in sorted(set(gap[gap > 0])):
      sel = (gap == g) & ((cover == cv) | (cv == "all"))
      maes = [err[sel & (method == m)].mean() if (sel & (method == m)).any() else np.nan for m in methods]
      n = int((sel & (method == methods[0])).sum())
      ratios = [maes[methods.index(m)] / maes[0] if n else np.nan
                for m in ("fusion (S1+S2)", REGRESSOR) if m in methods]
      out.append(f"| {cv} | {g} | {n} | " + " | ".join(f"{v:.4f}" for v in maes) + " | "
                 + " | ".join(f"{r:.2f}" for r in ratios) + " |")
  out += ["", "## Per band (all land covers, gaps of 30-90 days)", "",
          "| method | " + " | ".join(schema.S2_BANDS) + " | mean |", "|---|" + "---|" * (len(schema.S2_BANDS) + 1)]
  long_gap = gap >= 30
  for m in methods:
    sel = long_gap & (method == m)
    if sel.any():
      b = err[sel].mean(axis=0)
      out.append(f"| {m} | " + " | ".join(f"{v:.4f}" for v in b) + f" | {b.mean():.4f} |")
  out += ["", "## Gaps holding a mowing or harvest event (green cover -0.25 within 5 days), 30-90 days", "",
          "| event in gap | n | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
  for ev in (True, False):
    sel = long_gap & (event == ev)
    n = int((sel & (method == methods[0])).sum())
    out.append(f"| {'yes' if ev else 'no'} | {n} | " + " | ".join(
        f"{err[sel & (method == m)].mean():.4f}" if (sel & (method == m)).any() else "-" for m in methods) + " |")
  hid, vis = err[method == "fusion, day hidden"], err[method == "fusion, day visible"]
  if len(hid):
    out += ["", f"Penalty for hiding the day (fusion, target days that are clear acquisitions, no gap; n = "
            f"{len(hid)}): MAE hidden {hid.mean():.4f} - visible {vis.mean():.4f} = {hid.mean() - vis.mean():+.4f}."]
  return "\n".join(out) + "\n"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--world", required=True, help="a demo world folder (world.json, cubes/)")
  p.add_argument("--shards", required=True, help="shard dir whose validation and test splits name the held-out cubes")
  p.add_argument("--model", required=True, help="fusion workdir (S1 + S2)")
  p.add_argument("--model-s2only", default=None, help="fusion workdir trained without S1")
  p.add_argument("--gaps", default="10,30,60,90")
  p.add_argument("--targets", type=int, default=10)
  p.add_argument("--pixels", type=int, default=40, help="pixels per land cover and cube")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--regressor", action="store_true",
                 help="also score the gap-aware pixel regressors (earthrep/evaluation/gap_regressor.py), "
                      "fitted on the shards' training cubes: what the window's data allow a learned method")
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  models = {"fusion (S1+S2)": anyday.AnyDay(*anyday.load_fusion(a.model))}
  if a.model_s2only:
    models["fusion without S1"] = anyday.AnyDay(*anyday.load_fusion(a.model_s2only))
  gaps = [int(g) for g in a.gaps.split(",")]
  regressors = train_regressors(Path(a.world), Path(a.shards), a.seed) if a.regressor else None
  rows = run(Path(a.world), Path(a.shards), models, gaps, a.targets, a.pixels, a.seed, regressors)
  header = (f"# Any-day reconstruction, demo world {a.world} (held-out cubes), against the noise-free truth\n\n"
            f"Command: `python -m benchmarks.anyday_reconstruction --world {a.world} --shards {a.shards} --model "
            f"{a.model}" + (f" --model-s2only {a.model_s2only}" if a.model_s2only else "") +
            f" --gaps {a.gaps} --targets {a.targets} --pixels {a.pixels} --seed {a.seed}"
            + (" --regressor" if a.regressor else "") + "`")
  text = report(rows, header)
  print(text)
  if a.out:
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(a.out, text)


if __name__ == "__main__":
  main()
