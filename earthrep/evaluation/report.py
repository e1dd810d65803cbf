"""Writes the evaluation: report.md, metrics.csv, predictions.csv.gz, selection.csv, probes_*.csv, figures.

metrics.csv: one row per split x feature set x design x regressor x site, plus a `pooled` row each (columns
split, feature_set, design, regressor, site, n, r2, rmse, bias, nrmse, nse, r2_anom and, on pooled rows, the
95 % bootstrap interval over sites of r2, rmse and bias). report.md opens with the verdict (does the fused
embedding beat every baseline, with and without meteorology, by how much, with the paired interval of the
difference), then the pooled tables, the ceilings, per-site skill, the selected hyper-parameters, the
probes, the costs and the notes. Every number in it is computed here from the run's predictions.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from earthrep.evaluation import figures
from earthrep.evaluation import metrics as metrics_lib
from earthrep.evaluation.designs import DESIGN_LABELS
from earthrep.io import atomic

BASELINES = ("ndvi", "nirv", "kndvi", "indices", "bands", "s1")
SINGLE_SENSOR = ("s2_emb", "s1_emb")
ORDER = ("met", "fused", "fused_daily", "s2_emb", "s1_emb", "ndvi", "nirv", "kndvi", "indices", "bands", "s1",
         "fapar_true", "flux_noise")


@dataclasses.dataclass
class Context:
  options: Any
  towers: list
  sites: list
  usable: dict
  combos: list
  notes: list[str]
  seconds: dict[str, float]
  truth: bool
  labels: bool


def _f(v: float, digits: int = 2, sign: bool = False) -> str:
  if v is None or not np.isfinite(v):
    return "-"
  return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _ci(row: pd.Series, name: str, digits: int = 2) -> str:
  if not np.isfinite(row.get(f"{name}_lo", np.nan)):
    return _f(row[name], digits)
  return f"{_f(row[name], digits)} [{_f(row[f'{name}_lo'], digits)}, {_f(row[f'{name}_hi'], digits)}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *["| " + " | ".join(str(c) for c in r) + " |" for r in rows], ""]


def _order(names) -> list[str]:
  return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def _stats(predictions: pd.DataFrame, key: tuple, site_ids: list[str]) -> np.ndarray | None:
  split, name, design, reg = key
  part = predictions[(predictions["split"] == split) & (predictions["feature_set"] == name)
                     & (predictions["design"] == design) & (predictions["regressor"] == reg)]
  return metrics_lib.site_stats(part, site_ids) if len(part) else None


def verdict(predictions: pd.DataFrame, split: str, site_ids: list[str], n_boot: int, seed: int) -> list[str]:
  """Plain sentences: fused against every baseline, per design and regressor, with paired intervals."""
  counts = metrics_lib.bootstrap_draws(len(site_ids), n_boot, seed)
  part = predictions[predictions["split"] == split]
  lines = []
  for design in ("x", "x_met", "lue"):
    for reg in sorted(part.loc[(part["feature_set"] == "fused") & (part["design"] == design), "regressor"].unique()):
      fused = _stats(predictions, (split, "fused", design, reg), site_ids)
      others = {b: _stats(predictions, (split, b, design, reg), site_ids) for b in BASELINES}
      others = {b: s for b, s in others.items() if s is not None}
      if fused is None or not others:
        continue
      diffs = {b: metrics_lib.paired_differences(fused, s, counts) for b, s in others.items()}
      r2 = {b: float(metrics_lib.from_stats(s.sum(0))["r2"]) for b, s in others.items()}
      best = max(r2, key=r2.get)
      fused_r2 = float(metrics_lib.from_stats(fused.sum(0))["r2"])
      beaten = [b for b, d in diffs.items() if d["r2"] > 0]
      sure = [b for b, d in diffs.items() if d["r2_lo"] > 0]
      d = diffs[best]
      with_met = "with meteorology" if design != "x" else "without meteorology"
      verdict_word = "beats every baseline" if len(beaten) == len(diffs) else \
          f"does NOT beat every baseline (it loses to {', '.join(b for b in diffs if b not in beaten)})"
      lines.append(f"- **{DESIGN_LABELS[design]}** ({with_met}), {reg}: fused R2 {fused_r2:.3f} vs best baseline "
                   f"`{best}` {r2[best]:.3f}: difference {d['r2']:+.3f} [{d['r2_lo']:+.3f}, {d['r2_hi']:+.3f}], "
                   f"RMSE {d['rmse']:+.2f} [{d['rmse_lo']:+.2f}, {d['rmse_hi']:+.2f}] gC m-2 d-1. The fused "
                   f"embedding {verdict_word}; its R2 is higher than {len(beaten)} of {len(diffs)} baselines, "
                   f"with a 95 % interval above 0 for {len(sure)}.")
      anyday = _stats(predictions, (split, "fused_daily", design, reg), site_ids)
      if anyday is not None:
        d = metrics_lib.paired_differences(anyday, others[best], counts)
        anyday_r2 = float(metrics_lib.from_stats(anyday.sum(0))["r2"])
        lines.append(f"  The any-day embedding (`fused_daily`): R2 {anyday_r2:.3f}, {d['r2']:+.3f} "
                     f"[{d['r2_lo']:+.3f}, {d['r2_hi']:+.3f}] against `{best}`.")
      singles = {b: _stats(predictions, (split, b, design, reg), site_ids) for b in SINGLE_SENSOR}
      singles = {b: metrics_lib.paired_differences(fused, s, counts) for b, s in singles.items() if s is not None}
      if singles:
        lines.append("  Against the single-sensor embeddings: " + "; ".join(
            f"`{b}` {d['r2']:+.3f} [{d['r2_lo']:+.3f}, {d['r2_hi']:+.3f}]" for b, d in singles.items()) + ".")
  return lines or ["- The fused embedding was not evaluated (no `fused` feature set, or no baseline)."]


def _pooled_table(scores: pd.DataFrame, split: str) -> list[str]:
  pooled = scores[(scores["split"] == split) & (scores["site"] == "pooled")]
  regs = [r for r in ("ridge", "hgb", "transformer", "truth") if r in set(pooled["regressor"])]
  header = ["feature set", "design", "n", *[f"{r} {m}" for r in regs for m in ("R2 [95% CI]", "RMSE", "bias")]]
  rows = []
  for name in _order(pooled["feature_set"].unique()):
    for design in sorted(pooled.loc[pooled["feature_set"] == name, "design"].unique()):
      part = pooled[(pooled["feature_set"] == name) & (pooled["design"] == design)].set_index("regressor")
      cells = []
      for r in regs:
        if r in part.index:
          row = part.loc[r]
          cells += [_ci(row, "r2"), _f(row["rmse"]), _f(row["bias"], 2, True)]
        else:
          cells += ["", "", ""]
      rows.append([name, design, int(part["n"].max()), *cells])
  return _table(header, rows)


def _per_site(scores: pd.DataFrame, split: str, design: str, reg: str, names: Sequence[str]) -> list[str]:
  part = scores[(scores["split"] == split) & (scores["site"] != "pooled")
                & (((scores["design"] == design) & (scores["regressor"] == reg)) | (scores["design"] == "-")
                   | ((scores["feature_set"] == "met") & (scores["regressor"] == reg)))]
  names = [n for n in names if n in set(part["feature_set"])]
  rows = []
  for site in sorted(part["site"].unique()):
    here = part[part["site"] == site].set_index("feature_set")
    rows.append([site, *[f"{_f(here.loc[n, 'r2'])} / {_f(here.loc[n, 'rmse'])} / {_f(here.loc[n, 'bias'], 2, True)}"
                         if n in here.index else "" for n in names]])
  return _table(["site", *[f"{n} R2 / RMSE / bias" for n in names]], rows)


def _selection(folds: Sequence[tuple]) -> tuple[pd.DataFrame, list[str]]:
  rows = [{"split": split, "feature_set": combo.feature_set, "design": combo.design, "regressor": r.regressor,
           "fold": r.fold, **r.hyper, "selection_sites": len(r.selection_sites), "fit_sites": len(r.fit_sites)}
          for split, combo, r in folds]
  table = pd.DataFrame(rows)
  lines = []
  for (split, reg), part in table.groupby(["split", "regressor"]) if len(table) else []:
    if reg == "ridge":
      lines.append(f"- {split}, ridge: alpha chosen per fold, median {part['alpha'].median():.3g} "
                   f"(range {part['alpha'].min():.3g}-{part['alpha'].max():.3g}).")
    elif reg == "hgb":
      leaves = {int(k): int(v) for k, v in part["leaves"].value_counts().items()}
      lines.append(f"- {split}, boosted trees: leaves chosen {leaves} times; iterations median "
                   f"{part['iterations'].median():.0f} (range {part['iterations'].min():.0f}-"
                   f"{part['iterations'].max():.0f}).")
    elif reg == "transformer":
      lines.append(f"- {split}, transformer: early-stopped at step median {part['best_step'].median():.0f} "
                   f"(range {part['best_step'].min():.0f}-{part['best_step'].max():.0f}).")
  return table, lines


def _probe_lines(probes: dict | None, context: Context) -> list[str]:
  if not probes:
    why = ("no truth and no --labels" if not (context.truth or context.labels) else "--probes off or no probe site")
    return ["## Per-pixel probes", "", f"Not run ({why}).", ""]
  lines = ["## Per-pixel probes (leave sites out, the same pixel-dates for every feature set)", "",
           f"{sum(probes['pixel_dates'].values())} pixel-dates at {len(probes['pixel_dates'])} sites "
           f"(at each, the {context.options.probe_px} x {context.options.probe_px} px crop holding the most kinds, "
           f"on {context.options.probe_dates} clear dates). Pixels per kind: "
           + ", ".join(f"{k} {v}" for k, v in probes["kinds_present"].items()) + ".", ""]
  land = probes["land_cover"]
  if len(land):
    land = land.sort_values("balanced_accuracy", ascending=False)
    lines += ["### Land-cover kind (linear probe on each pixel's series summary)", ""]
    lines += _table(["feature set", "balanced accuracy", "accuracy", "pixels", "kinds"],
                    [[r.feature_set, _f(r.balanced_accuracy, 3), _f(r.accuracy, 3), r.pixels, r.kinds]
                     for r in land.itertuples()])
  reg = probes["regression"]
  if len(reg):
    lines += ["### Regressions against the simulator's truth (ridge per pixel-date; R2 / RMSE)", ""]
    targets = list(dict.fromkeys(reg["target"]))
    names = _order(reg["feature_set"].unique())
    rows = [[n, *[next((f"{_f(r.r2, 3)} / {_f(r.rmse, 3)}" for r in reg.itertuples()
                        if r.feature_set == n and r.target == t), "") for t in targets]] for n in names]
    lines += _table(["feature set", *targets], rows)
  con = probes["contrast"]
  if len(con):
    lines += ["### Boundary contrast (neighbour distance across / within parcels; higher = sharper 10 m detail)", ""]
    lines += _table(["feature set", "contrast [95% CI over sites]", "within", "across", "sites"],
                    [[r.feature_set, f"{_f(r.contrast, 3)} [{_f(r.contrast_lo, 3)}, {_f(r.contrast_hi, 3)}]",
                      _f(r.within, 3), _f(r.across, 3), r.sites] for r in con.itertuples()])
    table = con.set_index("feature_set")
    if {"fused", "bands"} <= set(table.index):
      word = ">=" if table.loc["fused", "contrast"] >= table.loc["bands", "contrast"] else "<"
      fused, bands = table.loc["fused", "contrast"], table.loc["bands", "contrast"]
      lines += [f"Fused {word} bands: {fused:.3f} vs {bands:.3f}.", ""]
  return lines


def write(out: Path, scores: pd.DataFrame, predictions: pd.DataFrame, folds: Sequence[tuple], probes: dict | None,
          context: Context, seed: int) -> dict[str, Path]:
  out.mkdir(parents=True, exist_ok=True)
  options, site_ids = context.options, [s.site_id for s in context.sites]
  paths = {"metrics": out / "metrics.csv", "predictions": out / "predictions.csv.gz", "report": out / "report.md"}
  with atomic.atomic_path(paths["metrics"]) as tmp:
    scores.to_csv(tmp, index=False, float_format="%.5g")
  with atomic.atomic_path(paths["predictions"]) as tmp:
    predictions.to_csv(tmp, index=False, float_format="%.4g", compression="gzip")
  selection, selection_lines = _selection(folds)
  with atomic.atomic_path(out / "selection.csv") as tmp:
    selection.to_csv(tmp, index=False)
  if probes:
    for name in ("land_cover", "regression", "contrast"):
      with atomic.atomic_path(out / f"probes_{name}.csv") as tmp:
        probes[name].to_csv(tmp, index=False, float_format="%.5g")
  covers = pd.Series([t.land_cover for t in context.towers]).value_counts().to_dict()
  usable_days = sum(int(v.sum()) for v in context.usable.values())
  model = f"Model: `{options.model}`." if options.model else "No embedding model."
  text = ["# Evaluation report", "",
          f"{len(context.towers)} towers ({', '.join(f'{k} {v}' for k, v in covers.items())}); {usable_days} "
          f"site-days scored by every model (GPP observed, QC passed, complete {options.window_days}-day windows). "
          f"Footprint: pixels within {options.radius_m:g} m of the tower. Splits: " + ", ".join(options.splits)
          + f"; leave-sites-out in {options.outer_folds or 'one-site'} outer folds, hyper-parameters chosen on "
          f"inner folds of the training sites only ({options.inner_folds} groups). {model}", ""]
  for split in options.splits:
    text += [f"## Verdict ({split})", "", *verdict(predictions, split, site_ids, options.n_boot, seed), ""]
  figure_paths = {}
  for split in options.splits:
    text += [f"## Pooled skill ({split}; gC m-2 d-1; R2 = squared correlation, 95 % CI over sites)", ""]
    text += _pooled_table(scores, split)
    figure_paths[f"skill_{split}"] = figures.skill(scores, split, [d for d in ("met", "x", "x_met", "lue")
                                                                   if d in set(scores["design"])], ORDER,
                                                   out / f"skill_{split}.png")
  main = options.splits[0]
  design = next((d for d in ("x_met", "lue", "x") if d in options.designs), options.designs[0])
  first = "ridge" if "ridge" in options.regressors else options.regressors[0]
  panels = [(n, design if n != "met" else "met", first) for n in ("met", "fused", "fused_daily", "bands", "ndvi",
                                                                   "fapar_true")]
  figure_paths["scatter"] = figures.scatter(predictions, panels, main, out / "scatter.png")
  figure_paths["series"] = figures.series(predictions, panels[1:4:2] + [("met", "met", first)], main,
                                          out / "series.png")
  curves = [(f"{c.feature_set}/{c.design}", r.fold, r.curves) for s, c, r in folds if r.curves and s == main]
  figure_paths["loss_curves"] = figures.loss_curves(curves, out / "loss_curves.png")
  if context.truth:
    text += ["## Ceilings (simulator truth)", "",
             "`fapar_true`: the footprint's true daily fAPAR as the feature set (perfect fAPAR; with the "
             "meteorology designs: perfect fAPAR + meteorology). `flux_noise`: the noise-free GPP itself scored "
             "against the observed: no model can do better than the flux data's own noise allows.", ""]
    ceil = scores[(scores["site"] == "pooled") & scores["feature_set"].isin(["fapar_true", "flux_noise"])]
    text += _table(["split", "ceiling", "design", "regressor", "R2 [95% CI]", "RMSE", "bias"],
                   [[r.split, r.feature_set, r.design, r.regressor, _ci(pd.Series(r._asdict()), "r2"), _f(r.rmse),
                     _f(r.bias, 2, True)] for r in ceil.itertuples()])
  text += [f"## Per site ({main}, design {design}, {first})", ""]
  text += _per_site(scores, main, design, first, ["met", "fused", "fused_daily", "bands", "ndvi", "fapar_true",
                                                  "flux_noise"])
  text += ["## Hyper-parameters chosen by nested selection", "", *selection_lines, "",
           "Per fold in selection.csv (each fold's selection and fit used only its training sites).", ""]
  text += _probe_lines(probes, context)
  if probes and probes["confusion"]:
    names = [n for n in ("fused", "bands", "ndvi", "s2_emb") if n in probes["confusion"]]
    figure_paths["confusion"] = figures.confusion(probes["confusion"], probes["kind_names"], names,
                                                  out / "confusion.png")
  text += ["## Costs (this run, seconds)", "",
           *_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in context.seconds.items()])]
  transformer = context.seconds.get("models: transformer")
  if transformer is not None:
    text += [f"The transformer ran on {', '.join(options.transformer_sets or ['every set'])} x "
             f"{', '.join(options.transformer_designs or ['every design'])} only (CPU cost: {transformer:.0f} s); "
             "the other combos use ridge and boosted trees.", ""]
  text += ["## Notes", "", *[f"- {n}" for n in context.notes],
           f"- Daily series: `{options.interpolation}` interpolation between clear dates; `fused_daily` is the "
           "any-day model's embedding of every day (not interpolated).",
           f"- Training days: every {options.train_stride}th usable day; test: every usable day. GPP QC: "
           f"NEE_VUT_REF_QC >= {options.min_good_fraction}.", "",
           "Figures: " + ", ".join(p.name for p in figure_paths.values() if p is not None) + ". Tables: metrics.csv "
           "(every site and pooled), predictions.csv.gz, selection.csv" + (", probes_*.csv" if probes else "") + "."]
  atomic.write_text(paths["report"], "\n".join(text) + "\n")
  paths.update({k: v for k, v in figure_paths.items() if v is not None})
  return paths
