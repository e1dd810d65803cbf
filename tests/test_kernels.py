"""The fast primitives of `earthrep.models.kernels`, each against its plain formulation: the FFT convolutions
(values and both gradients, against float64 convolutions), the small-map matmul conv, the separable
max-pool; and a whole autoencoder's training gradients with FFT and with plain convolutions."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest


from earthrep.interop import torch_import
from earthrep.models import blocks, kernels
from earthrep.models.autoencoder import TransformerAE
from earthrep.training import losses


def _rand(rng, *shape, scale=1.0):
  return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)


@pytest.mark.parametrize("hw,sizes,c,o", [((15, 15), (3, 7), 6, 5), ((15, 15), (7,), 3, 4), ((8, 8), (3,), 4, 4),
                                          ((11, 13), (3, 7), 2, 3), ((4, 4), (7, 3), 3, 2)])
def test_fft_conv_equals_the_plain_convolution_and_flax(hw, sizes, c, o):
  rng = np.random.default_rng(0)
  x = _rand(rng, 3, *hw, c)
  ws = [_rand(rng, k, k, c, o, scale=1 / np.sqrt(k * k * c)) for k in sizes]
  got = kernels.fft_conv_same(x, ws)
  for w, y in zip(ws, got):
    want = kernels.conv_same(x, w)
    flax_conv = blocks.conv(o, w.shape[0]).apply({"params": {"kernel": w, "bias": jnp.zeros(o)}}, x)
    np.testing.assert_array_equal(want, flax_conv)          # conv_same is flax's own computation
    assert y.shape == want.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(y, want, atol=2e-6 * float(jnp.max(jnp.abs(want))))
  assert [a.shape for a in kernels.convs_same(x, ws, "direct")] == [a.shape for a in got]


def test_fft_conv_gradients_are_as_close_to_float64_as_the_plain_ones():
  """d/dx and d/dw of the FFT path and of lax's convolution, both in float32, against float64: the FFT
  path's error is float32 rounding (within 3x of the plain path's own)."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 15, 15, 8))
  ws = [rng.normal(size=(k, k, 8, 6)) / np.sqrt(k * k * 8) for k in (3, 7)]
  probe = [rng.normal(size=(4, 15, 15, 6)) for _ in ws]

  def loss(conv_fn):
    return lambda x, ws: sum(jnp.sum(jnp.tanh(y) * p) for y, p in zip(conv_fn(x, ws), probe))
  plain = lambda x, ws: [kernels.conv_same(x, w) for w in ws]
  with jax.enable_x64(True):
    exact = jax.grad(loss(plain), argnums=(0, 1))(jnp.asarray(x), [jnp.asarray(w) for w in ws])
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  errors = {}
  for name, fn in (("plain", plain), ("fft", kernels.fft_conv_same)):
    g = jax.grad(loss(fn), argnums=(0, 1))(f32(x), [f32(w) for w in ws])
    errors[name] = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b))) / np.max(np.abs(b)))
                       for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(exact)))
  assert errors["fft"] < 1e-5 and errors["fft"] <= 3 * max(errors["plain"], 1e-7), errors


def test_conv_impl_resolution():
  assert kernels.resolve_conv_impl("auto") == ("fft" if jax.default_backend() == "cpu" else "direct")
  assert kernels.resolve_conv_impl("direct") == "direct"
  with pytest.raises(ValueError, match="conv_impl 'gpu'"):
    kernels.resolve_conv_impl("gpu")


@pytest.mark.parametrize("hw", [(15, 15), (7, 7), (4, 4), (20, 20)])
def test_small_map_conv_and_max_pool_match_lax(hw):
  """SpatialAttention's conv as one matmul (and its lax fallback), the separable 3x3 max-pool."""
  rng = np.random.default_rng(1)
  x = _rand(rng, 3, *hw, 2)
  params = {"params": {"kernel": _rand(rng, 7, 7, 2, 1), "bias": _rand(rng, 1)}}
  want = blocks.conv(1, 7).apply(params, x)
  np.testing.assert_allclose(blocks.SmallMapConv(1, 7).apply(params, x), want, atol=1e-5)
  np.testing.assert_allclose(kernels.small_map_conv(x, params["params"]["kernel"]) + params["params"]["bias"],
                             want, atol=1e-5)
  pool = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
  np.testing.assert_array_equal(kernels.max_pool_3x3(x), pool)
  np.testing.assert_array_equal(blocks.max_pool_residual(x, 0 * x), pool)


def test_autoencoder_training_gradients_match_with_fft_and_plain_convolutions():
  """The stage-1 loss gradient of a whole autoencoder on a fixed batch (dropout on): FFT convolutions
  (conv_impl="fft") against plain ones ("direct"), the same params and dropout masks: equal to float32
  rounding, and the param trees are identical (FFT is a computation, not a parameterisation)."""
  shape = dict(channels=10, bottleneck=9, reduced_tokens=6, widths=(8, 8, 8), d_model=32, token_dim=8, heads=2,
               ffn=8, layers=1, enc_dropout=0.1, dec_dropout=0.1, transformer_dropout=0.1)
  rng = np.random.default_rng(2)
  x = _rand(rng, 3, 11, 15, 15, 10, scale=0.2)
  mask = jnp.asarray(rng.uniform(size=x.shape) > 0.1)
  gaps = jnp.asarray(rng.integers(1, 10, (3, 10)), jnp.int32)
  grads, structures = {}, {}
  for impl in ("direct", "fft"):
    model = TransformerAE(**shape, conv_impl=impl)
    params = torch_import.random_params(model, 3)
    structures[impl] = jax.tree.structure(params)

    def loss(p, model=model):
      recon, _ = model.apply({"params": p}, x, gaps, train=True, rngs={"dropout": jax.random.key(4)})
      return losses.context_aware_loss(recon, x, mask)["total"]
    grads[impl] = jax.jit(jax.grad(loss))(params)
  assert structures["direct"] == structures["fft"]
  a, b = jax.tree.leaves(grads["direct"]), jax.tree.leaves(grads["fft"])
  total = np.sqrt(sum(float(jnp.sum(v ** 2)) for v in a))
  diff = np.sqrt(sum(float(jnp.sum((u - v) ** 2)) for u, v in zip(a, b)))
  assert total > 0 and diff / total < 1e-5, diff / total
