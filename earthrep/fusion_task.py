"""Stage 2 task: fuse the stage-1 autoencoders of several sensors, restored from their own checkpoints.

Each sensor's TransformerAE (encoder and decoder) is rebuilt from `model_config.json` of its stage-1
workdir (or converted checkpoint) given as `config.<sensor>_workdir`, and its params are restored from
that checkpoint's best step into the fusion params tree; any structure, shape or dtype mismatch raises
listing the keys. With `freeze_encoders=True` (default, as the paper describes) every autoencoder
parameter is frozen: gradients are stopped before them and the optimiser keeps no state for them, so
only the fusion layers and heads train. `freeze_encoders=False` fine-tunes everything, as the released
scripts do. The objective is the reference fusion loss (per-sensor weights from the sensor registry);
the selection metric is the mean of the per-sensor centre-pixel errors.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from earthrep import checkpoint, losses, sensors
from earthrep.models import fusion as fusion_lib


def stage1_model_config(path: str) -> dict[str, Any]:
  """The TransformerAE fields stored beside a stage-1 checkpoint (trainer or converter layout)."""
  cfg = checkpoint.read_model_config(path)
  model = cfg.get("model", cfg)
  return {k: v for k, v in model.items() if k != "kind"}


class FusionTask:
  """Stage 2: FusionModel over `config.sensors`, stage-1 params restored (and frozen by default)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.sensors = tuple(config.sensors)
    self.workdirs = {s: config.get(f"{s}_workdir") for s in self.sensors}
    missing = [s for s, w in self.workdirs.items() if not w]
    if missing:
      raise ValueError(f"set the stage-1 checkpoint of every fused sensor: missing "
                       f"{', '.join(f'--config.{s}_workdir' for s in missing)}")
    ae_cfgs = {s: stage1_model_config(w) for s, w in self.workdirs.items()}
    model_cfg = dict(config.model.to_dict(), sensors=self.sensors, autoencoders=ae_cfgs)
    self.model = fusion_lib.fusion_from_config(model_cfg)
    fills = {s: cfg.get("fill", "window") for s, cfg in ae_cfgs.items()}
    if len(set(fills.values())) != 1:
      raise ValueError("the stage-1 checkpoints were trained with different input fills (model.fill): "
                       + ", ".join(f"{s}: {f!r} ({self.workdirs[s]})" for s, f in fills.items()))
    self.fill = self.model.fill
    self.freeze = config.freeze_encoders
    self.reference_loss = config.loss.reference
    self.loss_weights = {s: dict(sensors.get(s).fusion_loss) for s in self.sensors}
    self.channels = {s: int(ae_cfgs[s]["channels"]) for s in self.sensors}

  def model_config(self) -> dict[str, Any]:
    return {"kind": "fusion", "model": fusion_lib.fusion_config(self.model),
            "stage1": {s: str(w) for s, w in self.workdirs.items()}}

  def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    from earthrep.tasks import _zeros_batch
    return _zeros_batch(self.channels, batch_size)

  # ------------------------------------------------------------------ params
  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    variables = self.model.init({"params": rng, "dropout": rng}, self.inputs(batch), self.offsets(batch),
                                train=False)
    return variables["params"]

  def restore_pretrained(self, params: Any) -> Any:
    params = dict(params)
    for s in self.sensors:
      (key,) = self.model.sensor_param_path(s)
      params[key] = checkpoint.load_params(self.workdirs[s], target=params[key])
      logging.info("restored the %s autoencoder from %s", s, checkpoint.find_params_dir(self.workdirs[s]))
    return params

  def trainable(self, params: Any) -> Any | None:
    if not self.freeze:
      return None
    frozen = {self.model.sensor_param_path(s)[0] for s in self.sensors}
    return {k: jax.tree.map(lambda _: k not in frozen, v) for k, v in params.items()}

  # ------------------------------------------------------------------ batches
  def inputs(self, batch: dict[str, jax.Array]) -> dict[str, tuple[jax.Array, jax.Array]]:
    return {s: (batch[f"{s}_x"], batch[f"{s}_gaps"]) for s in self.sensors}

  def offsets(self, batch: dict[str, jax.Array]) -> jax.Array:
    """(B, K) rows of the pair-position table: 0 for the reference sensor, `delta_days` for S2 (0 when
    S2 is fused without S1, as the any-day inference does)."""
    b = batch[f"{self.sensors[0]}_x"].shape[0]
    cols = []
    for s in self.sensors:
      spec = sensors.get(s)
      if spec.offset_key is None or spec.offset_from not in self.sensors:
        cols.append(jnp.zeros((b,), jnp.int32))
      else:
        cols.append(batch[spec.offset_key].reshape(b).astype(jnp.int32))
    return jnp.stack(cols, axis=1)

  def _apply(self, params, batch, *, train: bool, rng=None):
    if self.freeze:  # no gradient flows into the autoencoder weights at all
      frozen = {self.model.sensor_param_path(s)[0] for s in self.sensors}
      params = {k: jax.lax.stop_gradient(v) if k in frozen else v for k, v in params.items()}
    rngs = {"dropout": rng} if rng is not None else {}
    return self.model.apply({"params": params}, self.inputs(batch), self.offsets(batch), train=train,
                            rngs=rngs)

  # ------------------------------------------------------------------ objective
  def loss(self, params, batch, rng):
    out = self._apply(params, batch, train=True, rng=rng)
    terms = losses.fusion_loss(out["recon"], {s: batch[f"{s}_target"] for s in self.sensors},
                               {s: batch[f"{s}_target_mask"] for s in self.sensors},
                               weights=self.loss_weights, reference=self.reference_loss)
    return terms["total"], {f"loss/{k}": v for k, v in terms.items()}

  def eval_metrics(self, params, batch):
    out = self._apply(params, batch, train=False)

    def one(*args):
      recon, target, mask = ({s: a[None] for s, a in zip(self.sensors, group)} for group in
                             (args[:len(self.sensors)], args[len(self.sensors):2 * len(self.sensors)],
                              args[2 * len(self.sensors):]))
      return losses.fusion_loss(recon, target, mask, weights=self.loss_weights,
                                reference=self.reference_loss)

    per_sample = jax.vmap(one)(*[out["recon"][s] for s in self.sensors],
                               *[batch[f"{s}_target"] for s in self.sensors],
                               *[batch[f"{s}_target_mask"] for s in self.sensors])
    return {f"val/{k}": v for k, v in per_sample.items() if k != "val_metric"} | {
        "val_metric": per_sample["val_metric"]}
