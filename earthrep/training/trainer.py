"""Trains one stage (a stage-1 autoencoder or the stage-2 fusion model) data-parallel, with resume.

`train_and_evaluate(config, workdir)` is what `python -m earthrep.train` (flags only), tests and notebooks
call. The train state is params + optimizer state on a `data` mesh (replicated), updated by one jitted
`train_step` with donated state. `config.seed` is spawned (`np.random.SeedSequence`) into three
independent streams: params init, dropout (per-step keys `fold_in(dropout key, step)`) and the data
order. The data iterator, plateau state and step are checkpointed with the params, so a run killed at any
moment and resumed from its workdir reaches bitwise the same params on CPU. Validation runs every `eval_every_steps`
(default: one epoch) on the whole validation split; the best `keep_best` checkpoints by the
selection metric (centre-pixel MAE) are kept beside the latest.
"""
from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from earthrep import data as data_lib
from earthrep import parallel
from earthrep.io import checkpoint
from earthrep.training import optim, tasks


class NonFiniteError(FloatingPointError):
  pass


def train_step(task, tx, opt_cfg, params, opt_state, batch, step, lr_scale, dropout_key):
  """One update: loss, gradients, clipping + AdamW at the step's learning rate; returns the new params,
  optimizer state and scalar metrics. The trainer jits it with `functools.partial(train_step, task, tx,
  config.optimizer)` and donated state."""
  rng = jax.random.fold_in(dropout_key, step)
  (loss, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(params, batch, rng)
  lr = optim.learning_rate(opt_cfg, step, lr_scale)
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, optim.scale_updates(updates, lr))
  metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads), lr=lr)
  return params, opt_state, metrics


def seed_streams(seed: int) -> dict[str, int]:
  """Independent 32-bit seeds for params init, dropout and the data order, spawned from `seed`."""
  children = np.random.SeedSequence(seed).spawn(3)
  return {name: int(c.generate_state(1)[0]) for name, c in zip(("init", "dropout", "data"), children)}


def _eval_step(task, params, batch):
  per_sample = task.eval_metrics(params, batch)
  w = batch["weight"].astype(jnp.float32)
  return {k: jnp.sum(v * w) for k, v in per_sample.items()} | {"count": jnp.sum(w)}


def _host_slice(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """On several hosts each one feeds its own contiguous slice of an evaluation batch."""
  n, p, i = len(next(iter(batch.values()))), jax.process_count(), jax.process_index()
  return {k: v[i * n // p:(i + 1) * n // p] for k, v in batch.items()}


def evaluate(task, eval_step, params, config, mesh) -> dict[str, float]:
  sums: dict[str, float] = {}
  for batch in data_lib.eval_batches(config.data_dir, config.get("eval_split", "validation"),
                                     config.eval_batch_size, **task_data_kwargs(config, task)):
    out = jax.device_get(eval_step(params, parallel.host_batch_to_global(_host_slice(batch), mesh)))
    for k, v in out.items():
      sums[k] = sums.get(k, 0.0) + float(v)
  count = sums.pop("count", 0.0)
  if not count:
    raise ValueError(f"{config.data_dir}: the validation split is empty")
  return {k: v / count for k, v in sums.items()}


def task_data_kwargs(config: ml_collections.ConfigDict, task) -> dict[str, Any]:
  """Loader options: `config.data_kwargs` plus the NaN fill the task's model was built for."""
  return dict(config.get("data_kwargs", {})) | {"fill": task.fill}


def _check_finite(metrics: dict[str, Any], step: int) -> dict[str, float]:
  values = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
    raise NonFiniteError(f"non-finite training values at step {step}: loss={values['loss']}, "
                         f"grad_norm={values['grad_norm']} (lower the learning rate or check the data)")
  return values


class _Progress:
  def __init__(self, total_steps: int, batch_size: int, start_step: int):
    self.total, self.batch_size = total_steps, batch_size
    self.t0, self.s0 = time.perf_counter(), start_step

  def line(self, step: int, values: dict[str, float]) -> str:
    dt = max(time.perf_counter() - self.t0, 1e-9)
    rate = (step - self.s0) / dt
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
    return (f"step {step}/{self.total} | loss {values['loss']:.5g} | lr {values['lr']:.3g} | "
            f"{rate * self.batch_size:.1f} samples/s | ETA {eta_s}")


def _metric_writer(workdir: Path):
  if jax.process_index() != 0:
    return None
  from tensorboardX import SummaryWriter
  return SummaryWriter(str(workdir / "tensorboard"))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Trains until `total_steps` (or early stopping); returns the final summary."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)

  # ---------------------------------------------------------------- mesh, data, task
  mesh = parallel.make_mesh(config.get("num_devices", 0))
  parallel.check_divisible(config.batch_size, mesh)
  parallel.check_divisible(config.eval_batch_size, mesh)
  task = tasks.make_task(config)
  train_count = data_lib.open_shards(config.data_dir, "train").count
  steps_per_epoch = max(train_count // config.batch_size, 1)
  total_steps = config.total_steps or config.num_epochs * steps_per_epoch
  eval_every = config.eval_every_steps or steps_per_epoch
  ckpt_every = config.checkpoint_every_steps or eval_every
  parallel.assert_same_across_hosts(np.asarray(config.seed), "config.seed")
  seeds = seed_streams(config.seed)
  loader = data_lib.make_loader(config.data_dir, "train", global_batch_size=config.batch_size,
                                seed=seeds["data"], shuffle=True, worker_count=config.worker_count,
                                **task_data_kwargs(config, task))
  data_iter = iter(loader)
  # Params are initialised from an RBG key: XLA compiles its generator several times faster than
  # threefry on CPU (seconds per model instead of ~20-40 s). Dropout keeps threefry, which gives the
  # same masks however the batch is sharded.
  init_key = jax.random.key(seeds["init"], impl="rbg")
  dropout_key = jax.random.key(seeds["dropout"])

  # ---------------------------------------------------------------- params and optimizer
  repl = parallel.replicated(mesh)
  example = parallel.host_batch_to_global(
      _host_slice(task.example_batch(config.batch_size)), mesh)
  params = jax.jit(task.init, out_shardings=repl)(init_key, example)
  params = task.restore_pretrained(params)
  trainable = task.trainable(params)
  tx = optim.make_optimizer(config.optimizer, trainable)
  opt_state = jax.jit(tx.init, out_shardings=repl)(params)
  n_all = optim.count_params(params)
  n_train = n_all if trainable is None else optim.count_params(params, trainable)
  logging.info("parameters: %d total, %d trained, %d frozen", n_all, n_train, n_all - n_train)

  ckpts = checkpoint.StageCheckpoints(workdir, keep_best=config.keep_best,
                                      async_save=config.get("async_checkpointing", True))
  checkpoint.write_model_config(workdir, task.model_config() | {"config": config.to_dict()})
  plateau, step = optim.PlateauState(), 0
  restored = ckpts.restore_latest(params, opt_state, data_iter)
  if restored is not None:
    step, params, opt_state, meta = restored
    plateau = optim.PlateauState.from_dict(meta["plateau"])
    logging.info("resumed from %s at step %d", workdir / "checkpoints", step)

  step_fn = jax.jit(functools.partial(train_step, task, tx, config.optimizer),
                    out_shardings=(repl, repl, None), donate_argnums=(0, 1))
  eval_step = jax.jit(functools.partial(_eval_step, task))
  writer = _metric_writer(workdir)
  progress = _Progress(total_steps, config.batch_size, step)
  history: list[dict[str, float]] = []

  def save_latest():
    ckpts.save_latest(step, params, opt_state, data_iter,
                      {"step": step, "plateau": plateau.to_dict(), "total_steps": total_steps})

  # ---------------------------------------------------------------- step-0 validation
  if step == 0 and config.get("eval_at_start", True):
    val = evaluate(task, eval_step, params, config, mesh)
    history.append({"step": 0, **val})
    logging.info("step 0 validation: %s", _fmt(val))
    if writer:
      for k, v in val.items():
        writer.add_scalar(k, v, 0)

  # ---------------------------------------------------------------- training loop
  pending, stop = None, False
  while step < total_steps and not stop:
    batch = parallel.host_batch_to_global(next(data_iter), mesh)
    params, opt_state, metrics = step_fn(params, opt_state, batch, jnp.asarray(step, jnp.int32),
                                         jnp.asarray(plateau.lr_scale, jnp.float32), dropout_key)
    if pending is not None:  # fetch step N-1 only after step N is dispatched
      _report(*pending, writer, progress, config)
    step += 1
    pending = (step, metrics)
    boundary = step % eval_every == 0 or step == total_steps
    if boundary or step % ckpt_every == 0:
      _report(*pending, writer, progress, config)
      pending = None
    if boundary:
      val = evaluate(task, eval_step, params, config, mesh)
      plateau, stop = optim.plateau_update(plateau, val["val_metric"], config.optimizer)
      history.append({"step": step, **val})
      logging.info("step %d validation: %s (lr scale %.3g)", step, _fmt(val), plateau.lr_scale)
      if writer:
        for k, v in val.items():
          writer.add_scalar(k, v, step)
      if step not in ckpts.best.all_steps():  # a resumed run may re-reach a saved boundary
        ckpts.save_best(step, params, {"step": step, "val_metric": val["val_metric"]})
    if boundary or step % ckpt_every == 0 or stop:
      save_latest()
  if pending is not None:
    _report(*pending, writer, progress, config)
  ckpts.wait()
  ckpts.close()
  if writer:
    writer.close()
  if stop:
    logging.info("early stopping at step %d", step)
  return {"step": step, "history": history, "params": params, "opt_state": opt_state,
          "trainable": trainable}


def _report(step, metrics, writer, progress, config):
  values = _check_finite(metrics, step)
  if step % config.log_every_steps == 0 or step == 1:
    logging.info(progress.line(step, values))
  if writer:
    for k, v in values.items():
      writer.add_scalar(f"train/{k}", v, step)


def _fmt(values: dict[str, float]) -> str:
  return ", ".join(f"{k}={v:.5g}" for k, v in sorted(values.items()))
