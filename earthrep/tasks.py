"""Training tasks: a model plus its objective, as the trainer sees them (jeo-style task objects).

A task builds the Flax module from the config, initialises (or restores) params, says which params
are trainable, and computes the training loss and per-sample validation metrics from a batch dict
produced by `earthrep.data` (keys `{sensor}_x`, `{sensor}_mask`, `{sensor}_gaps`, `{sensor}_target`,
`{sensor}_target_mask`, `delta_days`, and `weight` in evaluation batches). Dimension letters:
b batch, t time (11), h w space (15), c channels.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from earthrep import losses, schema
from earthrep.models import autoencoder


def _zeros_batch(sensors: dict[str, int], batch_size: int) -> dict[str, np.ndarray]:
  t, p = schema.PATCH_FRAMES, schema.PATCH_PX
  batch = {}
  for sensor, c in sensors.items():
    batch[f"{sensor}_x"] = np.zeros((batch_size, t, p, p, c), np.float32)
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
    return _zeros_batch({self.sensor: self.channels}, batch_size)

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    s = self.sensor
    variables = self.model.init({"params": rng, "dropout": rng}, batch[f"{s}_x"], batch[f"{s}_gaps"],
                                train=False)
    return variables["params"]

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


def make_task(config: ml_collections.ConfigDict):
  kind = config.get("task", "autoencoder")
  if kind == "autoencoder":
    return AutoencoderTask(config)
  if kind == "fusion":
    from earthrep import fusion_task  # stage 2, built on the stage-1 checkpoints
    return fusion_task.FusionTask(config)
  raise ValueError(f"config.task={kind!r}: expected 'autoencoder' or 'fusion'")
