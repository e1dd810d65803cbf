"""Training tasks: a model plus its objective, as the trainer sees them (jeo-style task objects).

A task builds the Flax module from the config, initialises (or restores) params, says which params
are trainable, and computes the training loss and per-sample validation metrics from a batch dict
produced by `earthrep.data` (keys `{sensor}_x`, `{sensor}_mask`, `{sensor}_gaps`, `{sensor}_target`,
`{sensor}_target_mask`, `delta_days`, and `weight` in evaluation batches).
* `AutoencoderTask` (stage 1): one sensor's context-aware autoencoder trained to reconstruct its patches.
* `FusionTask` (stage 2): the stage-1 autoencoders of several sensors fused. Each sensor's TransformerAE
  (encoder and decoder) is rebuilt from `model_config.json` of its stage-1 workdir (or converted
  checkpoint) given as `config.<sensor>_workdir`, and its params are restored from that checkpoint's best
  step into the fusion params tree; any structure, shape or dtype mismatch raises listing the keys. With
  `freeze_encoders=True` (default, as the paper describes) every autoencoder parameter is frozen:
  gradients are stopped before them and the optimiser keeps no state for them, so only the fusion layers
  and heads train. `freeze_encoders=False` fine-tunes everything, as the released scripts do. The
  objective is the reference fusion loss (per-sensor weights from the sensor registry); the selection
  metric is the mean of the per-sensor centre-pixel errors.
Dimension letters: b batch, t time (11), h w space (15), c channels.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from earthrep import schema, sensors
from earthrep.io import checkpoint
from earthrep.models import autoencoder
from earthrep.models import fusion as fusion_lib
from earthrep.models.params import abstract_params
from earthrep.training import losses


def zeros_batch(channels: dict[str, int], batch_size: int) -> dict[str, np.ndarray]:
  """A batch of zeros with the model inputs of the given sensors (sensor -> channels), for init."""
  t, p = schema.PATCH_FRAMES, schema.PATCH_PX
  batch = {}
  for sensor, c in channels.items():
    batch[f"{sensor}_x"] = np.zeros((batch_size, t, p, p, c), np.float32)
    batch[f"{sensor}_mask"] = np.ones((batch_size, t, p, p, c), bool)
    batch[f"{sensor}_gaps"] = np.ones((batch_size, t - 1), np.int32)
  batch["delta_days"] = np.zeros((batch_size, 1), np.int32)
  return batch


def _per_sample(loss_kwargs: dict, out_BTHWC, target_BTHWC, mask_BTHWC) -> dict[str, jax.Array]:
  """The context-aware loss of every sample on its own (exact weighting with padded batches)."""
  def one(o, x, m):
    return losses.context_aware_loss(o[None], x[None], m[None], **loss_kwargs)
  return jax.vmap(one)(out_BTHWC, target_BTHWC, mask_BTHWC)


class AutoencoderTask:
  """Stage 1: one sensor's context-aware autoencoder trained to reconstruct its patches."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.sensor = config.sensor
    self.model = autoencoder.ae_from_config(config.model)
    self.loss_kwargs = dict(config.loss)
    self.channels = config.model.channels
    self._model_cfg = config.model.to_dict()
    self.fill = self.model.fill

  def model_config(self) -> dict[str, Any]:
    return {"kind": "autoencoder", "sensor": self.sensor, "model": self._model_cfg}

  def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    return zeros_batch({self.sensor: self.channels}, batch_size)

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    s = self.sensor
    variables = self.model.init({"params": rng}, batch[f"{s}_x"], batch[f"{s}_gaps"], train=False)
    return variables["params"]

  def restore_pretrained(self, params: Any) -> Any:
    return params   # stage 1 starts from its own initialisation

  def trainable(self, params: Any) -> Any | None:
    return None  # everything trains in stage 1

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    s = self.sensor
    recon, _ = self.model.apply({"params": params}, batch[f"{s}_x"], batch[f"{s}_gaps"], train=True,
                                rngs={"dropout": rng})
    terms = losses.context_aware_loss(recon, batch[f"{s}_target"], batch[f"{s}_target_mask"],
                                      **self.loss_kwargs)
    return terms["total"], {f"loss/{k}": v for k, v in terms.items()}

  def eval_metrics(self, params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-sample metrics (b,); `val_metric` is the reference's selection metric (centre MAE)."""
    s = self.sensor
    recon, _ = self.model.apply({"params": params}, batch[f"{s}_x"], batch[f"{s}_gaps"], train=False)
    terms = _per_sample(self.loss_kwargs, recon, batch[f"{s}_target"], batch[f"{s}_target_mask"])
    out = {f"val/{k}": v for k, v in terms.items()}
    out["val_metric"] = terms["center"]
    return out


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
    try:
      self.fill = self.model.fill
    except ValueError as e:
      raise ValueError(f"{e} (stage-1 checkpoints: "
                       + ", ".join(f"{s} {w}" for s, w in self.workdirs.items()) + ")") from None
    self.freeze = config.freeze_encoders
    self.reference_loss = config.loss.reference
    self.centre_weight = float(config.loss.get("centre_weight", 1.0))
    self.loss_weights = {s: dict(sensors.get(s).fusion_loss) for s in self.sensors}
    self.channels = {s: int(ae_cfgs[s]["channels"]) for s in self.sensors}

  def model_config(self) -> dict[str, Any]:
    return {"kind": "fusion", "model": fusion_lib.fusion_config(self.model),
            "stage1": {s: str(w) for s, w in self.workdirs.items()}}

  def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    return zeros_batch(self.channels, batch_size)

  # ------------------------------------------------------------------ params
  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    inputs, offsets, valid = fusion_batch(self.model, batch)
    variables = self.model.init({"params": rng}, inputs, offsets, train=False, valid=valid)
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

  def _apply(self, params, batch, *, train: bool, rng=None):
    if self.freeze:  # no gradient flows into the autoencoder weights at all
      frozen = {self.model.sensor_param_path(s)[0] for s in self.sensors}
      params = {k: jax.lax.stop_gradient(v) if k in frozen else v for k, v in params.items()}
    rngs = {"dropout": rng} if rng is not None else {}
    inputs, offsets, valid = fusion_batch(self.model, batch)
    return self.model.apply({"params": params}, inputs, offsets, train=train, rngs=rngs, valid=valid)

  # ------------------------------------------------------------------ objective
  def loss(self, params, batch, rng):
    out = self._apply(params, batch, train=True, rng=rng)
    terms = losses.fusion_loss(out["recon"], {s: batch[f"{s}_target"] for s in self.sensors},
                               {s: batch[f"{s}_target_mask"] for s in self.sensors},
                               weights=self.loss_weights, reference=self.reference_loss,
                               centre=out.get("centre"), centre_weight=self.centre_weight)
    return terms["total"], {f"loss/{k}": v for k, v in terms.items()}

  def eval_metrics(self, params, batch):
    out = self._apply(params, batch, train=False)

    def one(recon, target, mask, centre):
      first = lambda d: {s: a[None] for s, a in d.items()}   # noqa: E731
      return losses.fusion_loss(first(recon), first(target), first(mask), weights=self.loss_weights,
                                reference=self.reference_loss, centre=first(centre),
                                centre_weight=self.centre_weight)

    per_sample = jax.vmap(one)(out["recon"], {s: batch[f"{s}_target"] for s in self.sensors},
                               {s: batch[f"{s}_target_mask"] for s in self.sensors}, out.get("centre", {}))
    return {f"val/{k}": v for k, v in per_sample.items() if k != "val_metric"} | {
        "val_metric": per_sample["val_metric"]}


def fusion_batch(model: fusion_lib.FusionModel, batch: dict[str, Any], xp: Any = jnp
                 ) -> tuple[dict[str, tuple[Any, Any]], Any, dict[str, Any] | None]:
  """(inputs, offsets, valid) of a loader batch for `FusionModel.apply`: sensor -> (x, gaps), the (B, K)
  rows of the pair-position table (`sensors.fusion_offsets`, in `xp`) and, for anchored centre heads, the
  validity of each sensor's centre pixel series (B, T, C) from the loader's masks (else None)."""
  inputs = {s: (batch[f"{s}_x"], batch[f"{s}_gaps"]) for s in model.sensors}
  offsets = sensors.fusion_offsets(model.sensors, batch, batch[f"{model.sensors[0]}_x"].shape[0], xp)
  valid = ({s: batch[f"{s}_mask"][:, :, schema.CENTRE_PX, schema.CENTRE_PX] for s in model.sensors}
           if model.centre_anchor else None)
  return inputs, offsets, valid


def load_fusion(model_dir: str, error: type[Exception] = checkpoint.CheckpointError) -> tuple[Any, Any]:
  """(FusionModel, params) from a fusion workdir (`best/<step>`) or model directory (`0/`: converted or
  refitted); a model_config.json of another kind raises `error`."""
  cfg = checkpoint.read_model_config(model_dir)
  if cfg.get("kind") != "fusion":
    raise error(f"{model_dir}: model_config.json: kind {cfg.get('kind')!r}, expected 'fusion'")
  model = fusion_lib.fusion_from_config(cfg["model"])
  return model, checkpoint.load_params(model_dir, target=abstract_params(model))


def make_task(config: ml_collections.ConfigDict):
  kind = config.get("task", "autoencoder")
  if kind == "autoencoder":
    return AutoencoderTask(config)
  if kind == "fusion":
    return FusionTask(config)
  raise ValueError(f"config.task={kind!r}: expected 'autoencoder' or 'fusion'")
