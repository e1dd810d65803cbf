"""The per-sensor context-aware autoencoder (`TransformerAE`, ARCHITECTURE.md section b) in Flax Linen.

A 15x15x11 patch is encoded frame by frame by a convolutional attention stack (frames folded into the
batch, NHWC) to one d_model token per frame (4 x 4 x d_model/16, flattened channel-major `c*16 + h*4 + w`
as the NCHW reference does, so converted reference weights work unchanged). A learned time table indexed
by the day position of each frame is added, a temporal transformer mixes the tokens, and linear layers
reduce 11 x d_model to `reduced_tokens` x `token_dim` and then to the `bottleneck` code z (Softplus). The
decoder mirrors this; the transformer and the time table are one instance shared by encoder and decoder.
With `reference_batch_mixing=True` the encoder transformer attends across the samples of the batch (frames
act as the batch), which reproduces the reference (to float32 rounding) but makes z depend on the other
samples; the default attends over the 11 frames of each sample. `fill` records how the inputs are
NaN-filled ("window" as the reference, "frame" the earthrep default; `earthrep.data.preprocess.fill_patches`).
With `centre_path=True` (earthrep's `runlocal` recipes; not in the reference) the centre pixel's own filled
series also enters the frame tokens and the decoder's frame tokens also write the centre pixel of the
output, so the code need not recover that pixel from a 4x4 grid that blends it with its neighbours.
`encode` = `encode_features(conv_features(x))`; the embedders call the two halves separately to reuse
per-frame features. Dropout uses the `'dropout'` RNG stream. Intermediates are sown into `'intermediates'`.

Dimension letters: B batch, T frames (11), G = T - 1 time gaps, H/W rows/columns, C channels, N = B*T
folded images, D d_model, F token_dim, R reduced tokens, Z bottleneck.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from earthrep.models import blocks
from earthrep.schema import AE_MAX_POSITION, CENTRE_PX, PATCH_FRAMES, PATCH_PX, check_fill

TOKEN_PX = 4   # 15 -> 7 (conv1) -> 4 (conv2)


def frame_positions(time_gaps_BG: jax.Array) -> jax.Array:
  """Day position of every frame: [0, cumsum(gaps)] -> (B, T) int32."""
  gaps = jnp.asarray(time_gaps_BG, jnp.int32)
  return jnp.concatenate([jnp.zeros_like(gaps[:, :1]), jnp.cumsum(gaps, axis=1)], axis=1)


class ConvEncoder(nn.Module):
  """conv0 1x1, block1 (+pool residual), conv1 2x2/2, block2 (+pool residual), conv2 2x2/2 pad 1, block3.

  `from_block1(a0, fused)` runs everything after block 1's 1x1 fusion, given conv0's pre-activation and
  that fusion's pre-activation: the entry point of the feature-cube fast path (`models.crop_share`), which
  computes those two for many overlapping crops at once."""
  widths: tuple[int, int, int]
  token_channels: int
  dropout: float
  conv_impl: str = "auto"

  def setup(self):
    w0, w1, w2 = self.widths
    self.conv0 = nn.Dense(w0)
    self.block1 = blocks.MultiScaleAttentionBlock(w0, (3, 7), 8, self.conv_impl)
    self.conv1 = nn.Conv(w1, (2, 2), strides=(2, 2), padding="VALID")                 # 15 -> 7
    self.block2 = blocks.ConvAttentionBlock(w1, 8, 7)
    self.conv2 = nn.Conv(w2, (2, 2), strides=(2, 2), padding=((1, 1), (1, 1)))          # 7 -> 4
    self.block3 = blocks.ConvAttentionBlock(self.token_channels, 2, 3)
    # Named as the compact form named them, so the dropout masks (keyed by module path) are unchanged.
    self.Dropout_0 = blocks.channel_dropout(self.dropout)
    self.Dropout_1 = blocks.channel_dropout(self.dropout)

  def __call__(self, x_NHWC: jax.Array, *, train: bool) -> jax.Array:
    a0_NHWC = self.conv0(x_NHWC)
    return self.from_block1(a0_NHWC, self.block1.fuse(blocks.silu(a0_NHWC)), train=train)

  def from_block1(self, a0_NHWC: jax.Array, fused_NHWC: jax.Array, *, train: bool) -> jax.Array:
    x = blocks.max_pool_residual(self.block1.from_fused(fused_NHWC), blocks.silu(a0_NHWC))
    x = self.Dropout_0(blocks.silu(self.conv1(x)), deterministic=not train)
    x = blocks.max_pool_residual(self.block2(x), x)
    x = self.Dropout_1(blocks.silu(self.conv2(x)), deterministic=not train)
    return self.block3(x)


class ConvDecoder(nn.Module):
  """block1 (+pool residual), convT 4->8, block2 (+pool residual), convT 8->15, block3, 2 refinement convs."""
  widths: tuple[int, int, int]
  channels: int
  dropout: float
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x_NHWC: jax.Array, *, train: bool) -> jax.Array:
    w0, w1, w2 = self.widths
    c = x_NHWC.shape[-1]
    x = blocks.max_pool_residual(blocks.ConvAttentionBlock(c, 8, 7, name="block1")(x_NHWC), x_NHWC)
    x = blocks.silu(blocks.ConvTranspose2x2(w2, name="conv1")(x))                  # 4 -> 8
    x = blocks.channel_dropout(self.dropout)(x, deterministic=not train)
    x = blocks.max_pool_residual(blocks.ConvAttentionBlock(w2, 8, 7, name="block2")(x), x)
    x = blocks.ConvTranspose2x2(w1, crop=1, name="upsample2")(x)                   # 8 -> 16 -> 15
    x = blocks.channel_dropout(self.dropout)(x, deterministic=not train)
    x = blocks.MultiScaleAttentionBlock(w0, (3, 7), 8, self.conv_impl, name="block3")(x)
    x = blocks.silu(blocks.conv(self.channels, 3, name="refine1")(x))
    return blocks.conv(self.channels, 3, name="refine2")(x)


class TransformerAE(nn.Module):
  """Context-aware autoencoder; `__call__`, `encode` and `decode` take `train` as keyword."""
  channels: int
  bottleneck: int
  reduced_tokens: int
  widths: tuple[int, int, int] = (149, 128, 64)
  d_model: int = 256
  token_dim: int = 16
  heads: int = 8
  ffn: int = 8
  layers: int = 3
  max_position: int = AE_MAX_POSITION
  frames: int = PATCH_FRAMES
  enc_dropout: float = 0.07
  dec_dropout: float = 0.1
  transformer_dropout: float = 0.25
  reference_batch_mixing: bool = False
  # How NaNs in the input were filled when this model was trained (`schema.FILL_MODES`): part of
  # the model's input contract, read by the loaders and the embedders; not used by the forward pass.
  fill: str = "window"
  # How the multi-scale blocks' 3x3/7x7 convolutions are computed (`models.kernels`): "auto" = FFT on CPU,
  # plain convolutions on accelerators; the same function either way (float32 rounding).
  conv_impl: str = "auto"
  # earthrep's centre path (not in the reference; off by default): the centre pixel's own series is
  # projected into the frame tokens (encoder) and read back from them for the centre pixel of the output
  # (decoder), around the 4x4 token grid that otherwise blends it with its 8 neighbours before the code.
  centre_path: bool = False

  def setup(self):
    if self.d_model % (TOKEN_PX * TOKEN_PX):
      raise ValueError(f"d_model={self.d_model} must be a multiple of {TOKEN_PX * TOKEN_PX}")
    self.token_channels = self.d_model // (TOKEN_PX * TOKEN_PX)
    # Out-of-range positions (> max_position) read NaN rows (jnp.take fill mode); the reference raises.
    self.time_table = nn.Embed(self.max_position + 1, self.d_model)
    self.transformer = blocks.TransformerStack(self.layers, self.d_model, self.heads, self.ffn,
                                               self.transformer_dropout, norm_first=False)
    self.conv_encoder = ConvEncoder(tuple(self.widths), self.token_channels, self.enc_dropout, self.conv_impl)
    self.encoder_linear = nn.Dense(self.token_dim)
    self.token_reducer = nn.Dense(self.reduced_tokens)
    self.bottleneck_reducer = nn.Dense(self.bottleneck)
    self.bottleneck_expander = nn.Dense(self.token_dim * self.reduced_tokens)
    self.token_upsampler = nn.Dense(self.frames)
    self.decoder_linear = nn.Dense(self.d_model)
    self.conv_decoder = ConvDecoder(tuple(self.widths), self.channels, self.dec_dropout, self.conv_impl)
    if self.centre_path:
      self.centre_in = nn.Dense(self.d_model)
      self.centre_out = nn.Dense(self.channels, kernel_init=nn.initializers.zeros)

  def _time_embedding(self, time_gaps_BG: jax.Array) -> jax.Array:
    return self.time_table(frame_positions(time_gaps_BG)) / math.sqrt(self.d_model)

  def conv_features(self, x_BTHWC: jax.Array, *, train: bool) -> jax.Array:
    """Per-frame conv-encoder features (B, T, 4, 4, d_model / 16)."""
    b, t, h, w, c = x_BTHWC.shape
    f_NHWC = self.conv_encoder(x_BTHWC.reshape(b * t, h, w, c), train=train)
    return f_NHWC.reshape(b, t, *f_NHWC.shape[1:])

  def encode(self, x_BTHWC: jax.Array, time_gaps_BG: jax.Array, *, train: bool) -> jax.Array:
    centre_BTC = x_BTHWC[:, :, CENTRE_PX, CENTRE_PX, :] if self.centre_path else None
    return self.encode_features(self.conv_features(x_BTHWC, train=train), time_gaps_BG, train=train,
                                centre_BTC=centre_BTC)

  def encode_features(self, f_BTHWC: jax.Array, time_gaps_BG: jax.Array, *, train: bool,
                      centre_BTC: jax.Array | None = None) -> jax.Array:
    """z (B, Z) from per-frame conv features (`conv_features`, or features cached by the embedders); a
    `centre_path` model also takes the filled input's centre pixel of every frame, `centre_BTC`."""
    b, t = f_BTHWC.shape[:2]
    self.sow("intermediates", "enc_dimred", f_BTHWC)
    tokens_BTD = f_BTHWC.transpose(0, 1, 4, 2, 3).reshape(b, t, self.d_model)   # c*16 + h*4 + w
    if self.centre_path:
      if centre_BTC is None:
        raise ValueError("this autoencoder has centre_path=True: encode_features needs the centre pixel "
                         "of every frame (centre_BTC)")
      tokens_BTD = tokens_BTD + self.centre_in(centre_BTC)
    x_BTD = tokens_BTD + self._time_embedding(time_gaps_BG)
    self.sow("intermediates", "enc_transformer_in", x_BTD)
    if self.reference_batch_mixing:   # sequence = samples, frames = batch (reference b.4)
      x_BTD = self.transformer(x_BTD.swapaxes(0, 1), train=train).swapaxes(0, 1)
    else:
      x_BTD = self.transformer(x_BTD, train=train)
    self.sow("intermediates", "enc_transformer_out", x_BTD)
    x_BTF = blocks.selu(self.encoder_linear(x_BTD))
    self.sow("intermediates", "enc_linear", x_BTF)
    x_BFR = blocks.selu(self.token_reducer(x_BTF.swapaxes(1, 2)))
    self.sow("intermediates", "enc_token_reduced", x_BFR)
    return blocks.softplus(self.bottleneck_reducer(x_BFR.reshape(b, -1)))   # index f*R + r

  def decode(self, z_BZ: jax.Array, time_gaps_BG: jax.Array, *, train: bool) -> jax.Array:
    b = z_BZ.shape[0]
    flat_BX = blocks.softplus(self.bottleneck_expander(z_BZ))   # X = R*F, index r*F + f
    self.sow("intermediates", "dec_expanded", flat_BX)
    e_BFR = flat_BX.reshape(b, self.reduced_tokens, self.token_dim).swapaxes(1, 2)   # token-major
    u_BFT = blocks.selu(self.token_upsampler(e_BFR))
    self.sow("intermediates", "dec_token_upsampled", u_BFT)
    x_BTD = blocks.selu(self.decoder_linear(u_BFT.swapaxes(1, 2)))
    self.sow("intermediates", "dec_linear", x_BTD)
    x_BTD = x_BTD + self._time_embedding(time_gaps_BG)
    self.sow("intermediates", "dec_transformer_in", x_BTD)
    x_BTD = self.transformer(x_BTD, train=train)
    self.sow("intermediates", "dec_transformer_out", x_BTD)
    t = x_BTD.shape[1]
    f_NHWC = x_BTD.reshape(b * t, self.token_channels, TOKEN_PX, TOKEN_PX).transpose(0, 2, 3, 1)
    y_NHWC = self.conv_decoder(f_NHWC, train=train)
    y_BTHWC = y_NHWC.reshape(b, t, PATCH_PX, PATCH_PX, self.channels)
    if self.centre_path:
      y_BTHWC = y_BTHWC.at[:, :, CENTRE_PX, CENTRE_PX, :].add(self.centre_out(x_BTD))
    return y_BTHWC

  def __call__(self, x_BTHWC: jax.Array, time_gaps_BG: jax.Array, *,
               train: bool) -> tuple[jax.Array, jax.Array]:
    z_BZ = self.encode(x_BTHWC, time_gaps_BG, train=train)
    return self.decode(z_BZ, time_gaps_BG, train=train), z_BZ


AE_FIELDS = tuple(f for f in TransformerAE.__dataclass_fields__ if f not in ("parent", "name"))
_IGNORED_CONFIG_KEYS = ("kind",)


def ae_from_config(cfg: Mapping[str, Any]) -> TransformerAE:
  """Builds a TransformerAE from a ConfigDict/dict with the attribute names; unknown keys raise."""
  cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  unknown = sorted(set(cfg) - set(AE_FIELDS) - set(_IGNORED_CONFIG_KEYS))
  if unknown:
    raise ValueError(f"unknown TransformerAE config field(s) {unknown}; known: {list(AE_FIELDS)}")
  kwargs = {k: cfg[k] for k in AE_FIELDS if k in cfg}
  if "widths" in kwargs:
    kwargs["widths"] = tuple(int(v) for v in kwargs["widths"])
  check_fill(kwargs.get("fill", "window"), "TransformerAE config field fill")
  return TransformerAE(**kwargs)


def ae_config(model: TransformerAE) -> dict[str, Any]:
  """JSON-able dict of the model fields (inverse of `ae_from_config`)."""
  cfg = {k: getattr(model, k) for k in AE_FIELDS}
  cfg["widths"] = list(cfg["widths"])
  return cfg
