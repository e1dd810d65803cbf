"""Fast primitives for the small maps of the context-aware autoencoders, each equal to a plain formulation.

The encoder's and decoder's multi-scale blocks run 3x3 and 7x7 stride-1 convolutions with zero padding on
15x15 maps of up to 149 channels; at the reference's widths they are ~95 % of a CPU training step, and
XLA's CPU kernels take 2-5x longer for their weight gradients than for the forward pass. Here:
* `fft_conv_same`: the same convolutions (cross-correlations, torch/lax "same" padding) of one input with
  several kernels, through one real 2-D FFT of the input: per frequency a (N, 2C) x (2C, 2O) real matmul
  of the stacked real and imaginary parts (a complex product), then one inverse FFT per kernel. A circular
  transform of length H + r (r the largest radius) equals the zero-padded convolution on the H output
  positions, so the 15x15 maps take 18x18 transforms: 180 frequency bins instead of 225 x 49 taps, 14x
  fewer FLOPs for a 7x7 kernel (3x for a 3x3) in the forward pass and in both gradients, which autodiff
  derives through the FFT and the matmuls. Only the rounding differs from `conv_same` (~1e-6 relative).
* `conv_same`: the plain lax convolution (what `flax.linen.Conv` computes), the reference formulation and
  the path on accelerators, whose convolution units are faster than FFTs at these sizes.
* `small_map_conv`: a k x k convolution of a small map as one matmul with its (H*W*C, H*W*O) padded-conv
  matrix (the spatial-attention conv: 2 input and 1 output channels, ~1 GFLOP/s as an XLA CPU conv).
* `max_pool_3x3`: MaxPool2d(3, stride 1, padding 1) as two separable 3-maxima (bitwise equal, ~2x faster).
`resolve_conv_impl("auto")` picks "fft" on CPU and "direct" elsewhere.

Dimension letters: N images, H/W rows/columns, C input channels, O output channels, K kernel size,
F frequency bins.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CONV_IMPLS = ("auto", "fft", "direct")


def resolve_conv_impl(impl: str) -> str:
  """"auto" -> "fft" on a CPU backend, "direct" on accelerators; "fft" / "direct" unchanged."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl {impl!r}: expected one of {CONV_IMPLS}")
  if impl == "auto":
    return "fft" if jax.default_backend() == "cpu" else "direct"
  return impl


def _same_padding(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((k // 2, k // 2), (k // 2, k // 2))


def conv_same(x_NHWC: jax.Array, k_KKCO: jax.Array) -> jax.Array:
  """Stride-1 cross-correlation with zero padding k // 2 (odd k), no bias: `flax.linen.Conv`'s computation."""
  return lax.conv_general_dilated(x_NHWC, k_KKCO, (1, 1), _same_padding(k_KKCO.shape[0]),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def fft_conv_same(x_NHWC: jax.Array, kernels_KKCO: Sequence[jax.Array]) -> list[jax.Array]:
  """`[conv_same(x, k) for k in kernels]` (odd kernel sizes) through one FFT of x (module docstring)."""
  n, h, w, c = x_NHWC.shape
  radius = max(k.shape[0] // 2 for k in kernels_KKCO)
  lh, lw = h + radius, w + radius                    # circular length that leaves the H x W outputs exact
  fw = lw // 2 + 1
  spectrum_NhfC = jnp.fft.rfft2(x_NHWC, s=(lh, lw), axes=(1, 2))
  spectrum_FNC = spectrum_NhfC.reshape(n, lh * fw, c).transpose(1, 0, 2)
  x_FN2C = jnp.concatenate([spectrum_FNC.real, spectrum_FNC.imag], axis=-1)
  blocks, widths = [], []
  for k_KKCO in kernels_KKCO:
    k, o = k_KKCO.shape[0], k_KKCO.shape[-1]
    # y[i] = sum_a x[i + a - r] w[a] is the circular convolution of x with g[(r - a) mod L] = w[a].
    g = jnp.pad(k_KKCO[::-1, ::-1], ((0, lh - k), (0, lw - k), (0, 0), (0, 0)))
    g = jnp.roll(g, (-(k // 2), -(k // 2)), axis=(0, 1))
    g_FCO = jnp.fft.rfft2(g, axes=(0, 1)).reshape(lh * fw, c, o)
    gr, gi = g_FCO.real, g_FCO.imag
    # [xr xi] @ [[gr gi], [-gi gr]] = [xr gr - xi gi, xr gi + xi gr]: real and imaginary part of x * g.
    blocks.append(jnp.concatenate([jnp.concatenate([gr, gi], -1), jnp.concatenate([-gi, gr], -1)], axis=1))
    widths.append(o)
  y_FN2O = jnp.einsum("fnc,fco->fno", x_FN2C, jnp.concatenate(blocks, axis=-1))
  outs, start = [], 0
  for o in widths:
    part = y_FN2O[..., start:start + 2 * o]
    start += 2 * o
    y_NhfO = lax.complex(part[..., :o], part[..., o:]).transpose(1, 0, 2).reshape(n, lh, fw, o)
    outs.append(jnp.fft.irfft2(y_NhfO, s=(lh, lw), axes=(1, 2))[:, :h, :w])
  return outs


def convs_same(x_NHWC: jax.Array, kernels_KKCO: Sequence[jax.Array], impl: str = "auto") -> list[jax.Array]:
  """Several stride-1 "same" convolutions of one input (no bias), by `impl` (see `resolve_conv_impl`)."""
  if resolve_conv_impl(impl) == "fft":
    return fft_conv_same(x_NHWC, kernels_KKCO)
  return [conv_same(x_NHWC, k) for k in kernels_KKCO]


def small_map_conv_matrix(k_KKCO: jax.Array, h: int, w: int) -> jax.Array:
  """The (H*W*C, H*W*O) matrix of the zero-padded k x k convolution of an H x W map."""
  k, c, o = k_KKCO.shape[0], k_KKCO.shape[2], k_KKCO.shape[3]
  r = k // 2
  # dy[i, j] = row_in i - row_out j + r: the kernel row linking them (valid where 0 <= dy < k).
  dy = np.arange(h)[:, None] - np.arange(h)[None, :] + r
  dx = np.arange(w)[:, None] - np.arange(w)[None, :] + r
  ok = ((dy >= 0) & (dy < k))[:, None, :, None] & ((dx >= 0) & (dx < k))[None, :, None, :]   # (h, w, h, w)
  taps = k_KKCO[np.clip(dy, 0, k - 1)[:, None, :, None], np.clip(dx, 0, k - 1)[None, :, None, :]]
  m_HWCHWO = jnp.where(ok[..., None, None], taps, 0.0).transpose(0, 1, 4, 2, 3, 5)
  return m_HWCHWO.reshape(h * w * c, h * w * o)


def small_map_conv(x_NHWC: jax.Array, k_KKCO: jax.Array) -> jax.Array:
  """`conv_same` of a small map as one matmul (only the summation order differs)."""
  n, h, w, _ = x_NHWC.shape
  y = x_NHWC.reshape(n, -1) @ small_map_conv_matrix(k_KKCO, h, w)
  return y.reshape(n, h, w, k_KKCO.shape[-1])


def _max3(y_NHWC: jax.Array, axis: int) -> jax.Array:
  """Max over a 3-wide window along `axis` (stride 1, -inf padding): two shifted maxima."""
  n = y_NHWC.shape[axis]
  pad = [(0, 0)] * y_NHWC.ndim
  pad[axis] = (1, 1)
  p = jnp.pad(y_NHWC, pad, constant_values=-jnp.inf)
  take = lambda start: lax.slice_in_dim(p, start, start + n, axis=axis)
  return jnp.maximum(jnp.maximum(take(0), take(1)), take(2))


def max_pool_3x3(y_NHWC: jax.Array) -> jax.Array:
  """MaxPool2d(3, stride 1, padding 1) with -inf padding, as a 3-max over rows, then over columns."""
  return _max3(_max3(y_NHWC, 1), 2)
