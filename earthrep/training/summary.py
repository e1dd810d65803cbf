"""What trained stages reached: validation curves and held-out scores of their best checkpoints.

`stage_scores(workdir, split)` evaluates the best checkpoint of a stage workdir on a split of its own shards
(the centre-pixel MAE the selection uses, per sensor for a fusion model; for a model trained to fill a
hidden centre frame, `data_kwargs.hide_centre_prob` > 0 (every fusion model), also with that sensor's centre
frame hidden, the any-day case). `predictor_scores(data_dir, splits, sensor)` is what simple rules
reach on the same samples (`predictor_values`), the scale a stage's figure is read against.
`write_summary(workdirs, out)` writes `summary.md` (one row per stage and split, with an optional noise
floor per sensor from `floors`, then the rules' table) and `curves.png` (validation centre MAE against
step, from each workdir's `history.json`), and returns the rows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from earthrep import data as data_lib
from earthrep import schema
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
    kwargs |= {"hide_centre_prob": 1.0, "hide_sensor": kwargs.get("hide_sensor", "s2")}
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


PREDICTORS = ("band means", "frame mean", "ring-1 mean", "linear in time")


def _valid_mean(x, valid, axis):
  n = valid.sum(axis=axis)
  return np.where(n > 0, np.where(valid, x, 0.0).sum(axis=axis) / np.maximum(n, 1), np.nan)


def predictor_values(target, mask, days, band_means):
  """The centre pixel of the centre frame as simple rules predict it from the rest of a patch, (B, C) each.

  `target`/`mask` (B, T, H, W, C) are a batch's filled patches and validity, `days` (B, T) its dates and
  `band_means` (C,) the mean valid centre value of the training split. The rules: "band means" (knows
  nothing of the patch), "frame mean" (the valid pixels of the centre frame but the centre), "ring-1 mean"
  (its 8 neighbours in that frame), "linear in time" (the centre pixel linearly interpolated in days between
  the nearest valid frames before and after the centre frame, or the nearer one alone). A rule with no
  valid input gives NaN (the sample is then left out of that rule's score).
  """
  b, t, h, w, c = target.shape
  ct, cy, cx = schema.CENTRE_FRAME, schema.CENTRE_PX, schema.CENTRE_PX
  frame, frame_ok = target[:, ct].copy(), mask[:, ct].copy()
  frame_ok[:, cy, cx] = False
  ring = (slice(None), slice(cy - 1, cy + 2), slice(cx - 1, cx + 2))
  out = {"band means": np.broadcast_to(np.asarray(band_means, np.float64), (b, c)),
         "frame mean": _valid_mean(frame.reshape(b, h * w, c), frame_ok.reshape(b, h * w, c), 1),
         "ring-1 mean": _valid_mean(frame[ring].reshape(b, 9, c), frame_ok[ring].reshape(b, 9, c), 1)}
  series, ok = target[:, :, cy, cx], mask[:, :, cy, cx]               # (B, T, C)
  d = np.asarray(days, np.float64)[:, :, None] * np.ones((1, 1, c))
  before_ok, after_ok = ok[:, :ct], ok[:, ct + 1:]
  # nearest valid frame on each side (last valid before, first valid after)
  i0 = np.where(before_ok.any(1), ct - 1 - np.argmax(before_ok[:, ::-1], axis=1), -1)
  i1 = np.where(after_ok.any(1), ct + 1 + np.argmax(after_ok, axis=1), -1)
  take = lambda a, i: np.take_along_axis(a, np.maximum(i, 0)[:, None], axis=1)[:, 0]
  v0, v1, d0, d1 = take(series, i0), take(series, i1), take(d, i0), take(d, i1)
  dc = d[:, ct]
  frac = np.where(d1 > d0, (dc - d0) / np.where(d1 > d0, d1 - d0, 1.0), 0.5)
  linear = np.where((i0 >= 0) & (i1 >= 0), v0 + frac * (v1 - v0), np.where(i0 >= 0, v0, np.where(i1 >= 0, v1, np.nan)))
  out["linear in time"] = linear
  return out


def predictor_scores(data_dir: str | Path, splits: Sequence[str], sensor: str, batch_size: int = 64
                     ) -> dict[str, dict[str, float]]:
  """split -> centre MAE of each `predictor_values` rule on that split of a shard dir (the default-mode
  `center` metric: per sample the mean over the valid bands of the centre, then the mean over samples),
  for `sensor`'s patches; the band means are read from the training split once."""
  def batches(name):
    return data_lib.eval_batches(data_dir, name, batch_size, fill="frame")
  centre = (slice(None), schema.CENTRE_FRAME, schema.CENTRE_PX, schema.CENTRE_PX)
  value_sum, valid_count = 0.0, 0
  for batch in batches("train"):
    ok = batch[f"{sensor}_target_mask"][centre] & (batch["weight"][:, None] > 0)
    value_sum = value_sum + np.where(ok, batch[f"{sensor}_target"][centre], 0.0).sum(0)
    valid_count = valid_count + ok.sum(0)
  band_means = value_sum / np.maximum(valid_count, 1)
  out = {}
  for split in splits:
    total = {k: 0.0 for k in PREDICTORS}
    count = {k: 0 for k in PREDICTORS}
    for batch in batches(split):
      target, mask = batch[f"{sensor}_target"], batch[f"{sensor}_target_mask"]
      valid = mask[centre] & (batch["weight"][:, None] > 0)
      for name, pred in predictor_values(target, mask, batch[f"{sensor}_days"], band_means).items():
        err = _valid_mean(np.abs(pred - target[centre]), valid & np.isfinite(pred), 1)
        keep = np.isfinite(err)
        total[name] += float(err[keep].sum())
        count[name] += int(keep.sum())
    out[split] = {k: total[k] / count[k] if count[k] else float("nan") for k in PREDICTORS}
  return out


def _centre_columns(scores: Mapping[str, float]) -> dict[str, float]:
  """sensor -> centre MAE from eval metrics (AE: val/center; fusion: val/<sensor>/center, or the centre
  head's val/<sensor>/head where the model has one: its answer for the centre pixel)."""
  out = {k.split("/")[1]: v for k, v in scores.items() if k.startswith("val/") and k.endswith("/center")
         and k.count("/") == 2}
  out |= {k.split("/")[1]: v for k, v in scores.items() if k.startswith("val/") and k.endswith("/head")
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
  rows, configs = [], []
  for name, workdir in workdirs.items():
    config, _ = _task(workdir)
    configs.append(config)
    history = trainer.read_history(workdir)
    # hidden-centre rows for a model trained to fill a hidden centre frame (stage 2, and stage 1 when asked)
    modes = [False, True] if config.get("data_kwargs", {}).get("hide_centre_prob", 0.0) > 0 else [False]
    for split in splits:
      for hidden in modes:
        scores = stage_scores(workdir, split, hide_centre=hidden)
        for sensor, mae in _centre_columns(scores).items():
          sensor = config.get("sensor", sensor) if sensor == "centre" else sensor
          rows.append(dict(stage=name, split=split, sensor=sensor, centre_mae=mae, samples=int(scores["count"]),
                           centre_frame="hidden" if hidden else "visible", steps=history[-1]["step"] if history else 0,
                           floor=(floors or {}).get(sensor, float("nan"))))
  lines = ["# Trained stages: centre-pixel MAE of the best checkpoint on held-out cubes", "",
           "| stage | split | sensor | centre frame | samples | steps | centre MAE | noise floor | MAE / floor |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['stage']} | {r['split']} | {r['sensor']} | {r['centre_frame']} | {r['samples']} | "
                 f"{r['steps']} | {r['centre_mae']:.4f} | {r['floor']:.4f} | {r['centre_mae'] / r['floor']:.1f} |")
  lines += ["", "The noise floor is the MAE of the observations against the simulator's noise-free values on the "
            "same held-out cubes (demo only; benchmarks/noise_floor.py). Curves: curves.png (validation centre MAE "
            "against step, from each workdir's history.json)."]
  lines += ["", "## What simple rules reach on the same samples", "",
            "The centre pixel of the centre frame predicted from the rest of each patch, scored as the centre MAE "
            "above (`earthrep.training.summary.predictor_values`): a stage whose code has learned nothing about "
            "its patch scores about the band means; one that reconstructs the centre from its neighbourhood "
            "reaches the ring-1 mean; the hidden-centre rows of a fusion model compare with linear in time.", "",
            "| shards | split | sensor | " + " | ".join(PREDICTORS) + " |", "|---|---|---|" + "---|" * len(PREDICTORS)]
  seen = set()
  for config in configs:
    for sensor in ([config.sensor] if config.get("sensor") else list(config.sensors)):
      if (str(config.data_dir), sensor) in seen:
        continue
      seen.add((str(config.data_dir), sensor))
      for split, scores in predictor_scores(config.data_dir, splits, sensor).items():
        lines.append(f"| {config.data_dir} | {split} | {sensor} | " + " | ".join(f"{scores[k]:.4f}" for k in PREDICTORS)
                     + " |")
  atomic.write_text(out / "summary.md", "\n".join(lines) + "\n")
  write_curves(workdirs, out / "curves.png")
  return rows
