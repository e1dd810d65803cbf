"""Figures of the evaluation report (matplotlib, Agg): skill with intervals, predicted vs observed, per-site
series, probe confusion matrices and the transformer's loss curves. Each function writes one PNG and returns
its path (None when there is nothing to draw)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _dates():
  import matplotlib.dates
  return matplotlib.dates


def _save(fig, path: Path) -> Path:
  from earthrep.io import atomic
  fig.tight_layout()
  with atomic.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=90, format="png")
  _plt().close(fig)
  return path


def skill(scores: pd.DataFrame, split: str, designs: Sequence[str], order: Sequence[str], path: Path) -> Path | None:
  """Pooled R2 with its 95 % interval per feature set, one panel per design, one marker per regressor; the
  meteorology-only model (ridge) as a dotted reference line in the panels of the meteorology designs."""
  plt = _plt()
  pooled = scores[(scores["site"] == "pooled") & (scores["split"] == split)]
  if pooled.empty:
    return None
  names = [n for n in order if n in set(pooled["feature_set"]) and n != "met"]
  fig, axes = plt.subplots(1, len(designs), figsize=(3.6 * len(designs), 0.3 * len(names) + 1.6), squeeze=False,
                           sharey=True)
  regs = sorted(pooled["regressor"].unique())
  met = pooled[(pooled["feature_set"] == "met") & (pooled["regressor"] == "ridge")]
  labels = (["met"] if "met" in designs else []) + names      # one row per set, the same in every panel
  for ax, design in zip(axes[0], designs):
    part = pooled[pooled["design"].isin([design, "-"]) | ((pooled["feature_set"] == "met") & (design == "met"))]
    for i, r in enumerate(regs):
      rows = part[part["regressor"] == r].set_index("feature_set").reindex(labels)
      y = np.arange(len(rows)) + (i - (len(regs) - 1) / 2) * 0.2
      err = np.abs(np.stack([rows["r2"] - rows["r2_lo"], rows["r2_hi"] - rows["r2"]]).astype(float))
      ax.errorbar(rows["r2"], y, xerr=np.nan_to_num(err), fmt="o", ms=3.5, capsize=2, label=r)
    if design in ("x_met", "lue") and len(met):
      ax.axvline(float(met["r2"].iloc[0]), color="grey", ls=":", lw=1, label="met only (ridge)")
    ax.set_title(design, fontsize=9)
    ax.set_xlabel("pooled R2 (95 % CI over sites)", fontsize=8)
    ax.set_xlim(0, 1)
    ax.grid(axis="x", lw=0.3)
  axes[0][0].set_yticks(np.arange(len(labels)), labels, fontsize=8)
  axes[0][-1].legend(fontsize=7, loc="lower left")
  fig.suptitle(f"GPP skill by feature set, design and regressor ({split})", fontsize=10)
  return _save(fig, path)


def scatter(predictions: pd.DataFrame, panels: Sequence[tuple[str, str, str]], split: str,
            path: Path) -> Path | None:
  """Predicted vs observed daily GPP, one panel per (feature set, design, regressor)."""
  plt = _plt()
  panels = [p for p in panels if ((predictions["feature_set"] == p[0]) & (predictions["design"] == p[1])
                                  & (predictions["regressor"] == p[2]) & (predictions["split"] == split)).any()]
  if not panels:
    return None
  fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.1), squeeze=False)
  for ax, (name, design, reg) in zip(axes[0], panels):
    part = predictions[(predictions["feature_set"] == name) & (predictions["design"] == design)
                       & (predictions["regressor"] == reg) & (predictions["split"] == split)]
    ax.scatter(part["obs"], part["pred"], s=2, alpha=0.25, rasterized=True)
    top = float(np.nanmax([part["obs"].max(), part["pred"].max(), 1.0]))
    ax.plot([0, top], [0, top], "k--", lw=0.8)
    ax.set_title(f"{name} / {design} / {reg}", fontsize=8)
    ax.set_xlabel("observed GPP (gC m-2 d-1)", fontsize=8)
  axes[0][0].set_ylabel("predicted GPP", fontsize=8)
  return _save(fig, path)


def series(predictions: pd.DataFrame, lines: Sequence[tuple[str, str, str]], split: str, path: Path) -> Path | None:
  """Observed and predicted daily GPP at every site (one panel each)."""
  plt = _plt()
  part = predictions[predictions["split"] == split]
  site_ids = sorted(part["site"].unique())
  if not site_ids:
    return None
  cols = 4 if len(site_ids) > 6 else 2
  rows = -(-len(site_ids) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 1.9 * rows), squeeze=False, sharey=True)
  for ax, site in zip(axes.flat, site_ids):
    here = part[part["site"] == site]
    first = here.drop_duplicates("date").sort_values("date")
    ax.plot(first["date"], first["obs"], "k.", ms=1.2, label="observed")
    for name, design, reg in lines:
      p = here[(here["feature_set"] == name) & (here["design"] == design) & (here["regressor"] == reg)]
      ax.plot(p.sort_values("date")["date"], p.sort_values("date")["pred"], lw=0.8, label=f"{name}/{design}/{reg}")
    ax.set_title(site, fontsize=8)
    ax.tick_params(labelsize=6)
    ax.xaxis.set_major_formatter(_dates().ConciseDateFormatter(ax.xaxis.get_major_locator()))
  for ax in list(axes.flat)[len(site_ids):]:
    ax.axis("off")
  axes[0][0].legend(fontsize=6)
  fig.suptitle(f"Daily GPP (gC m-2 d-1), held-out predictions ({split})", fontsize=10)
  return _save(fig, path)


def confusion(matrices: dict[str, np.ndarray], kind_names: Sequence[str], names: Sequence[str],
              path: Path) -> Path | None:
  plt = _plt()
  names = [n for n in names if n in matrices]
  if not names:
    return None
  fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.4), squeeze=False)
  for ax, name in zip(axes[0], names):
    ax.imshow(matrices[name], vmin=0, vmax=1, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrices[name]):
      if v >= 0.05:
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v > 0.6 else "black")
    ax.set_xticks(range(len(kind_names)), kind_names, rotation=60, fontsize=7)
    ax.set_yticks(range(len(kind_names)), kind_names, fontsize=7)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("predicted", fontsize=7)
  axes[0][0].set_ylabel("true kind", fontsize=7)
  return _save(fig, path)


def loss_curves(curves: Sequence[tuple[str, str, dict]], path: Path) -> Path | None:
  """Training (per step, smoothed) and validation L1 of every transformer fit, one panel per combo."""
  plt = _plt()
  names = sorted({name for name, _, _ in curves})
  if not names:
    return None
  fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.0), squeeze=False, sharey=True)
  for ax, name in zip(axes[0], names):
    for i, (_, fold, c) in enumerate([x for x in curves if x[0] == name]):
      train = pd.Series(c["train"]).rolling(20, min_periods=1).mean()
      line, = ax.plot(np.arange(1, len(train) + 1), train, lw=0.7, alpha=0.6)
      if c["val"]:
        steps, val = zip(*c["val"])
        ax.plot(steps, val, "--", color=line.get_color(), lw=0.9)
        ax.axvline(c["best_step"], color=line.get_color(), lw=0.4, alpha=0.5)
    ax.set_title(name, fontsize=8)
    ax.set_xlabel("step", fontsize=8)
  axes[0][0].set_ylabel("L1, standardised GPP (solid: train, dashed: validation)", fontsize=7)
  return _save(fig, path)
