"""Tests of earthrep.training.losses: parity with the reference loss vectors, the default-mode `center` fix,
NaN-free gradients at the degenerate points (perfect reconstruction, empty mask) and the fusion objective.

Vectors are read from $EARTHREP_REFERENCE_VECTORS (default `<repo>/../shared/reference/vectors`); they are
(B, T, C, H, W) and are transposed to earthrep's channels-last (B, T, H, W, C) here.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from earthrep import sensors
from earthrep.training import losses

VECTORS_DIR = os.environ.get(
    "EARTHREP_REFERENCE_VECTORS",
    os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference", "vectors")))
needs_vectors = pytest.mark.skipif(not os.path.isdir(VECTORS_DIR),
                                   reason=f"reference vectors folder {VECTORS_DIR} not found")

TOL_PLAIN = 1e-6   # mae, ssim, center, totals without SAM (vectors/README.md)
TOL_SAM = 1e-4     # sam and totals containing SAM
AE_CONFIGS = {"stage1": sensors.STAGE1_LOSS, "full": losses.CLASS_DEFAULT_WEIGHTS,
              "center175": sensors.get("s2").fusion_loss}


def _load(name: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(VECTORS_DIR, name)) as npz:
    return {k: npz[k] for k in npz.files}


def _to_bthwc(a_BTCHW: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(a_BTCHW, (0, 1, 3, 4, 2)))


def _tolerance(term: str, weights: dict[str, float]) -> float:
  return TOL_SAM if term == "sam" or (term == "total" and weights["lambda_sam"] > 0) else TOL_PLAIN


def _random_case(seed: int, batch: int = 2, channels: int = 3):
  rng = np.random.default_rng(seed)
  shape = (batch, 11, 15, 15, channels)
  target = rng.uniform(0.05, 0.5, shape).astype(np.float32)
  output = (target + rng.normal(0, 0.05, shape)).astype(np.float32)
  mask = rng.uniform(size=shape) > 0.2
  return output, target, mask


@needs_vectors
@pytest.mark.parametrize("file", ["s1_ae.npz", "s2_ae.npz"])
def test_autoencoder_losses_match_reference(file):
  vec = _load(file)
  output, target, mask = (_to_bthwc(vec[k]) for k in ("outputs/recon", "inputs/x", "inputs/mask"))
  with jax.default_matmul_precision("highest"):
    for config, weights in AE_CONFIGS.items():
      got = losses.context_aware_loss(output, target, mask, reference=True, **weights)
      for term in losses.TERMS:
        want = vec[f"loss/{config}/{term}"]
        assert got[term].dtype == jnp.float32 and got[term].shape == ()
        np.testing.assert_allclose(got[term], want, rtol=0, atol=_tolerance(term, weights),
                                   err_msg=f"{file} loss/{config}/{term}")


@needs_vectors
def test_weight_maps_match_reference():
  vec = _load("s1_ae.npz")
  np.testing.assert_array_equal(losses.spatial_weights(), vec["loss/spatial_weight_map"])
  np.testing.assert_array_equal(losses.temporal_weights(), vec["loss/temporal_weights"])
  assert losses.spatial_weights().dtype == jnp.float32 and losses.temporal_weights().dtype == jnp.float32


@needs_vectors
def test_fusion_loss_matches_reference():
  vec = _load("fusion.npz")
  x, mask = _to_bthwc(vec["inputs/x"]), _to_bthwc(vec["inputs/mask"])
  recon = {"s1": _to_bthwc(vec["outputs/y_s1"]), "s2": _to_bthwc(vec["outputs/y_s2"])}
  target = {"s1": x[..., 10:], "s2": x[..., :10]}
  masks = {"s1": mask[..., 10:], "s2": mask[..., :10]}
  with jax.default_matmul_precision("highest"):
    got = losses.fusion_loss(recon, target, masks, reference=True)
  for sensor in ("s1", "s2"):
    for term in losses.TERMS:
      np.testing.assert_allclose(got[f"{sensor}/{term}"], vec[f"loss/{sensor}/{term}"], rtol=0,
                                 atol=_tolerance(term, sensors.get(sensor).fusion_loss),
                                 err_msg=f"loss/{sensor}/{term}")
  np.testing.assert_allclose(got["total"], vec["loss/total"], rtol=0, atol=TOL_SAM)
  np.testing.assert_allclose(got["val_metric"], vec["loss/val_metric"], rtol=0, atol=TOL_PLAIN)


@needs_vectors
def test_default_mode_equals_reference_mode_except_center():
  vec = _load("s2_ae.npz")
  output, target, mask = (_to_bthwc(vec[k]) for k in ("outputs/recon", "inputs/x", "inputs/mask"))
  with jax.default_matmul_precision("highest"):
    ref = losses.context_aware_loss(output, target, mask, reference=True, **losses.CLASS_DEFAULT_WEIGHTS)
    new = losses.context_aware_loss(output, target, mask, **losses.CLASS_DEFAULT_WEIGHTS)
  for term in ("total", "mae", "ssim", "sam"):
    np.testing.assert_array_equal(new[term], ref[term], err_msg=term)
  # The vectors keep the centre pixel of frame 5 valid in channels 0..9, so both centres agree here.
  np.testing.assert_allclose(new["center"], ref["center"], rtol=0, atol=1e-7)


def test_default_center_ignores_invalid_centre_channels():
  output, target, mask = _random_case(0, batch=2, channels=3)
  output[:, 5, 7, 7, :] = target[:, 5, 7, 7, :]
  # Valid centre errors 0.1, 0.2, 0.3; an invalid (mean-filled) channel with error 0.9; sample 1 all valid.
  output[0, 5, 7, 7] += np.float32([0.1, 0.9, 0.0])
  output[1, 5, 7, 7] += np.float32([0.2, 0.0, 0.3])
  mask[:, 5, 7, 7, :] = True
  mask[0, 5, 7, 7, 1] = False
  err_BC = np.abs(output[:, 5, 7, 7] - target[:, 5, 7, 7]).astype(np.float64)
  new = losses.context_aware_loss(output, target, mask)
  ref = losses.context_aware_loss(output, target, mask, reference=True)
  np.testing.assert_allclose(new["center"], (err_BC.sum() - err_BC[0, 1]) / 5, rtol=1e-6)
  np.testing.assert_allclose(new["center"], 0.6 / 5, rtol=1e-5)
  np.testing.assert_allclose(ref["center"], err_BC.mean(), rtol=1e-6)
  np.testing.assert_allclose(ref["center"], 1.5 / 6, rtol=1e-5)
  np.testing.assert_array_equal(new["mae"], ref["mae"])
  # No valid centre element at all: 0, not NaN.
  mask[:, 5, 7, 7, :] = False
  assert float(losses.context_aware_loss(output, target, mask)["center"]) == 0.0


def test_disabled_terms_are_zero_and_total_combines_lambdas():
  output, target, mask = _random_case(1)
  weights = dict(lambda_mae=0.7, lambda_ssim=0.2, lambda_sam=0.1, center_mae=2.0)
  with jax.default_matmul_precision("highest"):
    full = losses.context_aware_loss(output, target, mask, **weights)
    mae_only = losses.context_aware_loss(output, target, mask, lambda_mae=0.7, center_mae=2.0)
  assert float(mae_only["ssim"]) == 0.0 and float(mae_only["sam"]) == 0.0
  np.testing.assert_allclose(full["total"], 0.7 * full["mae"] + 0.2 * full["ssim"] + 0.1 * full["sam"],
                             rtol=1e-6)
  np.testing.assert_allclose(mae_only["total"], 0.7 * full["mae"], rtol=1e-6)
  assert all(float(v) > 0 for v in full.values())


def test_jit_matches_eager():
  output, target, mask = _random_case(2)
  fn = functools.partial(losses.context_aware_loss, **sensors.get("s2").fusion_loss)
  with jax.default_matmul_precision("highest"):
    eager, jitted = fn(output, target, mask), jax.jit(fn)(output, target, mask)
  for term in losses.TERMS:
    np.testing.assert_allclose(jitted[term], eager[term], rtol=1e-6, atol=1e-7, err_msg=term)


def _total_grad(output, target, mask, **weights):
  loss_fn = lambda o, x, m: losses.context_aware_loss(o, x, m, **weights)["total"]
  return np.asarray(jax.jit(jax.grad(loss_fn))(output, target, mask))


def test_gradients_finite_at_perfect_reconstruction_and_zero_spectra():
  _, target, mask = _random_case(3)
  # Equal channels: o.x / (|x||o| + 1e-8) rounds onto (or above) 1 at many of these positions.
  target[0, 5] = np.linspace(0.1, 0.5, 15 * 15, dtype=np.float32).reshape(15, 15, 1)
  target[1, 5, 3, 3, :] = 0.0            # zero spectrum: norm 0
  mask[0, 5] = True
  mask[1, 5, 3, 3, :] = True
  output = target.copy()
  with jax.default_matmul_precision("highest"):
    for reference in (False, True):
      values = losses.context_aware_loss(output, target, mask, reference=reference,
                                         **losses.CLASS_DEFAULT_WEIGHTS)
      assert all(np.isfinite(float(v)) for v in values.values())
      assert abs(float(values["sam"])) < 1e-3 and abs(float(values["mae"])) == 0.0
      grad = _total_grad(output, target, mask, reference=reference, **losses.CLASS_DEFAULT_WEIGHTS)
      assert np.all(np.isfinite(grad))
  # The clamped acos itself: exact value, finite derivative at and beyond +-1.
  cos = jnp.float32([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
  np.testing.assert_allclose(losses.clamped_acos(cos), np.arccos(np.clip(cos, -1, 1)), rtol=1e-6)
  slope = jax.vmap(jax.grad(losses.clamped_acos))(cos)
  assert np.all(np.isfinite(slope))
  np.testing.assert_allclose(slope[2:5], -1 / np.sqrt(1 - np.float32([0.5, 0.0, 0.5]) ** 2), rtol=1e-6)


def test_all_masked_sample_and_masked_gradient():
  output, target, mask = _random_case(4)
  mask[0] = False
  target[0, 0, 0, 0, 0] = np.nan  # a target no one should read: masked everywhere (MAE and SAM)
  weights = dict(lambda_mae=1.0, lambda_ssim=0.0, lambda_sam=0.5, center_mae=1.75)
  values = losses.context_aware_loss(output, target, mask, **weights)
  assert all(np.isfinite(float(v)) for v in values.values())
  grad = _total_grad(output, target, mask, **weights)
  assert np.all(np.isfinite(grad))
  assert np.all(grad[0] == 0.0)
  # MAE gradient: zero at masked elements, sign(o - x) * w_hat / B at valid ones.
  grad_mae = _total_grad(output, target, mask, lambda_mae=1.0, center_mae=1.75)
  assert np.all(grad_mae[~mask] == 0.0)
  w_THW = np.asarray(losses.temporal_weights(), np.float64)[:, None, None] * np.asarray(losses.spatial_weights())
  w_THW[5, 7, 7] = 1.75
  w_hat_THWC = np.broadcast_to((w_THW / (w_THW.sum() * output.shape[-1]))[..., None], output.shape[1:])
  want = np.where(mask, np.sign(output - target) * w_hat_THWC / output.shape[0], 0.0)
  np.testing.assert_allclose(grad_mae, want, rtol=1e-5, atol=1e-12)
  # Every element masked: mae = sam = 0 (no guard-path scalar), gradients zero.
  mask[:] = False
  empty = losses.context_aware_loss(output, target, mask, **weights)
  assert float(empty["mae"]) == 0.0 and float(empty["sam"]) == 0.0 and float(empty["total"]) == 0.0
  assert np.all(_total_grad(output, target, mask, **weights) == 0.0)


def test_fusion_loss_three_sensors_and_default_weights():
  """Registered sensors take their registry weights; an unregistered one needs explicit weights."""
  channels = {"s1": 2, "s2": 10, "toy": 3}
  cases = {s: _random_case(10 + i, batch=2, channels=c) for i, (s, c) in enumerate(channels.items())}
  recon, target, mask = ({s: cases[s][j] for s in channels} for j in range(3))
  custom = dict(lambda_mae=0.5, lambda_ssim=0.1, lambda_sam=0.4, center_mae=3.0)
  with jax.default_matmul_precision("highest"):
    got = losses.fusion_loss(recon, target, mask, weights={"toy": sensors.STAGE1_LOSS})
    expected = {s: losses.context_aware_loss(*cases[s], **sensors.get(s).fusion_loss) for s in ("s1", "s2")}
    expected["toy"] = losses.context_aware_loss(*cases["toy"], lambda_mae=1.0, lambda_ssim=0.0, lambda_sam=0.0,
                                                center_mae=1.0)
    got_custom = losses.fusion_loss(recon, target, mask, weights={"toy": custom})
    toy_custom = losses.context_aware_loss(*cases["toy"], **custom)
  for s in channels:
    for term in losses.TERMS:
      np.testing.assert_array_equal(got[f"{s}/{term}"], expected[s][term], err_msg=f"{s}/{term}")
  for term in losses.TERMS:
    np.testing.assert_array_equal(got_custom[f"toy/{term}"], toy_custom[term])
  assert float(got["s1/sam"]) == 0.0 and float(got["s2/sam"]) > 0.0 and float(got["toy/ssim"]) == 0.0
  np.testing.assert_allclose(got["total"], np.mean([expected[s]["total"] for s in channels]), rtol=1e-6)
  np.testing.assert_allclose(got["val_metric"], np.mean([expected[s]["center"] for s in channels]), rtol=1e-6)
  np.testing.assert_array_equal(got_custom["s2/total"], got["s2/total"])
  with pytest.raises(KeyError, match="unknown sensor 'toy'"):
    losses.fusion_loss(recon, target, mask)
  with pytest.raises(ValueError):
    losses.fusion_loss(recon, {"s1": target["s1"]}, mask)
  with pytest.raises(ValueError):
    losses.fusion_loss(recon, target, mask, weights={"s3": custom})
