"""Building blocks of the context-aware autoencoders and the fusion model, torch-exact in eval mode.

Convolutional attention blocks (CBAM, ConvAttentionBlock, MultiScaleAttentionBlock, the residual
max-pool) run on channels-last images; the transformer layers reproduce `torch.nn.TransformerEncoderLayer`
(fused q/k/v projection, LayerNorm eps 1e-5 with the exact variance, post-norm or pre-norm, ReLU) and
the activations use torch's constants (SELU, Softplus with threshold 20, explicit LeakyReLU slopes).
Whole-channel dropout (`Dropout2d`) is `nn.Dropout` broadcast over the spatial axes. Every block is a
Flax Linen module whose dropout draws from the `'dropout'` RNG stream only when `train=True`. Spec:
../shared/reference/ARCHITECTURE.md, section b.1 and b.4.

Dimension letters: N images (batch x frames folded), H/W rows/columns, C channels, B batch, L sequence,
D model width, K heads, E head width.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from earthrep.models import kernels

LN_EPS = 1e-5   # torch LayerNorm default


# ---------------------------------------------------------------------------------------------
# torch-exact activations
# ---------------------------------------------------------------------------------------------
def selu(x: jax.Array) -> jax.Array:
  # jax.nn.selu uses torch's scale 1.0507009873554805 and alpha 1.6732632423543772.
  return jax.nn.selu(x)


def softplus(x: jax.Array, threshold: float = 20.0) -> jax.Array:
  """torch.nn.Softplus(beta=1, threshold=20): identity where x > threshold."""
  return jnp.where(x > threshold, x, jax.nn.softplus(jnp.minimum(x, threshold)))


def leaky_relu(x: jax.Array, slope: float) -> jax.Array:
  return jnp.where(x >= 0, x, slope * x)


def silu(x: jax.Array) -> jax.Array:
  return jax.nn.silu(x)


def channel_dropout(rate: float, name: str | None = None) -> nn.Dropout:
  """torch Dropout2d on (N, H, W, C): one keep/drop decision per image and channel."""
  return nn.Dropout(rate, broadcast_dims=(1, 2), name=name)


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((k // 2, k // 2), (k // 2, k // 2))


def conv(features: int, k: int, name: str | None = None) -> nn.Conv:
  """k x k stride-1 conv with bias and torch padding k//2 (odd k)."""
  return nn.Conv(features, (k, k), padding=_pad(k), name=name)


def max_pool_residual(y_NHWC: jax.Array, x_NHWC: jax.Array) -> jax.Array:
  """MaxPool2d(3, stride 1, padding 1) of a block output plus the block input; -inf padding."""
  return kernels.max_pool_3x3(y_NHWC) + x_NHWC


# ---------------------------------------------------------------------------------------------
# Convolutional attention
# ---------------------------------------------------------------------------------------------
def reduced_width(channels: int, reduction: int) -> int:
  # torch uses floor(C / r); at least 1 so that tiny test variants keep a valid MLP.
  return max(1, channels // reduction)


class ChannelAttention(nn.Module):
  """Shared bias-free MLP on the global max- and mean-pooled channels, summed, sigmoid."""
  channels: int
  reduction: int

  @nn.compact
  def __call__(self, x_NHWC: jax.Array) -> jax.Array:
    fc1 = nn.Dense(reduced_width(self.channels, self.reduction), use_bias=False, name="fc1")
    fc2 = nn.Dense(self.channels, use_bias=False, name="fc2")
    mlp = lambda v_NC: fc2(jax.nn.relu(fc1(v_NC)))
    w_NC = mlp(jnp.max(x_NHWC, axis=(1, 2))) + mlp(jnp.mean(x_NHWC, axis=(1, 2)))
    return jax.nn.sigmoid(w_NC)[:, None, None, :]


class SmallMapConv(nn.Module):
  """`conv(features, kernel)` (same params: kernel (k, k, C, O), bias (O,)) for maps of at most
  `MATMUL_PX` pixels computed as one matmul (`kernels.small_map_conv`): the spatial-attention conv has 2
  input and 1 output channels, which XLA's CPU convolution runs at about 1 GFLOP/s; the dense matmul is
  ~10x faster on a 15x15 map. Larger maps take the plain convolution.
  """
  features: int
  kernel: int
  MATMUL_PX = 256

  @nn.compact
  def __call__(self, x_NHWC: jax.Array) -> jax.Array:
    _, h, w, c = x_NHWC.shape
    k_KKCO = self.param("kernel", nn.initializers.lecun_normal(), (self.kernel, self.kernel, c, self.features),
                        jnp.float32)
    b_O = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    if h * w > self.MATMUL_PX:
      return kernels.conv_same(x_NHWC, k_KKCO) + b_O
    return kernels.small_map_conv(x_NHWC, k_KKCO) + b_O


class SpatialAttention(nn.Module):
  """Conv (with bias) over the per-pixel [max, mean] of the channels, sigmoid."""
  kernel: int = 7

  @nn.compact
  def __call__(self, x_NHWC: jax.Array) -> jax.Array:
    s_NHW2 = jnp.concatenate([jnp.max(x_NHWC, axis=-1, keepdims=True),
                              jnp.mean(x_NHWC, axis=-1, keepdims=True)], axis=-1)
    return jax.nn.sigmoid(SmallMapConv(1, self.kernel, name="conv")(s_NHW2))


class CBAM(nn.Module):
  """u = x * CA(x); v = u * SA(u); returns v + x (residual inside the block)."""
  channels: int
  reduction: int
  kernel: int = 7

  @nn.compact
  def __call__(self, x_NHWC: jax.Array) -> jax.Array:
    u_NHWC = x_NHWC * ChannelAttention(self.channels, self.reduction, name="ca")(x_NHWC)
    v_NHWC = u_NHWC * SpatialAttention(self.kernel, name="sa")(u_NHWC)
    return v_NHWC + x_NHWC


class ConvAttentionBlock(nn.Module):
  """3x3 conv -> LeakyReLU(0.01) -> CBAM."""
  features: int
  reduction: int
  att_kernel: int = 7

  @nn.compact
  def __call__(self, x_NHWC: jax.Array) -> jax.Array:
    h_NHWC = leaky_relu(conv(self.features, 3, name="conv")(x_NHWC), 0.01)
    return CBAM(self.features, self.reduction, self.att_kernel, name="attention")(h_NHWC)


class ConvWeights(nn.Module):
  """The params of `conv(features, kernel)` (kernel (k, k, C, O), bias (O,), the same names, shapes and
  initialisers as `flax.linen.Conv`), returned instead of applied, so a caller can run several
  convolutions of one input together (`kernels.convs_same`)."""
  features: int
  kernel: int

  @nn.compact
  def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
    k_KKCO = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.kernel, self.kernel, in_features, self.features), jnp.float32)
    return k_KKCO, self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)


class DenseWeights(nn.Module):
  """The params of `nn.Dense(features)` (kernel (C, O), bias (O,), same names and initialisers), returned
  instead of applied."""
  features: int

  @nn.compact
  def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
    k_CO = self.param("kernel", nn.initializers.lecun_normal(), (in_features, self.features), jnp.float32)
    return k_CO, self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)


def fuse_branches(branches_NHWC: list[jax.Array], k_CO: jax.Array, b_O: jax.Array) -> jax.Array:
  """The 1x1 fusion of concatenated branches, `concat(branches) @ k + b`, as one matmul per branch with its
  rows of k: the concatenated copy is never built (on CPU it cost as much as the matmul)."""
  out, start = b_O, 0
  for branch in branches_NHWC:
    width = branch.shape[-1]
    out = out + branch @ k_CO[start:start + width]
    start += width
  return out


class MultiScaleAttentionBlock(nn.Module):
  """Parallel k x k convs (LeakyReLU 0.1), concatenated in kernel order, 1x1 fusion (LeakyReLU 0.01), CBAM.

  The parallel convolutions run through `kernels.convs_same` (`conv_impl`: "auto" = one shared FFT of the
  input on CPU, the plain convolutions elsewhere). `fuse` returns the 1x1 fusion's pre-activation and
  `from_fused` the rest, so that a caller that computes the branch convolutions another way
  (`models.crop_share`) runs the block's own attention."""
  features: int
  kernel_sizes: Sequence[int] = (3, 7)
  reduction: int = 8
  conv_impl: str = "auto"

  def setup(self):
    self.convs = [ConvWeights(self.features, k) for k in self.kernel_sizes]   # params convs_0, convs_1, ...
    self.fusion = DenseWeights(self.features)
    self.attention = CBAM(self.features, self.reduction, 7)

  def fuse(self, x_NHWC: jax.Array) -> jax.Array:
    weights = [c(x_NHWC.shape[-1]) for c in self.convs]
    convolved = kernels.convs_same(x_NHWC, [k for k, _ in weights], self.conv_impl)
    branches = [leaky_relu(y_NHWO + b_O, 0.1) for y_NHWO, (_, b_O) in zip(convolved, weights)]
    return fuse_branches(branches, *self.fusion(self.features * len(branches)))

  def from_fused(self, fused_NHWC: jax.Array) -> jax.Array:
    return self.attention(leaky_relu(fused_NHWC, 0.01))

  def __call__(self, x_NHWC: jax.Array) -> jax.Array:
    return self.from_fused(self.fuse(x_NHWC))


class ConvTranspose2x2(nn.Module):
  """torch ConvTranspose2d(kernel 2, stride 2): every input pixel scatters a 2x2 block, no overlap.

  `crop=1` drops the first output row and column (torch padding=1 with output_padding=1). The kernel
  is stored as (2, 2, C_in, C_out).
  """
  features: int
  crop: int = 0

  @nn.compact
  def __call__(self, x_NHWC: jax.Array) -> jax.Array:
    n, h, w, c = x_NHWC.shape
    k_22IO = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, c, self.features), jnp.float32)
    b_O = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    y_NHiWjO = jnp.einsum("nhwc,ijco->nhiwjo", x_NHWC, k_22IO)
    y_NHWO = y_NHiWjO.reshape(n, 2 * h, 2 * w, self.features) + b_O
    return y_NHWO[:, self.crop:, self.crop:, :]


# ---------------------------------------------------------------------------------------------
# torch-semantics transformer layers
# ---------------------------------------------------------------------------------------------
def layer_norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, name=name)


class MultiHeadAttention(nn.Module):
  """torch.nn.MultiheadAttention self-attention over axis 1 of (B, L, D), no mask.

  `in_proj` is the fused [q | k | v] projection (kernel (D, 3D)); dropout acts on the attention weights.
  """
  d_model: int
  heads: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x_BLD: jax.Array, *, train: bool) -> jax.Array:
    b, l, d = x_BLD.shape
    e = d // self.heads
    qkv_BL3KE = nn.Dense(3 * d, name="in_proj")(x_BLD).reshape(b, l, 3, self.heads, e)
    q_BLKE, k_BLKE, v_BLKE = qkv_BL3KE[:, :, 0], qkv_BL3KE[:, :, 1], qkv_BL3KE[:, :, 2]
    logits_BKLL = jnp.einsum("blke,bmke->bklm", q_BLKE, k_BLKE) / math.sqrt(e)
    w_BKLL = nn.Dropout(self.dropout)(jax.nn.softmax(logits_BKLL, axis=-1), deterministic=not train)
    o_BLD = jnp.einsum("bklm,bmke->blke", w_BKLL, v_BLKE).reshape(b, l, d)
    return nn.Dense(d, name="out_proj")(o_BLD)


class TransformerLayer(nn.Module):
  """torch.nn.TransformerEncoderLayer (ReLU, batch-first), post-norm or pre-norm (`norm_first`)."""
  d_model: int
  heads: int
  ffn: int
  dropout: float
  norm_first: bool = False

  @nn.compact
  def __call__(self, x_BLD: jax.Array, *, train: bool) -> jax.Array:
    drop = lambda v: nn.Dropout(self.dropout)(v, deterministic=not train)
    attn = MultiHeadAttention(self.d_model, self.heads, self.dropout, name="self_attn")
    linear1, linear2 = nn.Dense(self.ffn, name="linear1"), nn.Dense(self.d_model, name="linear2")
    norm1, norm2 = layer_norm("norm1"), layer_norm("norm2")
    ff = lambda v: linear2(drop(jax.nn.relu(linear1(v))))
    if self.norm_first:
      x_BLD = x_BLD + drop(attn(norm1(x_BLD), train=train))
      return x_BLD + drop(ff(norm2(x_BLD)))
    x_BLD = norm1(x_BLD + drop(attn(x_BLD, train=train)))
    return norm2(x_BLD + drop(ff(x_BLD)))


class Mlp(nn.Module):
  """Dense(hidden) -> SiLU -> Dense(out) (earthrep's heads; no reference counterpart); `zero_out` starts
  the output layer at zero (a head that corrects another answer starts from it)."""
  hidden: int
  out: int
  zero_out: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.zeros if self.zero_out else nn.initializers.lecun_normal()
    hidden = silu(nn.Dense(self.hidden, name="hidden")(x))
    return nn.Dense(self.out, kernel_init=init, name="out")(hidden)


class TransformerStack(nn.Module):
  """`layers` independent TransformerLayers (`layer_0`, ...), no final norm; attends over axis 1."""
  layers: int
  d_model: int
  heads: int
  ffn: int
  dropout: float
  norm_first: bool = False

  @nn.compact
  def __call__(self, x_BLD: jax.Array, *, train: bool) -> jax.Array:
    for i in range(self.layers):
      x_BLD = TransformerLayer(self.d_model, self.heads, self.ffn, self.dropout, self.norm_first,
                               name=f"layer_{i}")(x_BLD, train=train)
    return x_BLD
