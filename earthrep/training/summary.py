"""What trained stages reached: validation curves and held-out scores of their best checkpoints.

`stage_scores(workdir, split)` evaluates the best checkpoint of a stage workdir on a split of its own shards
(the centre-pixel MAE the selection uses, per sensor for a fusion model; for a fusion model also with the
S2 centre frame hidden, the any-day case). `write_summary(workdirs, out)` writes `summary.md` (one row per
stage and split, with an optional noise floor per sensor from `floors`) and `curves.png` (validation
centre MAE against step, from each workdir's `history.json`), and returns the rows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from earthrep import data as data_lib
from earthrep.io import atomic, checkpoint
from earthrep.training import tasks, trainer


def _task(workdir: Path):
  stored = checkpoint.read_model_config(workdir)
  config = ml_collections.ConfigDict(stored["config"])
  return config, tasks.make_task(config)


def stage_scores(workdir: str | Path, split: str, hide_centre: bool = False,
                 data_dir: str | None = None) -> dict[str, float]:
  """Per-sample-averaged eval metrics of the best checkpoint on `split` (`val/<sensor>/center`, ...)."""
  workdir = Path(workdir)
  config, task = _task(workdir)
  params = checkpoint.load_params(workdir)
  eval_fn = jax.jit(task.eval_metrics)
  kwargs = trainer.task_data_kwargs(config, task)
  if hide_centre:
    kwargs |= {"hide_centre_prob": 1.0, "hide_sensor": "s2"}
  elif "hide_centre_prob" in kwargs:
    kwargs["hide_centre_prob"] = 0.0
  sums, count = {}, 0.0
  for batch in data_lib.eval_batches(data_dir or config.data_dir, split, config.eval_batch_size, **kwargs):
    weight = batch.pop("weight")
    out = eval_fn(params, {k: jnp.asarray(v) for k, v in batch.items()})
    for k, v in out.items():
      sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v) * weight))
    count += float(weight.sum())
  return {k: v / count for k, v in sums.items()} | {"count": count}


def _centre_columns(scores: Mapping[str, float]) -> dict[str, float]:
  """sensor -> centre MAE from eval metrics (AE: val/center; fusion: val/<sensor>/center)."""
  out = {k.split("/")[1]: v for k, v in scores.items() if k.startswith("val/") and k.endswith("/center")
         and k.count("/") == 2}
  if not out and "val/center" in scores:
    out["centre"] = scores["val/center"]
  return out


def write_curves(workdirs: Mapping[str, Path], png: Path) -> Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 3.8))
  for name, workdir in workdirs.items():
    history = trainer.read_history(workdir)
    if history:
      ax.plot([h["step"] for h in history], [h["val_metric"] for h in history], "o-", ms=3, label=name)
  ax.set_yscale("log")
  ax.set_xlabel("training step")
  ax.set_ylabel("validation centre MAE (selection metric)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  with atomic.atomic_path(png) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
  plt.close(fig)
  return png


def write_summary(workdirs: Mapping[str, str | Path], out: str | Path, splits: Sequence[str] = ("validation", "test"),
                  floors: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  workdirs = {name: Path(w) for name, w in workdirs.items()}
  rows = []
  for name, workdir in workdirs.items():
    config, _ = _task(workdir)
    history = trainer.read_history(workdir)
    modes = [False, True] if config.get("task") == "fusion" else [False]
    for split in splits:
      for hidden in modes:
        scores = stage_scores(workdir, split, hide_centre=hidden)
        for sensor, mae in _centre_columns(scores).items():
          sensor = config.get("sensor", sensor) if sensor == "centre" else sensor
          rows.append(dict(stage=name, split=split, sensor=sensor, centre_mae=mae, samples=int(scores["count"]),
                           s2_centre="hidden" if hidden else "visible", steps=history[-1]["step"] if history else 0,
                           floor=(floors or {}).get(sensor, float("nan"))))
  lines = ["# Trained stages: centre-pixel MAE of the best checkpoint on held-out cubes", "",
           "| stage | split | sensor | S2 centre frame | samples | steps | centre MAE | noise floor | MAE / floor |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['stage']} | {r['split']} | {r['sensor']} | {r['s2_centre']} | {r['samples']} | {r['steps']} | "
                 f"{r['centre_mae']:.4f} | {r['floor']:.4f} | {r['centre_mae'] / r['floor']:.1f} |")
  lines += ["", "The noise floor is the MAE of the observations against the simulator's noise-free values on the "
            "same held-out cubes (demo only; benchmarks/noise_floor.py). Curves: curves.png (validation centre MAE "
            "against step, from each workdir's history.json)."]
  atomic.write_text(out / "summary.md", "\n".join(lines) + "\n")
  write_curves(workdirs, out / "curves.png")
  return rows
