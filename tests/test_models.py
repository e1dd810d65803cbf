"""Model tests: full-size shapes and parameter counts (traced only, never compiled), then behaviour on tiny
variants: batch independence of the default encoder, batch mixing of the compatibility mode, dropout,
the sown intermediates, encode/decode methods, torch-exact activations and the config builders."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from earthrep.interop import torch_import
from earthrep.training import losses
from earthrep.models import blocks
from earthrep.models.params import abstract_params, example_inputs
from earthrep.models.autoencoder import TransformerAE, ae_config, ae_from_config, frame_positions
from earthrep.models.fusion import FusionModel, fusion_config, fusion_from_config, interpolate_centre

TINY = dict(widths=(8, 8, 8), d_model=32, token_dim=8, heads=2, ffn=8, layers=1)
INTERMEDIATES = {"enc_dimred", "enc_transformer_in", "enc_transformer_out", "enc_linear", "enc_token_reduced",
                 "dec_expanded", "dec_token_upsampled", "dec_linear", "dec_transformer_in",
                 "dec_transformer_out"}


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _inputs(channels: int, batch: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.uniform(0, 0.4, (batch, 11, 15, 15, channels)), jnp.float32)
  gaps = jnp.asarray(rng.integers(0, 15, (batch, 10)), jnp.int32)
  return x, gaps


def _random_params(model, seed: int = 0):
  return torch_import.random_params(model, seed)


def _full_fusion() -> FusionModel:
  return FusionModel((TransformerAE(2, 2, 7), TransformerAE(10, 9, 6)))


@pytest.mark.parametrize("channels,bottleneck,tokens,count", [(2, 2, 7, 3_712_061), (10, 9, 6, 3_726_109)])
def test_full_size_ae_counts_and_shapes(channels, bottleneck, tokens, count):
  model = TransformerAE(channels, bottleneck, tokens)
  params = abstract_params(model)
  assert _count(params) == count   # the reference's unique (deduplicated) parameter count
  assert params["time_table"]["embedding"].shape == (201, 256)
  x, gaps = _inputs(channels, 3)
  recon, z = jax.eval_shape(lambda p: model.apply({"params": p}, x, gaps, train=False), params)
  assert recon.shape == (3, 11, 15, 15, channels) and z.shape == (3, bottleneck)


def test_full_size_fusion_counts_and_subtrees():
  model = _full_fusion()
  params = abstract_params(model)
  fusion_only = _count(params) - _count(params["ae_s1"]) - _count(params["ae_s2"])
  # Reference fusion-only count 314,079 includes its unused bottleneck_expander (7*128 + 128 = 1,024).
  assert fusion_only == 314_079 - 1_024
  for sensor, ae in zip(model.sensors, model.autoencoders):
    sub = params
    for k in model.sensor_param_path(sensor):
      sub = sub[k]
    stage1 = abstract_params(ae)
    assert jax.tree.structure(sub) == jax.tree.structure(stage1)
    assert jax.tree.map(lambda a, b: a.shape == b.shape, sub, stage1) == jax.tree.map(lambda _: True, stage1)
  inputs, offsets = example_inputs(model, batch=2)
  out = jax.eval_shape(lambda p: model.apply({"params": p}, inputs, offsets, train=False), params)
  assert out["zf"].shape == (2, 7)
  assert out["recon"]["s1"].shape == (2, 11, 15, 15, 2) and out["recon"]["s2"].shape == (2, 11, 15, 15, 10)
  assert out["z"]["s2"].shape == (2, 9) and out["b"]["s1"].shape == (2, 2)
  zf = jax.eval_shape(lambda p: model.apply({"params": p}, inputs, offsets, method=FusionModel.embed), params)
  assert zf.shape == (2, 7)
  with pytest.raises(KeyError, match="s3"):
    model.sensor_param_path("s3")


@pytest.fixture(scope="module")
def tiny():
  models = {mix: TransformerAE(3, 4, 5, **TINY, reference_batch_mixing=mix) for mix in (False, True)}
  x, gaps = _inputs(3, 4)
  params = _random_params(models[False])
  apply = {mix: jax.jit(lambda p, x, g, m=m: m.apply({"params": p}, x, g, train=False))
           for mix, m in models.items()}
  return models, params, x, gaps, apply


def test_default_mode_is_independent_of_batch(tiny):
  _, params, x, gaps, apply = tiny
  recon, z = apply[False](params, x, gaps)
  recon0, z0 = apply[False](params, x[:1], gaps[:1])
  np.testing.assert_allclose(z0[0], z[0], atol=1e-6)
  np.testing.assert_allclose(recon0[0], recon[0], atol=1e-6)
  _, z_perm = apply[False](params, x[::-1], gaps[::-1])
  np.testing.assert_allclose(z_perm[::-1], z, atol=1e-6)


def test_positions_beyond_the_time_table_give_nan(tiny):
  _, params, x, gaps, apply = tiny
  _, z = apply[False](params, x, jnp.full_like(gaps, 30))   # last frame at day 300 > max_position 200
  assert bool(jnp.all(jnp.isnan(z)))


def test_compat_mode_mixes_the_batch(tiny):
  _, params, x, gaps, apply = tiny
  _, z = apply[True](params, x, gaps)
  _, z0 = apply[True](params, x[:1], gaps[:1])
  assert np.max(np.abs(z0[0] - z[0])) > 1e-4   # depends on the other samples
  _, z_perm = apply[True](params, x[::-1], gaps[::-1])
  np.testing.assert_allclose(z_perm[::-1], z, atol=1e-5)   # permutation-equivariant over the batch


def test_dropout_only_in_train_and_driven_by_rng(tiny):
  models, params, x, gaps, apply = tiny
  model = models[False]
  train = jax.jit(lambda p, r: model.apply({"params": p}, x, gaps, train=True, rngs={"dropout": r}))
  recon_eval, _ = apply[False](params, x, gaps)
  a, _ = train(params, jax.random.key(1))
  b, _ = train(params, jax.random.key(1))
  c, _ = train(params, jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert np.max(np.abs(a - c)) > 1e-6 and np.max(np.abs(a - recon_eval)) > 1e-6
  with pytest.raises(Exception, match="dropout"):   # train mode needs the 'dropout' stream
    jax.eval_shape(lambda p: model.apply({"params": p}, x, gaps, train=True), params)


def test_encode_decode_and_intermediates(tiny):
  models, params, x, gaps, _ = tiny
  model = models[False]

  @jax.jit
  def run(p):
    (recon, z), state = model.apply({"params": p}, x, gaps, train=False, mutable=["intermediates"])
    z2 = model.apply({"params": p}, x, gaps, train=False, method=TransformerAE.encode)
    recon2 = model.apply({"params": p}, z2, gaps, train=False, method=TransformerAE.decode)
    return recon, z, state, recon2, z2
  recon, z, state, recon2, z2 = run(params)
  inter = {k: v[0] for k, v in state["intermediates"].items()}
  assert set(inter) == INTERMEDIATES
  assert inter["enc_dimred"].shape == (4, 11, 4, 4, 2) and inter["enc_token_reduced"].shape == (4, 8, 5)
  assert inter["dec_expanded"].shape == (4, 40) and inter["dec_token_upsampled"].shape == (4, 8, 11)
  np.testing.assert_allclose(z2, z, atol=1e-6)
  np.testing.assert_allclose(recon2, recon, atol=1e-6)
  assert bool(jnp.all(z > 0))   # Softplus bottleneck


def test_tiny_fusion_runs_and_embed_matches():
  aes = tuple(TransformerAE(c, b, 3, **TINY) for c, b in ((2, 2), (10, 9)))
  model = FusionModel(aes, ("s1", "s2"), bottleneck=7, d_model=16, heads=2, ffn=16, layers=1)
  (x1, g1), (x2, g2) = _inputs(2, 2), _inputs(10, 2, seed=1)
  inputs, offsets = {"s1": (x1, g1), "s2": (x2, g2)}, jnp.array([[0, 3], [0, 0]], jnp.int32)
  params = _random_params(model)
  out, zf = jax.jit(lambda p: (model.apply({"params": p}, inputs, offsets, train=False),
                               model.apply({"params": p}, inputs, offsets, method=FusionModel.embed)))(params)
  np.testing.assert_allclose(zf, out["zf"], atol=1e-6)
  assert out["recon"]["s2"].shape == (2, 11, 15, 15, 10)
  rebuilt = fusion_from_config(fusion_config(model))
  assert rebuilt == model
  with pytest.raises(KeyError, match="s2"):
    jax.eval_shape(lambda p: model.apply({"params": p}, {"s1": (x1, g1)}, offsets, train=False), params)


def test_config_builders():
  cfg = ml_collections.ConfigDict(dict(channels=2, bottleneck=2, reduced_tokens=7, **TINY, max_position=200,
                                       reference_batch_mixing=True))
  model = ae_from_config(cfg)
  assert model.widths == (8, 8, 8) and model.reference_batch_mixing
  assert ae_from_config(ae_config(model)) == model
  with pytest.raises(ValueError, match="d_modle"):
    ae_from_config(dict(channels=2, bottleneck=2, reduced_tokens=7, d_modle=3))


def test_torch_exact_activations_and_positions():
  x = jnp.array([-30.0, -1.0, 0.0, 19.9, 20.0, 20.5, 80.0])
  sp = blocks.softplus(x)
  np.testing.assert_allclose(sp[:5], np.log1p(np.exp(np.asarray(x[:5], np.float64))), rtol=1e-6)
  assert sp[5] == x[5] and sp[6] == x[6]
  np.testing.assert_allclose(blocks.selu(jnp.array([-1.0, 1.0])),
                             [1.0507009873554805 * 1.6732632423543772 * (np.exp(-1) - 1), 1.0507009873554805],
                             rtol=1e-6)
  np.testing.assert_allclose(blocks.leaky_relu(jnp.array([-2.0, 3.0]), 0.1), [-0.2, 3.0])
  pos = frame_positions(jnp.array([[1, 0, 2, 3, 0, 0, 5, 1, 1, 1]]))
  np.testing.assert_array_equal(pos, [[0, 1, 1, 3, 6, 6, 6, 11, 12, 13, 14]])


def test_conv_transpose_matches_lax_reference():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
  layer = blocks.ConvTranspose2x2(5, crop=1)
  params = {"params": {"kernel": jnp.asarray(rng.normal(size=(2, 2, 3, 5)), jnp.float32),
                        "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}}
  k = params["params"]["kernel"]
  # torch semantics == the gradient of the forward conv whose HWIO kernel maps 5 -> 3 channels.
  want = jax.lax.conv_transpose(x, k.transpose(0, 1, 3, 2), (2, 2), "VALID",
                                dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)
  want = want[:, 1:, 1:, :] + params["params"]["bias"]
  got = layer.apply(params, x)
  assert got.shape == (2, 7, 7, 5)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_crop_share_matches_the_encoder_on_every_crop():
  """crop_share (block-1 maps once per image, gathered per crop, plus each crop's hole term) == the
  "frame"-filled ConvEncoder on each crop, for crops touching every image border (every pair of edge
  classes), with and without holes."""
  from earthrep.data import preprocess
  from earthrep.models import crop_share
  model = TransformerAE(10, 9, 6, **TINY)
  params = _random_params(model)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 17, 19, 10)).astype(np.float32)
  images[1, 2:6, 3:5] = np.nan            # a cloud (all bands) seen by some crops, at their edges too
  images[1, 12, 16] = np.nan
  valid = ~np.isnan(images).any(axis=-1)
  slot, y0, x0 = (a.ravel() for a in np.meshgrid(np.arange(2), np.arange(3), np.arange(5), indexing="ij"))
  crops = np.stack([images[s, a:a + 15, b:b + 15] for s, a, b in zip(slot, y0, x0)])
  filled, mask = preprocess.fill_patches(crops, "frame")
  holes = ~mask.all(axis=(1, 2, 3))
  assert 0 < holes.sum() < len(holes)
  fill = np.nanmean(crops.astype(np.float64), axis=(1, 2)).astype(np.float32)   # each crop's own mean
  want = model.apply({"params": params}, filled, method=lambda m, x: m.conv_encoder(x, train=False))
  prep = crop_share.prepare(params["conv_encoder"])
  maps = crop_share.block1_maps(prep, np.nan_to_num(images), valid)
  assert maps["t"][1].shape == (2, 7, 7, 17, 19, TINY["widths"][0])
  crops = crop_share.gather(maps, slot, y0, x0, jnp)   # in-jit gather (accelerators) == the host's numpy one
  host = crop_share.gather(jax.device_get(maps), slot, y0, x0, np)
  per_image = [jax.tree.map(lambda a, i=i: np.asarray(a[i:i + 1]), maps) for i in range(2)]
  by_image = crop_share.gather_host(per_image, slot, y0, x0)   # the engine's: per-image host maps
  for a, b, c in zip(jax.tree.leaves(crops), jax.tree.leaves(host), jax.tree.leaves(by_image)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  from earthrep import parallel   # padded to whole batches, in buffers a CPU device takes without a copy
  padded = crop_share.gather_host(per_image, slot, y0, x0, rows=len(slot) + 3, empty=parallel.host_empty)
  for a, c in zip(jax.tree.leaves(padded), jax.tree.leaves(by_image)):
    assert a.ctypes.data % 64 == 0 and len(a) == len(slot) + 3 and not a[len(slot):].any()
    np.testing.assert_array_equal(a[:len(slot)], c)
  assert jax.device_put(padded["a0"]).unsafe_buffer_pointer() == padded["a0"].ctypes.data
  got = crop_share.encode(model, params, prep, crops, fill)
  np.testing.assert_allclose(got, want, atol=2e-6)
  clean = crop_share.encode(model, params, prep, jax.tree.map(lambda a: a[~holes], host))
  np.testing.assert_allclose(clean, want[~holes], atol=2e-6)
  assert list(crop_share.edge_class(3)) == [0, 1, 2] + [3] * 9 + [4, 5, 6]
  assert crop_share.tap_ranges(3, 1) == [(1, 3), (0, 3), (0, 2)]


def test_centre_path_reads_and_writes_the_centre_pixel():
  """`centre_path`: the centre pixel's series enters z directly and the decoder writes the centre pixel
  from the frame tokens; encode_features refuses to run without it; the path starts as a no-op on the
  output (zero-initialised head)."""
  model = TransformerAE(3, 4, 5, **TINY, centre_path=True)
  x, gaps = _inputs(3, 2)
  params = _random_params(model)
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, gaps, train=False, method=TransformerAE.encode))
  plain = TransformerAE(3, 4, 5, **TINY)   # the reference's path, with the same weights
  shared = {k: v for k, v in params.items() if k not in ("centre_in", "centre_out")}
  z_plain = plain.apply({"params": shared}, x, gaps, train=False, method=TransformerAE.encode)
  no_centre = {**params, "centre_in": jax.tree.map(jnp.zeros_like, params["centre_in"])}
  np.testing.assert_allclose(encode(no_centre, x), z_plain, atol=1e-6)
  z = encode(params, x)
  assert float(jnp.max(jnp.abs(z - z_plain))) > 1e-3
  recon = model.apply({"params": params}, z, gaps, train=False, method=TransformerAE.decode)
  head_off = {**params, "centre_out": jax.tree.map(jnp.zeros_like, params["centre_out"])}
  recon0 = model.apply({"params": head_off}, z, gaps, train=False, method=TransformerAE.decode)
  diff = np.abs(np.asarray(recon - recon0))
  assert diff[:, :, 7, 7].min() > 0
  diff[:, :, 7, 7] = 0
  assert not diff.any()   # the centre pixel only
  init = model.init({"params": jax.random.key(0)}, x, gaps, train=False)["params"]
  assert not np.any(init["centre_out"]["kernel"])
  feats = model.apply({"params": params}, x, train=False, method=TransformerAE.conv_features)
  with pytest.raises(ValueError, match="centre_BTC"):
    model.apply({"params": params}, feats, gaps, train=False, method=TransformerAE.encode_features)
  rebuilt = ae_from_config(ae_config(model))
  assert rebuilt == model


def test_fusion_centre_head_corrects_the_decoders_centre_pixel_from_zf():
  """`centre_head`: an answer for the centre pixel of the centre frame per sensor, equal to the decoder's at
  init (zero output layer) and moved by zf only; the loss scores it (`<sensor>/head`) and selects on it."""
  aes = tuple(TransformerAE(c, b, 3, **TINY) for c, b in ((2, 2), (10, 9)))
  model = FusionModel(aes, ("s1", "s2"), bottleneck=7, d_model=16, heads=2, ffn=16, layers=1, centre_head=True)
  (x1, g1), (x2, g2) = _inputs(2, 2), _inputs(10, 2, seed=1)
  inputs, offsets = {"s1": (x1, g1), "s2": (x2, g2)}, jnp.array([[0, 3], [0, 0]], jnp.int32)
  init = model.init({"params": jax.random.key(0)}, inputs, offsets, train=False)["params"]
  out = model.apply({"params": init}, inputs, offsets, train=False)
  for s in ("s1", "s2"):
    assert not np.any(init[f"centre_{s}"]["out"]["kernel"])
    np.testing.assert_array_equal(out["centre"][s], out["recon"][s][:, 5, 7, 7])
  params = _random_params(model)
  out = model.apply({"params": params}, inputs, offsets, train=False)
  assert float(jnp.max(jnp.abs(out["centre"]["s2"] - out["recon"]["s2"][:, 5, 7, 7]))) > 1e-3
  no_head = {k: v for k, v in params.items() if not k.startswith("centre_")}
  plain = FusionModel(aes, ("s1", "s2"), bottleneck=7, d_model=16, heads=2, ffn=16, layers=1)
  base = plain.apply({"params": no_head}, inputs, offsets, train=False)
  assert "centre" not in base
  np.testing.assert_array_equal(base["zf"], out["zf"])
  np.testing.assert_array_equal(base["recon"]["s2"], out["recon"]["s2"])
  assert fusion_from_config(fusion_config(model)) == model
  target = {s: x for s, (x, _) in inputs.items()}
  mask = {s: jnp.ones(x.shape, bool).at[0, 5, 7, 7, 0].set(False) for s, x in target.items()}
  got = losses.fusion_loss(out["recon"], target, mask, centre=out["centre"], centre_weight=2.0)
  plain_loss = losses.fusion_loss(out["recon"], target, mask)
  for s in ("s1", "s2"):
    err = np.abs(np.asarray(out["centre"][s]) - np.asarray(target[s][:, 5, 7, 7]))
    valid = np.asarray(mask[s][:, 5, 7, 7])
    np.testing.assert_allclose(got[f"{s}/head"], err[valid].mean(), rtol=1e-5)
    np.testing.assert_allclose(got[f"{s}/total"], plain_loss[f"{s}/total"] + 2.0 * got[f"{s}/head"], rtol=1e-5)
  np.testing.assert_allclose(got["val_metric"], (got["s1/head"] + got["s2/head"]) / 2, rtol=1e-6)
  with pytest.raises(ValueError, match="centre heads"):
    losses.fusion_loss(out["recon"], target, mask, centre={"s3": out["centre"]["s2"]})


def _interp_reference(x_tc, valid_tc, days_t):
  """numpy: per channel, linear in time at day 0 between the nearest valid values at or before and at or
  after it, the one side's nearest value when only one side has one; (value (c,), ok (c,))."""
  value, ok = np.zeros(x_tc.shape[1], np.float32), valid_tc.any(axis=0)
  for c in np.flatnonzero(ok):
    d, v = days_t[valid_tc[:, c]], x_tc[valid_tc[:, c], c]
    if (d <= 0).any() and (d >= 0).any():
      value[c] = np.interp(0.0, d, v)
    else:
      value[c] = v[np.argmax(d)] if (d <= 0).any() else v[np.argmin(d)]
  return value, ok


def test_interpolate_centre_is_linear_in_time_between_the_nearest_valid_values():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(64, 11, 3)).astype(np.float32)
  valid = rng.random((64, 11, 3)) < 0.35
  valid[0] = False                                   # nothing valid: not ok
  valid[1], valid[1, 5] = False, True                # the centre itself: its own value
  valid[2], valid[2, :3] = False, True               # before only: the last value before
  gaps = rng.integers(1, 20, (64, 10)).astype(np.int32)
  value, ok, features = interpolate_centre(jnp.asarray(x), jnp.asarray(valid), jnp.asarray(gaps))
  days = np.asarray(frame_positions(gaps))
  for b in range(64):
    want, want_ok = _interp_reference(x[b], valid[b], (days[b] - days[b, 5]).astype(np.float64))
    np.testing.assert_array_equal(np.asarray(ok[b]), want_ok)
    np.testing.assert_allclose(np.asarray(value[b])[want_ok], want[want_ok], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(value[1]), x[1, 5])
  np.testing.assert_array_equal(np.asarray(value[2]), x[2, 2])
  assert not np.asarray(ok[0]).any() and features.shape == (64, 6 * 3)
  np.testing.assert_array_equal(np.asarray(features[:, :3]), np.asarray(value))


def test_an_anchored_centre_head_starts_from_the_interpolation_of_the_valid_centre_values():
  """`centre_anchor`: the centre head corrects `interpolate_centre` of the centre pixel's valid values (the
  decoder's answer for a channel without any); it needs the validity and the centre head."""
  aes = tuple(TransformerAE(c, b, 3, **TINY) for c, b in ((2, 2), (10, 9)))
  kw = dict(bottleneck=7, d_model=16, heads=2, ffn=16, layers=1)
  model = FusionModel(aes, ("s1", "s2"), centre_head=True, centre_anchor=True, **kw)
  (x1, g1), (x2, g2) = _inputs(2, 2), _inputs(10, 2, seed=1)
  inputs, offsets = {"s1": (x1, g1), "s2": (x2, g2)}, jnp.array([[0, 3], [0, 0]], jnp.int32)
  valid = {"s1": jnp.ones((2, 11, 2), bool),
           "s2": jnp.asarray(np.random.default_rng(0).random((2, 11, 10)) < 0.3).at[:, 5].set(False)
                    .at[1, :, 4].set(False)}   # the S2 centre hidden; channel 4 of sample 1 never valid
  init = model.init({"params": jax.random.key(0)}, inputs, offsets, train=False, valid=valid)["params"]
  out = model.apply({"params": init}, inputs, offsets, train=False, valid=valid)
  np.testing.assert_array_equal(out["centre"]["s1"], x1[:, 5, 7, 7])     # S1's centre is observed
  interp, ok, _ = interpolate_centre(x2[:, :, 7, 7], valid["s2"], g2)
  want = np.where(ok, interp, out["recon"]["s2"][:, 5, 7, 7])
  np.testing.assert_allclose(out["centre"]["s2"], want, rtol=1e-6)
  assert not bool(ok[1, 4]) and bool(ok.any())
  params = _random_params(model)
  moved = model.apply({"params": params}, inputs, offsets, train=False, valid=valid)
  assert float(jnp.max(jnp.abs(moved["centre"]["s2"] - moved["recon"]["s2"][:, 5, 7, 7]))) > 1e-3
  with pytest.raises(ValueError, match=r"valid\['s1'\]"):
    model.apply({"params": params}, inputs, offsets, train=False)
  with pytest.raises(ValueError, match="needs centre_head"):
    FusionModel(aes, ("s1", "s2"), centre_anchor=True, **kw).init(
        {"params": jax.random.key(0)}, inputs, offsets, train=False)
  assert fusion_from_config(fusion_config(model)) == model


def test_fusion_pixel_tokens_read_each_sensors_centre_series():
  """`pixel_token`: one more fuser token per sensor from its centre pixel's filled series and the frames'
  days; embed, the full forward and embed_from_features agree, and the latter needs the series."""
  aes = tuple(TransformerAE(c, b, 3, **TINY) for c, b in ((2, 2), (10, 9)))
  model = FusionModel(aes, ("s1", "s2"), bottleneck=7, d_model=16, heads=2, ffn=16, layers=1, pixel_token=True)
  (x1, g1), (x2, g2) = _inputs(2, 2), _inputs(10, 2, seed=1)
  inputs, offsets = {"s1": (x1, g1), "s2": (x2, g2)}, jnp.array([[0, 3], [0, 0]], jnp.int32)
  params = _random_params(model)
  out = model.apply({"params": params}, inputs, offsets, train=False)
  zf = model.apply({"params": params}, inputs, offsets, method=FusionModel.embed)
  np.testing.assert_allclose(zf, out["zf"], atol=1e-6)
  feats = {s: (aes[i].apply({"params": params[f"ae_{s}"]}, x, train=False, method=TransformerAE.conv_features),
               g, x[:, :, 7, 7, :]) for i, (s, (x, g)) in enumerate(inputs.items())}
  fast = model.apply({"params": params}, feats, offsets, method=FusionModel.embed_from_features)
  np.testing.assert_allclose(fast["zf"], zf, atol=1e-5)
  with pytest.raises(ValueError, match="centre_BTC"):
    model.apply({"params": params}, {s: f[:2] for s, f in feats.items()}, offsets,
                method=FusionModel.embed_from_features)
  other = {**params, "pixel_s2": jax.tree.map(lambda a: a * 1.5, params["pixel_s2"])}
  moved = model.apply({"params": other}, inputs, offsets, method=FusionModel.embed)
  assert float(jnp.max(jnp.abs(moved - zf))) > 1e-4
  assert fusion_from_config(fusion_config(model)) == model
