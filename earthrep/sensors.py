"""Sensor registry: what the code needs to know about each sensor, in one place.

A sensor is described by its bands, how its values are scaled to [0, 1], its stage-1 autoencoder sizes
(channels, bottleneck, reduced tokens), its loss weights in the fusion stage, and which batch key gives its
token's position in the fusion time table (days from the reference sensor; S1 is the reference, S2 sits at
`delta_days`: `fusion_offsets`). Every other module reads these from here (configs, losses, the checkpoint
converter, parity, the embedders, benchmarks). Adding a sensor = `register(Sensor(...))`, shards with
`<name>_x/_mask/_gaps` keys, a stage-1 run with `training.configs.stage1_config(name, ...)`, and a fusion
run listing it in `config.sensors`; no S1/S2 code changes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from earthrep import schema

# The stage-1 objective of the released code, for every sensor: masked MAE only (ARCHITECTURE.md d).
STAGE1_LOSS: dict[str, float] = dict(lambda_mae=1.0, lambda_ssim=0.0, lambda_sam=0.0, center_mae=1.0)


@dataclasses.dataclass(frozen=True)
class Sensor:
  name: str
  bands: tuple[str, ...]
  scaling: str
  stage1: dict                        # channels, bottleneck, reduced_tokens of its autoencoder
  fusion_loss: dict                   # lambda_mae, lambda_ssim, lambda_sam, center_mae
  offset_key: str | None = None       # batch key (B, 1) with its fusion time-table row; None -> row 0
  offset_from: str | None = None      # the sensor that offset is measured from; row 0 without it

  @property
  def channels(self) -> int:
    return len(self.bands)


_REGISTRY: dict[str, Sensor] = {}


def register(sensor: Sensor) -> Sensor:
  if sensor.stage1["channels"] != sensor.channels:
    raise ValueError(f"sensor {sensor.name!r}: stage1 channels {sensor.stage1['channels']} != "
                     f"{sensor.channels} bands")
  _REGISTRY[sensor.name] = sensor
  return sensor


def unregister(name: str) -> None:
  """Removes a sensor (a test's or a notebook's temporary one); registered sensors are otherwise permanent."""
  _REGISTRY.pop(name, None)


def get(name: str) -> Sensor:
  if name not in _REGISTRY:
    raise KeyError(f"unknown sensor {name!r}; registered: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def names() -> list[str]:
  return sorted(_REGISTRY)


def fusion_offsets(sensor_names: Sequence[str], values: Mapping[str, Any], batch_size: int, xp: Any = np) -> Any:
  """(B, K) int32 rows of the fusion pair-position table, one column per fused sensor (in order).

  A sensor with an `offset_key` whose `offset_from` sensor is fused too takes `values[offset_key]` (S2:
  `delta_days`, its days from S1); every other column is 0 (the reference sensor, and S2 fused without S1,
  as the S2-only any-day model is). `xp` is numpy or jax.numpy.
  """
  cols = []
  for name in sensor_names:
    spec = get(name)
    if spec.offset_key is not None and spec.offset_from in sensor_names:
      cols.append(xp.asarray(values[spec.offset_key]).reshape(batch_size).astype(xp.int32))
    else:
      cols.append(xp.zeros((batch_size,), xp.int32))
  return xp.stack(cols, axis=1)


register(Sensor(
    name="s1", bands=schema.S1_BANDS,
    scaling="gamma0 linear power -> 3-sample centred rolling mean -> dB clipped to [-30, 5] -> (dB+30)/35",
    stage1=dict(channels=2, bottleneck=2, reduced_tokens=7),
    fusion_loss=dict(lambda_mae=1.0, lambda_ssim=0.0, lambda_sam=0.0, center_mae=1.5)))
register(Sensor(
    name="s2", bands=schema.S2_BANDS,
    scaling="L2A surface reflectance clipped to [0, 1]; invalid where the cloud mask is not clear",
    # 6 reduced tokens as the released fusion checkpoint needs (train_modality.py used 7).
    stage1=dict(channels=10, bottleneck=9, reduced_tokens=6),
    fusion_loss=dict(lambda_mae=0.665, lambda_ssim=0.02, lambda_sam=0.315, center_mae=1.75),
    offset_key="delta_days", offset_from="s1"))
