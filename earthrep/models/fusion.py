"""Sensor-generic fusion of per-sensor autoencoders (`FusedS1S2` of ARCHITECTURE.md section e).

Each sensor keeps a whole `TransformerAE` as the submodule `ae_<sensor>`, so a stage-1 AE params tree is
a verbatim subtree of the fusion params (`sensor_param_path`). Each encoder's code z_k is projected to a
d_model token; token k gets the type-embedding row k and the pair-position row `offsets_BK[:, k]`
(divided by sqrt(d_model); the reference uses offsets [0, delta_days] for [S1, S2]). Two pre-norm
transformer layers mix the tokens, their mean is layer-normed and reduced to the fused embedding `zf`
(Softplus). Per-sensor linear heads map zf back to each bottleneck and the sensors' own decoders
reconstruct the patches. The reference's `bottleneck_expander` (7 -> 128) is never used in its forward
pass and has no counterpart here. Intermediates are sown into `'intermediates'`.

earthrep's options (off in the reference and the full-size configs):
* `centre_head`: a small MLP per sensor adds a correction from zf to the decoder's centre pixel of the
  centre frame (output layer zero at init): the model's answer for that pixel and day. Through the frozen
  decoders alone that answer is bounded by what a 7 -> Z linear map into a code made for whole patches
  can express.
* `pixel_token`: each sensor's centre pixel series (its filled input at the centre pixel in every frame,
  and the frames' days relative to the centre) enters the fuser as one more token per sensor, so the
  embedding sees its own pixel's observations beside the frozen codes
  (`benchmarks/results/anyday_gaps.md`).
* `centre_anchor` (with `centre_head`): the head corrects the linear interpolation in time of the centre
  pixel's own valid values (`interpolate_centre`) instead of the decoder's centre pixel, and reads, beside
  zf, the interpolation's values and distances and every sensor's centre pixel series (valid values,
  validity, days). It needs the validity of each sensor's centre pixel series
  (`valid`, from the loader's `<sensor>_mask`): filled values cannot tell a cloud from an observation. At
  init the answer is the interpolation, so the model starts where the any-day baseline is.

Dimension letters: B batch, K sensors (tokens), D fusion d_model, Y fused bottleneck, Z sensor bottleneck,
T frames, G = T - 1 gaps, H/W rows/columns, C channels.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from earthrep.models import blocks
from earthrep.models.autoencoder import TransformerAE, ae_config, ae_from_config, frame_positions
from earthrep.schema import CENTRE_FRAME, CENTRE_PX, FUSION_MAX_POSITION

SensorInputs = Mapping[str, tuple[jax.Array, jax.Array]]   # sensor -> (x_BTHWC, time_gaps_BG)
DAY_UNIT = 100.0   # day distances enter the pixel tokens and the anchored centre heads in units of 100 days


def relative_days(gaps_BG: jax.Array) -> jax.Array:
  """(B, T) float32: each frame's day minus the centre frame's, from the frames' day gaps."""
  days_BT = frame_positions(gaps_BG)
  return (days_BT - days_BT[:, CENTRE_FRAME:CENTRE_FRAME + 1]).astype(jnp.float32)


def interpolate_centre(centre_BTC: jax.Array, valid_BTC: jax.Array, gaps_BG: jax.Array
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per channel, the linear interpolation at the centre frame's day of the valid values of a pixel series
  (B, T, C): between the last valid frame at or before the centre frame's day and the first at or after it
  (the centre's own value when it is valid), the one valid side's value when only one side has one.
  Returns (value_BC, ok_BC: some frame is valid, features_BF: [value, before, after, days before / 100,
  days after / 100, ok] per channel, zeros where a side is missing)."""
  rel_BT1 = relative_days(gaps_BG)[:, :, None]
  valid_BTC = jnp.asarray(valid_BTC, bool)
  far = jnp.float32(1e9)

  def side(mask_BTC, key_BTC):   # the valid frame of the side that maximises key, its value and day
    index_B1C = jnp.argmax(jnp.where(mask_BTC, key_BTC, -far), axis=1)[:, None]
    value_BC = jnp.take_along_axis(centre_BTC, index_B1C, axis=1)[:, 0]
    day_BC = jnp.take_along_axis(jnp.broadcast_to(rel_BT1, mask_BTC.shape), index_B1C, axis=1)[:, 0]
    has_BC = mask_BTC.any(axis=1)
    return jnp.where(has_BC, value_BC, 0.0), jnp.where(has_BC, day_BC, 0.0), has_BC

  rel_BTC = jnp.broadcast_to(rel_BT1, valid_BTC.shape)
  v_b, d_b, has_b = side(valid_BTC & (rel_BTC <= 0), rel_BTC)
  v_a, d_a, has_a = side(valid_BTC & (rel_BTC >= 0), -rel_BTC)
  span = d_a - d_b
  w_a = jnp.where(span > 0, -d_b / jnp.where(span > 0, span, 1.0), 0.5)
  both = v_b + w_a * (v_a - v_b)
  value = jnp.where(has_b & has_a, both, jnp.where(has_b, v_b, v_a))
  ok = has_b | has_a
  features = jnp.concatenate([value, v_b, v_a, -d_b / DAY_UNIT, d_a / DAY_UNIT,
                              ok.astype(jnp.float32)], axis=1)
  return value, ok, features


class FusionModel(nn.Module):
  """Fuses the codes of `autoencoders` (one per entry of `sensors`, same order)."""
  autoencoders: tuple[TransformerAE, ...]
  sensors: tuple[str, ...] = ("s1", "s2")
  bottleneck: int = 7
  d_model: int = 128
  heads: int = 4
  ffn: int = 256
  layers: int = 2
  max_position: int = FUSION_MAX_POSITION
  dropout: float = 0.1
  centre_head: bool = False
  pixel_token: bool = False
  centre_anchor: bool = False

  def setup(self):
    if len(self.autoencoders) != len(self.sensors):
      raise ValueError(f"{len(self.autoencoders)} autoencoders for sensors {self.sensors}")
    if self.centre_anchor and not self.centre_head:
      raise ValueError("centre_anchor anchors the centre heads: it needs centre_head=True")
    for sensor, ae in zip(self.sensors, self.autoencoders):
      setattr(self, f"ae_{sensor}", ae.clone())
      setattr(self, f"proj_{sensor}", nn.Dense(self.d_model))
      setattr(self, f"head_{sensor}", nn.Dense(ae.bottleneck))
      if self.centre_head:
        setattr(self, f"centre_{sensor}", blocks.Mlp(self.d_model, ae.channels, zero_out=True))
      if self.pixel_token:
        setattr(self, f"pixel_{sensor}", blocks.Mlp(self.d_model, self.d_model))
    self.type_embed = nn.Embed(len(self.sensors), self.d_model)
    self.pair_pos = nn.Embed(self.max_position + 1, self.d_model)
    self.fuser = blocks.TransformerStack(self.layers, self.d_model, self.heads, self.ffn, self.dropout,
                                         norm_first=True)
    self.norm_out = blocks.layer_norm("norm_out")
    self.bottleneck_reducer = nn.Dense(self.bottleneck)

  @property
  def fill(self) -> str:
    """The input fill mode of the autoencoders (`schema.FILL_MODES`); they must agree (raises ValueError)."""
    modes = {ae.fill for ae in self.autoencoders}
    if len(modes) != 1:
      fills = ", ".join(f"{s}: {ae.fill!r}" for s, ae in zip(self.sensors, self.autoencoders))
      raise ValueError(f"the autoencoders were trained with different input fills ({fills}); retrain one so "
                       "they agree")
    return modes.pop()

  def sensor_param_path(self, sensor: str) -> tuple[str, ...]:
    """Path of `sensor`'s TransformerAE params inside the fusion params tree (below 'params')."""
    if sensor not in self.sensors:
      raise KeyError(f"unknown sensor {sensor!r}; this model fuses {self.sensors}")
    return (f"ae_{sensor}",)

  def _ae(self, sensor: str) -> TransformerAE:
    return getattr(self, f"ae_{sensor}")

  def _inputs(self, inputs: SensorInputs, sensor: str) -> tuple[jax.Array, jax.Array]:
    if sensor not in inputs:
      raise KeyError(f"inputs lack sensor {sensor!r}; got {sorted(inputs)}")
    return inputs[sensor]

  def _pixel_tokens(self, pixels: Mapping[str, tuple[jax.Array, jax.Array]]) -> list[jax.Array]:
    """One token per sensor from its centre pixel's filled series (B, T, C) and the frames' days relative
    to the centre frame (from the gaps (B, G), in 100-day units)."""
    tokens = []
    for s in self.sensors:
      centre_BTC, gaps_BG = pixels[s]
      rel_BT = relative_days(gaps_BG) / DAY_UNIT
      flat = jnp.concatenate([centre_BTC.reshape(centre_BTC.shape[0], -1), rel_BT], axis=1)
      tokens.append(getattr(self, f"pixel_{s}")(flat))
    return tokens

  def _fuse(self, z: dict[str, jax.Array], offsets_BK: jax.Array, *, train: bool,
            pixels: Mapping[str, tuple[jax.Array, jax.Array]] | None = None) -> jax.Array:
    tokens_BKD = jnp.stack([getattr(self, f"proj_{s}")(z[s]) for s in self.sensors], axis=1)
    tokens_BKD = (tokens_BKD + self.type_embed(jnp.arange(len(self.sensors)))
                  + self.pair_pos(jnp.asarray(offsets_BK, jnp.int32)) / math.sqrt(self.d_model))
    if self.pixel_token:
      if pixels is None:
        raise ValueError("this fusion model has pixel tokens: it needs each sensor's centre pixel series")
      tokens_BKD = jnp.concatenate([tokens_BKD, jnp.stack(self._pixel_tokens(pixels), axis=1)], axis=1)
    self.sow("intermediates", "fuser_in", tokens_BKD)
    tokens_BKD = self.fuser(tokens_BKD, train=train)
    self.sow("intermediates", "fuser_out", tokens_BKD)
    pooled_BD = jnp.mean(tokens_BKD, axis=1)
    self.sow("intermediates", "pooled", pooled_BD)
    normed_BD = self.norm_out(pooled_BD)
    self.sow("intermediates", "pooled_normed", normed_BD)
    return blocks.softplus(self.bottleneck_reducer(normed_BD))

  def _pixels(self, inputs: SensorInputs) -> dict[str, tuple[jax.Array, jax.Array]] | None:
    if not self.pixel_token:
      return None
    pixels = {}
    for s in self.sensors:
      x_BTHWC, gaps_BG = self._inputs(inputs, s)
      pixels[s] = (x_BTHWC[:, :, CENTRE_PX, CENTRE_PX, :], gaps_BG)
    return pixels

  def _codes(self, inputs: SensorInputs, *, train: bool) -> dict[str, jax.Array]:
    return {s: self._ae(s).encode(*self._inputs(inputs, s), train=train) for s in self.sensors}

  def embed(self, inputs: SensorInputs, offsets_BK: jax.Array, *, train: bool = False) -> jax.Array:
    """The fused embedding zf (B, Y) without running the decoders."""
    return self._fuse(self._codes(inputs, train=train), offsets_BK, train=train, pixels=self._pixels(inputs))

  def embed_from_features(self, features: SensorInputs, offsets_BK: jax.Array, *,
                          train: bool = False) -> dict[str, Any]:
    """The embeddings from each sensor's per-frame conv features (`TransformerAE.conv_features`), given as
    sensor -> (f_BTHWC, time_gaps_BG), or (f_BTHWC, time_gaps_BG, centre_BTC) for an autoencoder with
    `centre_path` and for every sensor of a model with `pixel_token` (the filled centre pixel of each frame): {'zf': (B, Y), 'z': {s: (B, Z_s)}} (the fused
    embedding and each sensor's own autoencoder code). The feature-cube fast path computes each frame's
    features once."""
    z, pixels = {}, {}
    for s in self.sensors:
      f, gaps, *centre = self._inputs(features, s)
      ae = self._ae(s)
      if (ae.centre_path or self.pixel_token) and not centre:
        raise ValueError(f"{s}: this model reads the centre pixel (centre path or pixel token): give "
                         "(f_BTHWC, time_gaps_BG, centre_BTC)")
      z[s] = ae.encode_features(f, gaps, train=train, centre_BTC=centre[0] if ae.centre_path else None)
      if self.pixel_token:
        pixels[s] = (centre[0], gaps)
    return {"zf": self._fuse(z, offsets_BK, train=train, pixels=pixels or None), "z": z}

  def __call__(self, inputs: SensorInputs, offsets_BK: jax.Array, *, train: bool,
               valid: Mapping[str, jax.Array] | None = None) -> dict[str, Any]:
    """Returns {'zf': (B, Y), 'z': {s: (B, Z_s)}, 'b': {s: (B, Z_s)}, 'recon': {s: (B, T, H, W, C_s)}},
    and with `centre_head` 'centre': {s: (B, C_s)}, the head's centre pixel of the centre frame. `valid`
    (sensor -> (B, T, C) bool, whether each frame's centre pixel value was valid before filling) is
    required with `centre_anchor` and unused otherwise."""
    out = self._reconstruct(inputs, offsets_BK, train=train)
    if self.centre_head:
      out["centre"] = {s: base_BC + getattr(self, f"centre_{s}")(head_in_BD)
                       for s, (base_BC, head_in_BD) in self._centre_parts(out, inputs, valid).items()}
    return out

  def _reconstruct(self, inputs: SensorInputs, offsets_BK: jax.Array, *, train: bool) -> dict[str, Any]:
    z = self._codes(inputs, train=train)
    zf_BY = self._fuse(z, offsets_BK, train=train, pixels=self._pixels(inputs))
    b = {s: getattr(self, f"head_{s}")(zf_BY) for s in self.sensors}
    recon = {s: self._ae(s).decode(b[s], self._inputs(inputs, s)[1], train=train) for s in self.sensors}
    return {"zf": zf_BY, "z": z, "b": b, "recon": recon}

  def _centre_parts(self, out: dict[str, Any], inputs: SensorInputs, valid: Mapping[str, jax.Array] | None
                    ) -> dict[str, tuple[jax.Array, jax.Array]]:
    """sensor -> (base_BC, head_in_BD) for the centre heads, whose answer is `base_BC + centre_<s>(head_in_BD)`:
    the decoder's centre pixel of the centre frame and zf, or with `centre_anchor` the interpolation of the
    valid centre pixel values (the decoder's answer for a channel without any) and zf with the
    interpolation's features and every sensor's valid series (built once for all the heads)."""
    series = [self._valid_series(s, inputs, valid) for s in self.sensors] if self.centre_anchor else []
    parts = {}
    for s in self.sensors:
      decoded_BC = out["recon"][s][:, CENTRE_FRAME, CENTRE_PX, CENTRE_PX]
      if not self.centre_anchor:
        parts[s] = (decoded_BC, out["zf"])
        continue
      x_BTHWC, gaps_BG = self._inputs(inputs, s)
      value_BC, ok_BC, features_BF = interpolate_centre(x_BTHWC[:, :, CENTRE_PX, CENTRE_PX], valid[s], gaps_BG)
      head_in_BD = jnp.concatenate([out["zf"], features_BF, *series], axis=1)
      parts[s] = (jnp.where(ok_BC, value_BC, decoded_BC), head_in_BD)
    return parts

  def centre_parts(self, inputs: SensorInputs, offsets_BK: jax.Array, *,
                   valid: Mapping[str, jax.Array] | None = None) -> dict[str, tuple[jax.Array, jax.Array]]:
    """sensor -> (base_BC, head_in_BD) of a model with `centre_head` (inference mode), without running the
    heads: its centre answer is `base_BC + centre_<sensor>(head_in_BD)`. `earthrep.training.head_refit`
    fits the heads on them."""
    if not self.centre_head:
      raise ValueError("centre_parts: this fusion model has no centre heads (centre_head=False)")
    return self._centre_parts(self._reconstruct(inputs, offsets_BK, train=False), inputs, valid)

  def _valid_series(self, sensor: str, inputs: SensorInputs, valid: Mapping[str, jax.Array] | None
                    ) -> jax.Array:
    """(B, T * (C + 1) + T): a sensor's centre pixel values where valid (0 elsewhere), their validity and
    the frames' days relative to the centre frame (in DAY_UNIT)."""
    if valid is None or sensor not in valid:
      raise ValueError(f"this fusion model anchors its centre heads on the interpolation of the centre "
                       f"pixel: it needs valid[{sensor!r}], the (B, T, C) validity of the centre pixel series")
    x_BTHWC, gaps_BG = self._inputs(inputs, sensor)
    valid_BTC = jnp.asarray(valid[sensor], bool)
    values_BTC = jnp.where(valid_BTC, x_BTHWC[:, :, CENTRE_PX, CENTRE_PX], 0.0)
    rel_BT = relative_days(gaps_BG) / DAY_UNIT
    b = values_BTC.shape[0]
    return jnp.concatenate([values_BTC.reshape(b, -1), valid_BTC.reshape(b, -1).astype(jnp.float32), rel_BT],
                           axis=1)


FUSION_FIELDS = ("sensors", "bottleneck", "d_model", "heads", "ffn", "layers", "max_position", "dropout",
                 "centre_head", "pixel_token", "centre_anchor")


def fusion_from_config(cfg: Mapping[str, Any]) -> FusionModel:
  """Builds a FusionModel; `cfg.autoencoders` maps each sensor to a TransformerAE config."""
  cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  unknown = sorted(set(cfg) - set(FUSION_FIELDS) - {"autoencoders", "kind"})
  if unknown:
    raise ValueError(f"unknown FusionModel config field(s) {unknown}; known: {list(FUSION_FIELDS)}")
  sensors = tuple(cfg.get("sensors", ("s1", "s2")))
  ae_cfgs = cfg.get("autoencoders") or {}
  missing = [s for s in sensors if s not in ae_cfgs]
  if missing:
    raise ValueError(f"fusion config lacks autoencoders for sensor(s) {missing}")
  kwargs = {k: cfg[k] for k in FUSION_FIELDS if k in cfg and k != "sensors"}
  return FusionModel(autoencoders=tuple(ae_from_config(ae_cfgs[s]) for s in sensors),
                     sensors=sensors, **kwargs)


def fusion_config(model: FusionModel) -> dict[str, Any]:
  """JSON-able dict of the model fields (inverse of `fusion_from_config`)."""
  cfg: dict[str, Any] = {k: getattr(model, k) for k in FUSION_FIELDS}
  cfg["sensors"] = list(model.sensors)
  cfg["autoencoders"] = {s: ae_config(ae) for s, ae in zip(model.sensors, model.autoencoders)}
  return cfg
