"""Refits the centre heads of a trained fusion model on its frozen inputs (earthrep's; not in the reference).

The library behind `python -m earthrep.refit_heads --model runs/fusion --data-dir SHARDS --out OUT`.

A fusion model with `centre_head` answers for the centre pixel of the centre frame with
`base + centre_<sensor>(head_in)` (`FusionModel.centre_parts`): `base` is the decoder's centre pixel or,
with `centre_anchor`, the linear interpolation of the pixel's valid values; `head_in` is zf (and with the
anchor the interpolation's features and the sensors' centre pixel series). The fusion stage trains these
small MLPs jointly with the fuser, one window at a time through both frozen autoencoders, so in the few
thousand steps a CPU allows each head sees a few tens of thousands of windows once. Everything the heads read
is fixed once the rest of the model is, so this computes it for every window of the shards in one forward
pass and then fits the heads alone for many epochs (Adam, the masked MAE of the training objective's
centre term, mini-batches), each sensor's head stopped at its best epoch on the validation split. The
rest of the params is copied unchanged, so the embedding, the reconstructions and the feature cubes are
the source model's; only the centre answers (the any-day API) change.

The output is a model directory in the converted-checkpoint layout (`<out>/0/params`,
`<out>/model_config.json` with a `head_refit` record of the settings and the per-epoch validation MAE),
loadable wherever a fusion workdir is (`earthrep.inference.engine.load_fusion`). Windows' centre frames are
hidden with `hide_centre_prob` (drawn per record and seed, as `earthrep.data.eval_batches` does). The
default, 0.5, fits both cases of the any-day API: days without a clear observation and clear days (the
heads of a refit on hidden centres only, 1.0, correct a clear day's observation too and are worse there
than the observation itself). On the demo it takes the anchored fusion from 0.85-0.98x linear
interpolation at 30-90-day gaps on crop and grassland to 0.74-0.93x (`benchmarks/results/anyday_gaps.md`).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from earthrep import schema
from earthrep.data import loader
from earthrep.data.shards import open_shards
from earthrep.errors import EarthrepError
from earthrep.io import atomic, checkpoint
from earthrep.models import blocks
from earthrep.models.fusion import FusionModel
from earthrep.training import tasks


class RefitError(EarthrepError):
  """The model or the data cannot be refitted; the message names the directory and the field."""


def collect(model: FusionModel, params: Any, data_dir: str | Path, split: str, *, batch_size: int = 64,
            hide_centre_prob: float = 0.5, seed: int = 0, limit: int | None = None
            ) -> dict[str, dict[str, np.ndarray]]:
  """sensor -> {'base': (N, C), 'head_in': (N, D), 'target': (N, C), 'valid': (N, C) bool} over the records
  of `split` (the first `limit`, in file order, if given): what the sensor's centre head reads, the answer
  it corrects and the observation it is scored against at the centre pixel of the centre frame."""
  parts_fn = jax.jit(lambda p, inputs, offsets, valid: model.apply(
      {"params": p}, inputs, offsets, valid=valid, method=FusionModel.centre_parts))
  out: dict[str, dict[str, list[np.ndarray]]] = {s: {k: [] for k in ("base", "head_in", "target", "valid")}
                                                 for s in model.sensors}
  at = (slice(None), schema.CENTRE_FRAME, schema.CENTRE_PX, schema.CENTRE_PX)
  n = 0
  batches: Iterator[dict[str, np.ndarray]] = loader.eval_batches(
      data_dir, split, batch_size, hide_centre_prob=hide_centre_prob, seed=seed, fill=model.fill)
  for batch in batches:
    real = batch["weight"] > 0
    if limit is not None:
      real &= np.arange(len(real)) < limit - n
    parts = parts_fn(params, *tasks.fusion_batch(model, batch, np))
    for s in model.sensors:
      base, head_in = (np.asarray(a)[real] for a in parts[s])
      target = batch[f"{s}_target"][at][real]
      ok = batch[f"{s}_target_mask"][at][real]
      if not (np.isfinite(base).all() and np.isfinite(head_in).all()):
        raise RefitError(f"{data_dir} split {split!r}: the model's centre head inputs for {s} are not finite "
                         f"(records {n}-{n + int(real.sum()) - 1})")
      for k, v in (("base", base), ("head_in", head_in), ("target", target), ("valid", ok)):
        out[s][k].append(v)
    n += int(real.sum())
    if limit is not None and n >= limit:
      break
  if n == 0:
    raise RefitError(f"{data_dir} split {split!r}: no records")
  return {s: {k: np.concatenate(v) for k, v in d.items()} for s, d in out.items()}


def _masked_mae(pred_NC: jax.Array, target_NC: jax.Array, valid_NC: jax.Array) -> jax.Array:
  err = jnp.where(valid_NC, jnp.abs(pred_NC - target_NC), 0.0)
  return err.sum() / jnp.maximum(valid_NC.sum(), 1)


def fit_head(head: blocks.Mlp, head_params: Any, train: dict[str, np.ndarray], val: dict[str, np.ndarray], *,
             epochs: int = 200, batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-4,
             patience: int = 20, seed: int = 0) -> tuple[Any, list[float], int]:
  """(best params, validation MAE after every epoch with entry 0 = `head_params`, best epoch): Adam(W) on
  the masked MAE of `base + head(head_in)`, starting from `head_params`; stops after `patience` epochs
  without a better validation MAE."""
  opt = optax.adamw(lr, weight_decay=weight_decay)

  def loss_fn(p, head_in, base, target, valid):
    return _masked_mae(base + head.apply({"params": p}, head_in), target, valid)

  @jax.jit
  def step(p, state, head_in, base, target, valid):
    loss, grads = jax.value_and_grad(loss_fn)(p, head_in, base, target, valid)
    updates, state = opt.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  val_fn = jax.jit(loss_fn)
  val_args = tuple(jnp.asarray(val[k]) for k in ("head_in", "base", "target", "valid"))
  n = len(train["base"])
  nb = max(n // batch_size, 1)
  rng = np.random.default_rng(seed)
  state = opt.init(head_params)
  best, best_epoch, params = head_params, 0, head_params
  history = [float(val_fn(head_params, *val_args))]
  for epoch in range(1, epochs + 1):
    order = rng.permutation(n)
    for i in range(nb):
      idx = order[i * batch_size:(i + 1) * batch_size]
      params, state, _ = step(params, state, *(train[k][idx] for k in ("head_in", "base", "target", "valid")))
    history.append(float(val_fn(params, *val_args)))
    if history[-1] < history[best_epoch]:
      best, best_epoch = params, epoch
    elif epoch - best_epoch >= patience:
      break
  return best, history, best_epoch


def refit(model_dir: str | Path, data_dir: str | Path, out_dir: str | Path, *, train_split: str = "train",
          val_split: str = "validation", hide_centre_prob: float = 0.5, seed: int = 0, epochs: int = 200,
          batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-4, patience: int = 20,
          limit: int | None = None, overwrite: bool = False) -> dict[str, Any]:
  """Refits every centre head of the fusion model in `model_dir` on the windows of `data_dir` and writes
  the model with the refitted heads to `out_dir`; returns the `head_refit` record it stores."""
  try:
    atomic.check_apart(out_dir, {"--model": model_dir, "--data-dir": data_dir})
    atomic.check_target(out_dir, overwrite=overwrite, kind="model directory", is_kind=checkpoint.is_model_dir)
  except atomic.OutputError as e:
    raise RefitError(str(e)) from None
  if not 0.0 <= hide_centre_prob <= 1.0:
    raise RefitError(f"--hide-centre-prob {hide_centre_prob}: expected a probability in [0, 1]")
  model, params = tasks.load_fusion(os.fspath(model_dir), error=RefitError)
  if not model.centre_head:
    raise RefitError(f"{model_dir}: model_config.json: model.centre_head is False; there is no centre head "
                     "to refit")
  for split in (train_split, val_split):
    missing = [s for s in model.sensors if s not in open_shards(data_dir, split).sensors]
    if missing:
      raise RefitError(f"--data-dir {data_dir}: split {split!r} has no {', '.join(missing)} data, which the "
                       f"model {model_dir} fuses (sensors {list(model.sensors)})")
  t0 = time.time()
  kw = dict(hide_centre_prob=hide_centre_prob, seed=seed)
  data = {split: collect(model, params, data_dir, split, limit=limit if split == train_split else None, **kw)
          for split in (train_split, val_split)}
  collect_s = time.time() - t0
  new_params, record = dict(params), {
      "source": str(model_dir), "data_dir": str(data_dir), "train_split": train_split, "val_split": val_split,
      "hide_centre_prob": hide_centre_prob, "seed": seed, "epochs": epochs, "batch_size": batch_size,
      "lr": lr, "weight_decay": weight_decay, "patience": patience,
      "records": {split: int(len(next(iter(d.values()))["base"])) for split, d in data.items()},
      "collect_seconds": round(collect_s, 1), "sensors": {}}
  for s in model.sensors:
    channels = data[train_split][s]["base"].shape[1]
    head = blocks.Mlp(model.d_model, channels, zero_out=True)
    best, history, best_epoch = fit_head(head, params[f"centre_{s}"], data[train_split][s], data[val_split][s],
                                         epochs=epochs, batch_size=batch_size, lr=lr,
                                         weight_decay=weight_decay, patience=patience, seed=seed)
    new_params[f"centre_{s}"] = best
    base_mae = float(_masked_mae(*(jnp.asarray(data[val_split][s][k]) for k in ("base", "target", "valid"))))
    record["sensors"][s] = {"val_mae_base": base_mae, "val_mae_before": history[0],
                            "val_mae_after": history[best_epoch], "best_epoch": best_epoch,
                            "val_mae_by_epoch": [round(v, 6) for v in history]}
    logging.info("%s head: validation centre MAE %.5f (base %.5f) -> %.5f at epoch %d of %d", s, history[0],
                 base_mae, history[best_epoch], best_epoch, len(history) - 1)
  record["seconds"] = round(time.time() - t0, 1)
  cfg = checkpoint.read_model_config(model_dir) | {"head_refit": record}
  checkpoint.save_model_dir(out_dir, new_params, cfg)
  return record
