"""Writes the GPP evaluation: metrics.csv, predictions.csv, report.md and PNG figures (matplotlib Agg).

metrics.csv: one row per feature set x regressor x site plus a `pooled` row per feature set x regressor
(columns split, feature_set, regressor, site, n, r2, rmse, bias, nrmse, nse, r2_anom). report.md: the pooled
table first, sorted by RMSE, then the per-site tables. Figures: `series_<site>.png` (observed and predicted
daily GPP of the best feature set per regressor), `scatter.png` (pooled obs vs pred, one panel per feature
set, best regressor), `skill.png` (pooled RMSE and R2 per feature set and regressor).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from earthrep.evaluation.splits import METRICS


def _table(frame: pd.DataFrame, columns: Sequence[str]) -> str:
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for _, row in frame.iterrows():
    cells = []
    for c in columns:
      v = row[c]
      cells.append(f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_markdown(metrics: pd.DataFrame, out: Path, notes: Sequence[str] = ()) -> Path:
  cols = ["feature_set", "regressor", *METRICS]
  text = ["# GPP evaluation", ""]
  for split, part in metrics.groupby("split", sort=False):
    pooled = part[part["site"] == "pooled"].sort_values("rmse")
    text += [f"## Split `{split}`: pooled over sites (gC m-2 d-1)", "", _table(pooled, cols), ""]
    for site, rows in part[part["site"] != "pooled"].groupby("site"):
      text += [f"### {site}", "", _table(rows.sort_values("rmse"), cols), ""]
  if notes:
    text += ["## Notes", "", *[f"- {n}" for n in notes], ""]
  text += ["R2: squared Pearson correlation; NSE: 1 - SSE/SST; NRMSE: RMSE/(max-min obs); bias: mean(pred-obs); "
           "r2_anom: R2 of anomalies from the 31-day-smoothed day-of-year mean cycle (earthrep/evaluation/splits.py).",
           "", "Figures: skill.png, scatter.png, series_<site>.png."]
  path = out / "report.md"
  path.write_text("\n".join(text) + "\n")
  return path


def write_figures(metrics: pd.DataFrame, predictions: pd.DataFrame, out: Path) -> list[Path]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  paths = []
  pooled = metrics[metrics["site"] == "pooled"]
  split = pooled["split"].iloc[0]
  pooled = pooled[pooled["split"] == split]
  predictions = predictions[predictions["split"] == split]
  sets, regs = sorted(pooled["feature_set"].unique()), sorted(pooled["regressor"].unique())
  # Skill per feature set.
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  width = 0.8 / len(regs)
  for i, reg in enumerate(regs):
    part = pooled[pooled["regressor"] == reg].set_index("feature_set").reindex(sets)
    for ax, metric in zip(axes, ("rmse", "r2")):
      ax.bar(np.arange(len(sets)) + i * width, part[metric], width, label=reg)
  for ax, metric in zip(axes, ("RMSE (gC m-2 d-1)", "R2")):
    ax.set_xticks(np.arange(len(sets)) + 0.4 - width / 2, sets, rotation=30, ha="right")
    ax.set_ylabel(metric)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"Pooled skill ({split})")
  fig.tight_layout()
  paths.append(out / "skill.png")
  fig.savefig(paths[-1], dpi=100)
  plt.close(fig)
  # Scatter: best regressor per feature set.
  best_reg = pooled.loc[pooled.groupby("feature_set")["rmse"].idxmin()].set_index("feature_set")["regressor"]
  fig, axes = plt.subplots(1, len(sets), figsize=(3.2 * len(sets), 3.2), squeeze=False)
  for ax, fs in zip(axes[0], sets):
    part = predictions[(predictions["feature_set"] == fs) & (predictions["regressor"] == best_reg[fs])]
    ax.scatter(part["obs"], part["pred"], s=3, alpha=0.4)
    top = float(np.nanmax([part["obs"].max(), part["pred"].max(), 1.0]))
    ax.plot([0, top], [0, top], "k--", lw=0.8)
    ax.set_title(f"{fs} / {best_reg[fs]}", fontsize=9)
    ax.set_xlabel("observed GPP")
  axes[0][0].set_ylabel("predicted GPP")
  fig.tight_layout()
  paths.append(out / "scatter.png")
  fig.savefig(paths[-1], dpi=100)
  plt.close(fig)
  # Series per site: best feature set of each regressor.
  best_set = pooled.loc[pooled.groupby("regressor")["rmse"].idxmin()].set_index("regressor")["feature_set"]
  for site, part in predictions.groupby("site"):
    fig, ax = plt.subplots(figsize=(10, 3))
    first = part[(part["regressor"] == regs[0]) & (part["feature_set"] == best_set[regs[0]])].sort_values("date")
    ax.plot(first["date"], first["obs"], "k.", ms=2, label="observed")
    for reg in regs:
      p = part[(part["regressor"] == reg) & (part["feature_set"] == best_set[reg])].sort_values("date")
      ax.plot(p["date"], p["pred"], lw=1, label=f"{reg} ({best_set[reg]})")
    ax.set_ylabel("GPP (gC m-2 d-1)")
    ax.set_title(f"{site} ({split})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / f"series_{site}.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
  return paths


def write_report(metrics: pd.DataFrame, predictions: pd.DataFrame, out: str | Path,
                 notes: Sequence[str] = ()) -> dict[str, Path]:
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  metrics.to_csv(out / "metrics.csv", index=False, float_format="%.5g")
  predictions.to_csv(out / "predictions.csv", index=False, float_format="%.4g")
  paths = {"metrics": out / "metrics.csv", "report": write_markdown(metrics, out, notes)}
  if len(predictions):
    for p in write_figures(metrics, predictions, out):
      paths[p.stem] = p
  return paths
