"""Orbax checkpoints of one training stage, and restoring another stage's params.

Layout of a workdir (one stage):
  checkpoints/<step>/{params,opt_state,data,meta}   latest state for resume (separate items)
  best/<step>/{params,meta}                         the best `keep_best` by the validation metric
  model_config.json                                 what is needed to rebuild the module
A converted reference checkpoint (`python -m earthrep.convert`) has the same `best/`-free shape: `<dir>/<step>/params`
plus `model_config.json`; `find_params_dir` accepts both. Restoring params into a larger tree (fusion)
checks structure, shape and dtype and raises listing every offending key.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from earthrep.errors import EarthrepError
from earthrep.io import atomic

MODEL_CONFIG = "model_config.json"


class CheckpointError(EarthrepError):
  pass


def _abstract(tree: Any) -> Any:
  def leaf(x):
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
  return jax.tree.map(leaf, tree)


def _restore_args(abstract: Any) -> Any:
  return ocp.checkpoint_utils.construct_restore_args(abstract)


class StageCheckpoints:
  """The latest-state manager (resume) and the best-k manager (selection) of one workdir."""

  def __init__(self, workdir: str | os.PathLike, *, keep_best: int, keep_latest: int = 2,
               async_save: bool = True):
    workdir = Path(workdir).absolute()
    self.latest = ocp.CheckpointManager(
        workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep_latest, create=True,
                                             enable_async_checkpointing=async_save),
        item_names=("params", "opt_state", "data", "meta"))
    self.best = ocp.CheckpointManager(
        workdir / "best",
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep_best, best_fn=lambda m: m["val_metric"], best_mode="min",
            keep_checkpoints_without_metrics=False, create=True,
            enable_async_checkpointing=async_save),
        item_names=("params", "meta"))

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save_latest(self, step: int, params: Any, opt_state: Any, data_iter: Any, meta: dict) -> None:
    import grain.python as grain
    self.latest.save(step, args=ocp.args.Composite(
        params=ocp.args.PyTreeSave(params), opt_state=ocp.args.PyTreeSave(opt_state),
        data=grain.PyGrainCheckpointSave(data_iter), meta=ocp.args.JsonSave(meta)))

  def restore_latest(self, params: Any, opt_state: Any, data_iter: Any
                     ) -> tuple[int, Any, Any, dict] | None:
    """Restores in place of the given (already sharded) templates; None if nothing saved yet."""
    import grain.python as grain
    step = self.latest.latest_step()
    if step is None:
      return None
    ap, ao = _abstract(params), _abstract(opt_state)
    try:
      out = self.latest.restore(step, args=ocp.args.Composite(
          params=ocp.args.PyTreeRestore(ap, restore_args=_restore_args(ap)),
          opt_state=ocp.args.PyTreeRestore(ao, restore_args=_restore_args(ao)),
          data=grain.PyGrainCheckpointRestore(data_iter), meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - re-raised with the path
      raise CheckpointError(f"{self.latest.directory}/{step}: cannot restore the training state "
                            f"({type(e).__name__}: {e})") from e
    return step, out["params"], out["opt_state"], dict(out["meta"])

  def save_best(self, step: int, params: Any, meta: dict) -> None:
    self.best.save(step, args=ocp.args.Composite(
        params=ocp.args.PyTreeSave(params), meta=ocp.args.JsonSave(meta)),
        metrics={"val_metric": float(meta["val_metric"])})

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def write_model_config(workdir: str | os.PathLike, config: dict) -> None:
  atomic.write_text(Path(workdir) / MODEL_CONFIG, json.dumps(config, indent=2, sort_keys=True))


def is_model_dir(path: str | os.PathLike) -> bool:
  """A model directory (`save_model_dir`): model_config.json beside step folders, not a training workdir."""
  path = Path(path)
  return (path / MODEL_CONFIG).is_file() and not any((path / d).exists() for d in
                                                     ("checkpoints", "best", "tensorboard"))


def save_model_dir(out_dir: str | os.PathLike, params: Any, config: dict) -> Path:
  """Writes a model directory, `<out>/0/params` (Orbax) and `<out>/model_config.json`, atomically: the
  layout of converted checkpoints and refitted models, loadable wherever a workdir is. The caller checks
  that `out_dir` may be written (`atomic.check_target`)."""
  out = Path(out_dir).absolute()
  out.parent.mkdir(parents=True, exist_ok=True)
  with atomic.atomic_path(out) as tmp:
    mngr = ocp.CheckpointManager(tmp, options=ocp.CheckpointManagerOptions(create=True),
                                 item_names=("params",))
    mngr.save(0, args=ocp.args.Composite(params=ocp.args.PyTreeSave(params)))
    mngr.wait_until_finished()
    mngr.close()
    write_model_config(tmp, dict(config))
  return out


def read_model_config(path: str | os.PathLike) -> dict:
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: no such checkpoint or workdir")
  f = path / MODEL_CONFIG if path.is_dir() else path
  if not f.exists():
    raise CheckpointError(f"{f}: missing; is {path} a stage workdir or a converted checkpoint?")
  try:
    return json.loads(f.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{f}: not valid JSON ({e})") from e


def find_params_dir(path: str | os.PathLike) -> Path:
  """The `<step>` directory holding the params to load from a workdir or converted checkpoint.

  A workdir gives its best checkpoint by the validation metric (the reference loads the lowest
  val_loss); a converted checkpoint or a plain manager directory gives its latest step.
  """
  path = Path(path).absolute()
  if not path.exists():
    raise CheckpointError(f"{path}: no such checkpoint or workdir")
  if (path / "best").is_dir():
    mgr = ocp.CheckpointManager(path / "best", options=ocp.CheckpointManagerOptions(
        best_fn=lambda m: m["val_metric"], best_mode="min", read_only=True), item_names=("params", "meta"))
    step = mgr.best_step() if mgr.best_step() is not None else mgr.latest_step()
  else:
    mgr = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True),
                                item_names=("params",))
    step = mgr.latest_step()
  if step is None:
    raise CheckpointError(f"{path}: holds no finished checkpoint")
  return Path(mgr.directory) / str(step)


def load_params(path: str | os.PathLike, target: Any | None = None) -> Any:
  """Loads the `params` item of a workdir / converted checkpoint.

  With `target` (a pytree of arrays or ShapeDtypeStructs), the stored tree must match it exactly:
  any missing, unexpected, misshaped or mistyped key raises a CheckpointError listing them all.
  """
  step_dir = find_params_dir(path)
  item = step_dir / "params"
  ckptr = ocp.PyTreeCheckpointer()
  try:
    meta = ckptr.metadata(item)
    stored = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"{item}: unreadable or truncated checkpoint ({type(e).__name__}: {e})") from e
  if target is not None:
    check_tree_matches(stored, target, where=str(item))
    abstract = _abstract(target)
    restore = ocp.args.PyTreeRestore(abstract, restore_args=_restore_args(abstract))
  else:
    restore = ocp.args.PyTreeRestore()
  try:
    return ckptr.restore(item, args=restore)
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"{item}: cannot restore params ({type(e).__name__}: {e})") from e


def _flat(tree: Any) -> dict[str, Any]:
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat["/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)] = leaf
  return flat


def check_tree_matches(stored: Any, target: Any, where: str) -> None:
  s, t = _flat(stored), _flat(target)
  problems = [f"missing in checkpoint: {k}" for k in sorted(set(t) - set(s))]
  problems += [f"unexpected in checkpoint: {k}" for k in sorted(set(s) - set(t))]
  for k in sorted(set(s) & set(t)):
    ss, ts = tuple(getattr(s[k], "shape", ())), tuple(np.shape(t[k]))
    sd, td = np.dtype(getattr(s[k], "dtype", np.float32)), np.dtype(t[k].dtype)
    if ss != ts or sd != td:
      problems.append(f"mismatch {k}: checkpoint {ss} {sd} vs model {ts} {td}")
  if problems:
    raise CheckpointError(f"{where}: params do not fit the model ({len(problems)} problems):\n  "
                          + "\n  ".join(problems))
