"""Trains one stage (a stage-1 autoencoder or the stage-2 fusion model) data-parallel, with resume.

`train_and_evaluate(config, workdir)` is what `python -m earthrep.train` (flags only), tests and notebooks
call. The train state is params + optimizer state on a `data` mesh (replicated), updated by one jitted
`train_step` with donated state. `config.seed` is spawned (`np.random.SeedSequence`) into three
independent streams: params init, dropout (per-step keys `fold_in(dropout key, step)`) and the data
order. The data iterator, plateau state and step are checkpointed with the params, so a run killed at any
moment and resumed from its workdir reaches bitwise the same params on CPU. Validation runs every `eval_every_steps`
(default: one epoch) on the whole validation split; the best `keep_best` checkpoints by the
selection metric (centre-pixel MAE) are kept beside the latest. With `optimizer.ema_decay` > 0 the params'
moving average (kept in the optimiser state, so checkpointed and resumed with it) is what is validated
and saved as best.
Before anything is written, the config, the data and the workdir are checked (`check_config`,
`prepare_workdir`): a workdir holding a run with other settings (model, data, seed, ...; the fields in
`RESUMABLE_FIELDS` may change when resuming, and the data may move: it is compared by the fingerprint of
its shard metadata, stored as `data_fingerprint` in model_config.json) is refused with the differing
fields named, unless `overwrite`, which discards that run's checkpoints, best/, TensorBoard logs and
model_config.json.
`model_config.json` is written once the state is restored, before the first checkpoint.
"""
from __future__ import annotations

import fnmatch
import functools
import json
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
from earthrep import parallel, schema
from earthrep.errors import EarthrepError
from earthrep.io import atomic, checkpoint, provenance
from earthrep.training import optim, tasks

# Config fields that may differ when a run is resumed (schedule length, logging, workers, devices).
RESUMABLE_FIELDS = frozenset({"total_steps", "num_epochs", "eval_every_steps", "checkpoint_every_steps",
                              "log_every_steps", "worker_count", "num_devices", "async_checkpointing",
                              "eval_batch_size", "eval_at_start", "keep_best", "eval_split"})
RUN_ENTRIES = ("checkpoints", "best", "tensorboard", checkpoint.MODEL_CONFIG)


class NonFiniteError(FloatingPointError):
  pass


class ConfigError(EarthrepError):
  """A config value, flag or workdir that the run cannot use; the message names the field."""


def train_step(task, tx, opt_cfg, params, opt_state, batch, step, lr_scale, dropout_key):
  """One update: loss, gradients, clipping + AdamW at the step's learning rate; returns the new params,
  optimizer state and scalar metrics. The trainer jits it with `functools.partial(train_step, task, tx,
  config.optimizer)` and donated state. With `opt_cfg.ema_decay` > 0 the state is {"tx": the optimiser's,
  "ema": the params' moving average} (`init_opt_state`)."""
  rng = jax.random.fold_in(dropout_key, step)
  (loss, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(params, batch, rng)
  lr = optim.learning_rate(opt_cfg, step, lr_scale)
  ema_decay = opt_cfg.get("ema_decay", 0.0)
  updates, tx_state = tx.update(grads, opt_state["tx"] if ema_decay else opt_state, params)
  params = optax.apply_updates(params, optim.scale_updates(updates, lr))
  opt_state = {"tx": tx_state, "ema": optim.ema_update(opt_state["ema"], params, step, ema_decay)} \
      if ema_decay else tx_state
  metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads), lr=lr)
  return params, opt_state, metrics


def init_opt_state(tx, opt_cfg, params, sharding) -> Any:
  """The optimiser state of `train_step`: tx's, and with `ema_decay` > 0 a copy of the params to average."""
  tx_state = jax.jit(tx.init, out_shardings=sharding)(params)
  if not opt_cfg.get("ema_decay", 0.0):
    return tx_state
  return {"tx": tx_state, "ema": jax.tree.map(lambda p: p.copy(), params)}   # own buffers: params are donated


def eval_params(opt_cfg, params, opt_state) -> Any:
  """What is validated and saved as a best checkpoint: the params' moving average when kept, else the params."""
  return opt_state["ema"] if opt_cfg.get("ema_decay", 0.0) else params


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


# ---------------------------------------------------------------------------------------------
# Checks before the run touches its workdir.
# ---------------------------------------------------------------------------------------------
def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the `--config.<field>` of any out-of-range number."""
  def need(field: str, ok, expected: str) -> None:
    node = config
    for part in field.split("."):
      node = node.get(part) if hasattr(node, "get") else None
    if node is not None and not ok(node):
      raise ConfigError(f"--config.{field}={node!r}: expected {expected}")
  positive_int = lambda v: isinstance(v, int) and v >= 1
  non_negative_int = lambda v: isinstance(v, int) and v >= 0
  for field in ("batch_size", "eval_batch_size", "log_every_steps", "keep_best"):
    need(field, positive_int, "a positive integer")
  for field in ("total_steps", "num_epochs", "eval_every_steps", "checkpoint_every_steps", "seed",
                "worker_count", "num_devices"):
    need(field, non_negative_int, "a non-negative integer")
  if not config.get("total_steps") and not config.get("num_epochs"):
    raise ConfigError("--config.total_steps and --config.num_epochs are both 0: expected one of them > 0")
  need("optimizer.lr", lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v > 0,
       "a positive learning rate")
  need("optimizer.weight_decay", lambda v: isinstance(v, (int, float)) and v >= 0, "a non-negative number")


def build_task(config: ml_collections.ConfigDict):
  """The task of `config`; its construction's ValueErrors (bad model fields, missing stage-1 workdirs,
  mismatched fills) are config errors."""
  for sensor in config.get("sensors", ()) if config.get("task") == "fusion" else ():
    workdir = config.get(f"{sensor}_workdir")
    if workdir and Path(workdir).exists():
      stored = checkpoint.read_model_config(workdir).get("sensor")
      if stored not in (None, sensor):
        raise ConfigError(f"--config.{sensor}_workdir {workdir}: holds the {stored} autoencoder, not {sensor}")
  try:
    return tasks.make_task(config)
  except EarthrepError:
    raise
  except (ValueError, TypeError, KeyError) as e:
    raise ConfigError(f"--config: {e}") from None


def check_data(config: ml_collections.ConfigDict, task) -> int:
  """Opens the train and evaluation splits (ShardError on any problem); returns the train record count."""
  data_dir = config.data_dir
  train = data_lib.open_shards(data_dir, "train")
  data_lib.open_shards(data_dir, config.get("eval_split", "validation"))
  needed = tuple(getattr(task, "sensors", None) or (task.sensor,))
  missing = [s for s in needed if s not in train.sensors]
  if missing:
    raise ConfigError(f"--config.data_dir {data_dir}: shards of modality {train.modality!r} (sensors "
                      f"{list(train.sensors)}) lack {missing}, which the model of this config needs")
  kwargs = dict(config.get("data_kwargs", {}))
  hide = kwargs.get("hide_centre_prob", 0.0)
  if not (isinstance(hide, (int, float)) and 0.0 <= hide <= 1.0):
    raise ConfigError(f"--config.data_kwargs.hide_centre_prob={hide!r}: expected a probability in [0, 1]")
  if hide > 0 and kwargs.get("hide_sensor", "s2") not in train.sensors:
    raise ConfigError(f"--config.data_kwargs.hide_sensor={kwargs.get('hide_sensor', 's2')!r}: expected one of "
                      f"the data's sensors {list(train.sensors)}")
  return train.count


def data_fingerprint(config: ml_collections.ConfigDict) -> str:
  """What identifies the training data: its shard metadata (layout, files, counts, sampling, creation)."""
  return provenance.fingerprint((Path(config.data_dir) / schema.SHARD_METADATA).read_bytes())


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
  return {prefix[:-1]: tree}


# Config fields added after runs were written (fnmatch patterns of the flattened keys), with the value
# that means what those runs did.
ADDED_FIELDS = {"config.optimizer.ema_decay": 0.0, "config.model.centre_path": False,
                "model.centre_path": False, "model.autoencoders.*.centre_path": False,
                "config.data_kwargs.hide_centre_prob": 0.0, "config.model.centre_head": False,
                "model.centre_head": False, "config.model.pixel_token": False, "model.pixel_token": False,
                "config.loss.centre_weight": 1.0, "config.model.centre_anchor": False,
                "model.centre_anchor": False}
# Added fields that any value bridges for a run that hid nothing (stage 1 before data_kwargs existed).
_ANY_IF_NOTHING_HIDDEN = ("config.data_kwargs.hide_sensor",)


def _same(key: str, old: Any, new: Any) -> bool:
  if old == new or (old == "<unset>" and any(fnmatch.fnmatchcase(key, pattern) and new == value
                                              for pattern, value in ADDED_FIELDS.items())):
    return True
  leaf = key.rsplit(".", 1)[-1]
  if isinstance(old, str) and isinstance(new, str) and (
      leaf == "data_dir" or leaf.endswith("_workdir") or key.startswith("stage1.")):
    return Path(old).resolve() == Path(new).resolve()
  return False


def run_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """`field: stored -> current` for every difference of two model_config.json contents that a resume
  cannot bridge (the config fields in RESUMABLE_FIELDS may differ)."""
  old, new = _flat(json.loads(json.dumps(stored))), _flat(json.loads(json.dumps(current)))
  if "data_fingerprint" in old and "data_fingerprint" in new:   # the same shards may have moved
    old.pop("config.data_dir", None)
    new.pop("config.data_dir", None)
  else:   # a workdir written before data fingerprints: its data is known by its path only
    old.pop("data_fingerprint", None)
    new.pop("data_fingerprint", None)
  out = []
  order = lambda k: (k.startswith("config."), k not in ("kind", "sensor"), k)   # the model's fields first
  for key in sorted(set(old) | set(new), key=order):
    if key.startswith("config.") and key[len("config."):] in RESUMABLE_FIELDS:
      continue
    if key in _ANY_IF_NOTHING_HIDDEN and key not in old and not new.get("config.data_kwargs.hide_centre_prob"):
      continue
    if not _same(key, old.get(key, "<unset>"), new.get(key, "<unset>")):
      out.append(f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
  return out


def _has_checkpoints(workdir: Path) -> bool:
  return any(p.name.isdigit() for d in (workdir / "checkpoints", workdir / "best") if d.is_dir()
             for p in d.iterdir())


def prepare_workdir(workdir: Path, model_config: dict[str, Any], overwrite: bool) -> None:
  """Checks that `workdir` is new, or holds this very run (to resume); with `overwrite` discards the
  run it holds. Raises ConfigError / CheckpointError before anything in it changes."""
  atomic.check_writable(workdir, "--workdir")
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f"--workdir {workdir}: is a file; expected a directory")
  stored_path = workdir / checkpoint.MODEL_CONFIG
  if overwrite:
    for name in RUN_ENTRIES:
      atomic.remove(workdir / name)
    return
  if stored_path.exists():
    try:
      stored = json.loads(stored_path.read_text())
    except (OSError, ValueError) as e:
      raise checkpoint.CheckpointError(
          f"{stored_path}: unreadable ({e}), so the run in --workdir cannot be checked; choose another "
          "--workdir or pass --overwrite to discard it") from None
    differences = run_differences(stored, model_config)
    if differences:
      raise ConfigError(f"--workdir {workdir}: holds a run with other settings ({'; '.join(differences[:6])}"
                        f"{'; ...' if len(differences) > 6 else ''}); resume it with its own config, choose "
                        "another --workdir, or pass --overwrite to discard it")
  elif _has_checkpoints(workdir):
    raise ConfigError(f"--workdir {workdir}: has checkpoints but no {checkpoint.MODEL_CONFIG}, so its run "
                      "cannot be checked; choose another --workdir or pass --overwrite to discard it")


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                       overwrite: bool = False) -> dict[str, Any]:
  """Trains until `total_steps` (or early stopping); returns the final summary. With `overwrite`, a run
  already in `workdir` is discarded instead of resumed (see the module docstring)."""
  workdir = Path(workdir)

  # ---------------------------------------------------------------- checks, mesh, data, task
  check_config(config)
  try:
    mesh = parallel.make_mesh(config.get("num_devices", 0))
    parallel.check_divisible(config.batch_size, mesh)
    parallel.check_divisible(config.eval_batch_size, mesh)
  except ValueError as e:
    raise ConfigError(f"--config.batch_size / eval_batch_size / num_devices: {e}") from None
  task = build_task(config)
  train_count = check_data(config, task)
  model_config = task.model_config() | {"config": config.to_dict(), "data_fingerprint": data_fingerprint(config)}
  prepare_workdir(workdir, model_config, overwrite)
  steps_per_epoch = max(train_count // config.batch_size, 1)
  total_steps = config.total_steps or config.num_epochs * steps_per_epoch
  eval_every = config.eval_every_steps or steps_per_epoch
  ckpt_every = config.checkpoint_every_steps or eval_every
  parallel.assert_same_across_hosts(np.asarray(config.seed), "config.seed")
  seeds = seed_streams(config.seed)
  try:
    loader = data_lib.make_loader(config.data_dir, "train", global_batch_size=config.batch_size,
                                  seed=seeds["data"], shuffle=True, worker_count=config.worker_count,
                                  **task_data_kwargs(config, task))
  except EarthrepError:
    raise
  except ValueError as e:   # the loader's arguments come from the config (data_kwargs, batch size)
    raise ConfigError(f"--config.data_kwargs / batch_size: {e}") from None
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
  opt_state = init_opt_state(tx, config.optimizer, params, repl)
  n_all = optim.count_params(params)
  n_train = n_all if trainable is None else optim.count_params(params, trainable)
  logging.info("parameters: %d total, %d trained, %d frozen", n_all, n_train, n_all - n_train)

  workdir.mkdir(parents=True, exist_ok=True)
  ckpts = checkpoint.StageCheckpoints(workdir, keep_best=config.keep_best,
                                      async_save=config.get("async_checkpointing", True))
  plateau, step = optim.PlateauState(), 0
  restored = ckpts.restore_latest(params, opt_state, data_iter)
  if restored is not None:
    step, params, opt_state, meta = restored
    plateau = optim.PlateauState.from_dict(meta["plateau"])
    logging.info("resumed from %s at step %d", workdir / "checkpoints", step)
  checkpoint.write_model_config(workdir, model_config)   # after the restore, before the first checkpoint

  step_fn = jax.jit(functools.partial(train_step, task, tx, config.optimizer),
                    out_shardings=(repl, repl, None), donate_argnums=(0, 1))
  eval_step = jax.jit(functools.partial(_eval_step, task))
  writer = _metric_writer(workdir)
  progress = _Progress(total_steps, config.batch_size, step)
  history = read_history(workdir, up_to=step)   # the validations before a resumed step

  def save_latest():
    ckpts.save_latest(step, params, opt_state, data_iter,
                      {"step": step, "plateau": plateau.to_dict(), "total_steps": total_steps})

  # ---------------------------------------------------------------- step-0 validation
  if step == 0 and config.get("eval_at_start", True):
    val = evaluate(task, eval_step, eval_params(config.optimizer, params, opt_state), config, mesh)
    history.append({"step": 0, **val})
    _write_history(workdir, history)
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
      validated = eval_params(config.optimizer, params, opt_state)
      val = evaluate(task, eval_step, validated, config, mesh)
      plateau, stop = optim.plateau_update(plateau, val["val_metric"], config.optimizer)
      history.append({"step": step, **val})
      _write_history(workdir, history)
      logging.info("step %d validation: %s (lr scale %.3g)", step, _fmt(val), plateau.lr_scale)
      if writer:
        for k, v in val.items():
          writer.add_scalar(k, v, step)
      if step not in ckpts.best.all_steps():  # a resumed run may re-reach a saved boundary
        ckpts.save_best(step, validated, {"step": step, "val_metric": val["val_metric"]})
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


HISTORY = "history.json"


def read_history(workdir: str | Path, up_to: int | None = None) -> list[dict[str, float]]:
  """The validation results `history.json` of a workdir ([] if none), those after `up_to` dropped (a run
  resumed from an earlier checkpoint repeats them)."""
  path = Path(workdir) / HISTORY
  if not path.exists():
    return []
  history = json.loads(path.read_text())
  return [h for h in history if up_to is None or h["step"] <= up_to]


def _write_history(workdir: Path, history: list[dict[str, float]]) -> None:
  if jax.process_index() == 0:
    atomic.write_text(workdir / HISTORY, json.dumps(history, indent=1))


def _report(step, metrics, writer, progress, config):
  values = _check_finite(metrics, step)
  if step % config.log_every_steps == 0 or step == 1:
    logging.info(progress.line(step, values))
  if writer:
    for k, v in values.items():
      writer.add_scalar(f"train/{k}", v, step)


def _fmt(values: dict[str, float]) -> str:
  return ", ".join(f"{k}={v:.5g}" for k, v in sorted(values.items()))
