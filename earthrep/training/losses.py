"""Context-aware reconstruction loss and the S1/S2 fusion objective (ARCHITECTURE.md section d).

The loss weights every element of a 15x15x11 patch reconstruction by a temporal factor (1 at the centre
frame, 0.1^d away from it) times a spatial factor (1 at the centre pixel, 0.01*0.1^(d-1) on Chebyshev ring
d), so the centre pixel of the centre frame dominates; `center_mae` re-weights that pixel. Terms: masked
weighted MAE, unmasked SSIM (7x7 Gaussian window) and a weighted spectral angle (SAM); `center` is the
model-selection metric. `reference=True` reproduces the reference `WeightedMaskedLoss` value for value;
the default mode differs only in `center` (see `context_aware_loss`). Everything is a pure jnp function
(jit-able; the lambdas, `center_mae` and `reference` are static Python values). Gradients are NaN-free at
the spots where a naive formulation breaks (acos at cos = +-1, a norm of a zero vector, an empty mask).

Dimension letters: b batch, t frame (11, centre 5), h/w row/column (15, centre 7), c channel, k window tap.
Arrays are channels-last `(B, T, H, W, C)`; the reference's `(B, T, C, H, W)` appears only in tests.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from earthrep import schema, sensors

TERMS: tuple[str, ...] = ("total", "mae", "ssim", "sam", "center")

# Keyword arguments of `context_aware_loss` per use (ARCHITECTURE.md section d, "Weights in use") are in the
# sensor registry: `sensors.STAGE1_LOSS` and each sensor's `fusion_loss`.
# The reference class defaults; no released script trains with them (used by the parity vectors).
CLASS_DEFAULT_WEIGHTS: dict[str, float] = dict(lambda_mae=0.33, lambda_ssim=0.02, lambda_sam=0.65,
                                               center_mae=1.0)

SSIM_WINDOW = 7
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2
SAM_EPS = 1e-8
# Below 1 - 1e-7 the float32 cosine resolves the angle; beyond it acos' is not used (see clamped_acos).
_ACOS_GRAD_EPS = 1e-7


def _spatial_weights_np() -> np.ndarray:
  idx_H = np.arange(schema.PATCH_PX)
  ring_HW = np.maximum(np.abs(idx_H[:, None] - schema.CENTRE_PX), np.abs(idx_H[None, :] - schema.CENTRE_PX))
  # float64 then float32 reproduces the stored reference map bit for bit.
  return np.where(ring_HW == 0, 1.0, 0.01 * 0.1 ** (ring_HW - 1.0)).astype(np.float32)


def _temporal_weights_np() -> np.ndarray:
  dist_T = np.abs(np.arange(schema.PATCH_FRAMES) - schema.CENTRE_FRAME)
  return np.where(dist_T == 0, 1.0, 0.1 ** dist_T.astype(np.float64)).astype(np.float32)


def spatial_weights() -> jax.Array:
  """(H, W) = (15, 15) float32: 1 at the centre pixel, 0.01 * 0.1^(d-1) on Chebyshev ring d >= 1."""
  return jnp.asarray(_spatial_weights_np())


def temporal_weights() -> jax.Array:
  """(T,) = (11,) float32: 1 at the centre frame, 0.1^d at frame distance d."""
  return jnp.asarray(_temporal_weights_np())


def _combined_weights(center_mae: float) -> np.ndarray:
  """(T, H, W) float32 weights tau[t] * s[h, w], with the single 1.0 entry set to `center_mae`.

  A trace-time constant (numpy), so that its sum can be taken exactly: XLA sums float32 sequentially, and
  adding the ~1e-7 ring weights to an accumulator near 2 drops them (a 1.6e-5 relative error).
  """
  weight_THW = _temporal_weights_np()[:, None, None] * _spatial_weights_np()[None, :, :]
  weight_THW[schema.CENTRE_FRAME, schema.CENTRE_PX, schema.CENTRE_PX] = center_mae
  return weight_THW


@jax.jit
def _pairwise_sum(x: jax.Array) -> jax.Array:
  """Sum of all elements by pairwise (tree) summation, error O(log n) ulp as in torch/numpy.

  A plain `jnp.sum` is one sequential XLA reduce (nested per-axis sums get merged into it), which loses
  the small context weights next to the centre term and drifts with the batch size.
  """
  flat = x.reshape(-1)
  n = flat.shape[0]
  flat = jnp.pad(flat, (0, (1 << max(n - 1, 0).bit_length()) - n))
  while flat.shape[0] > 1:
    half = flat.shape[0] // 2
    flat = flat[:half] + flat[half:]
  return flat[0]


@jax.custom_jvp
def clamped_acos(cos: jax.Array) -> jax.Array:
  """acos(clip(cos, -1, 1)) with a finite derivative everywhere.

  The value is exactly the reference's. Where |cos| >= 1 - 1e-7 the derivative is taken as 0 instead of
  -1/sqrt(1 - cos^2) (infinite at +-1): there the float32 cosine no longer resolves the angle, and at a
  perfect reconstruction the angle sits at its minimum anyway.
  """
  return jnp.arccos(jnp.clip(cos, -1.0, 1.0))


@clamped_acos.defjvp
def _clamped_acos_jvp(primals, tangents):
  (cos,), (cos_dot,) = primals, tangents
  inside = jnp.abs(cos) < 1.0 - _ACOS_GRAD_EPS
  cos_safe = jnp.where(inside, cos, 0.0)
  slope = jnp.where(inside, -jax.lax.rsqrt(1.0 - cos_safe * cos_safe), 0.0)
  return clamped_acos(cos), slope * cos_dot


def _safe_norm(x: jax.Array, axis: int) -> jax.Array:
  """Euclidean norm whose gradient at the zero vector is 0, not NaN (double-where)."""
  sq = jnp.sum(x * x, axis=axis)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _gaussian_window() -> np.ndarray:
  """(K, K) window: outer product of the normalised 1-D Gaussian taps at offsets -3..3."""
  offsets = np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2
  taps_K = np.exp(-(offsets ** 2) / (2.0 * SSIM_SIGMA ** 2)).astype(np.float32)
  taps_K = taps_K / taps_K.sum()
  return np.outer(taps_K, taps_K).astype(np.float32)


def _ssim_term(output_BTHWC: jax.Array, target_BTHWC: jax.Array) -> jax.Array:
  """1 - mean SSIM map; per frame and channel, 7x7 Gaussian, zero padding (no mask, as the reference)."""
  b, t, h, w, c = output_BTHWC.shape
  o_NHWC = output_BTHWC.reshape(b * t, h, w, c)
  x_NHWC = target_BTHWC.reshape(b * t, h, w, c)
  # One depthwise conv filters all five statistics at once.
  stacked_NHWF = jnp.concatenate([o_NHWC, x_NHWC, o_NHWC * o_NHWC, x_NHWC * x_NHWC, o_NHWC * x_NHWC], axis=-1)
  n_feat = stacked_NHWF.shape[-1]
  kernel_KK1F = jnp.broadcast_to(jnp.asarray(_gaussian_window())[:, :, None, None],
                                 (SSIM_WINDOW, SSIM_WINDOW, 1, n_feat))
  pad = SSIM_WINDOW // 2
  filtered_NHWF = jax.lax.conv_general_dilated(
      stacked_NHWF, kernel_KK1F, window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=n_feat,
      precision=jax.lax.Precision.HIGHEST)  # TF32/bf16 would cost ~1e-3 of the SSIM value on GPU/TPU.
  mu_o, mu_x, sq_o, sq_x, prod_ox = jnp.split(filtered_NHWF, 5, axis=-1)
  var_o = sq_o - mu_o * mu_o
  var_x = sq_x - mu_x * mu_x
  cov_ox = prod_ox - mu_o * mu_x
  ssim_map = ((2.0 * mu_o * mu_x + SSIM_C1) * (2.0 * cov_ox + SSIM_C2)) / (
      (mu_o * mu_o + mu_x * mu_x + SSIM_C1) * (var_o + var_x + SSIM_C2))
  return 1.0 - _pairwise_sum(ssim_map) / ssim_map.size


def _sam_term(output_BTHWC: jax.Array, target_BTHWC: jax.Array, mask_BTHWC: jax.Array,
              weight_THW: np.ndarray) -> jax.Array:
  """Weighted mean spectral angle over positions whose channels are all valid; 0 if there are none."""
  valid_BTHW = jnp.all(mask_BTHWC, axis=-1)
  # Zeroing invalid positions keeps NaN targets there out of the gradient; they are excluded below.
  o_BTHWC = jnp.where(valid_BTHW[..., None], output_BTHWC, 0.0)
  x_BTHWC = jnp.where(valid_BTHW[..., None], target_BTHWC, 0.0)
  dot_BTHW = jnp.sum(o_BTHWC * x_BTHWC, axis=-1)
  cos_BTHW = dot_BTHW / (_safe_norm(x_BTHWC, -1) * _safe_norm(o_BTHWC, -1) + SAM_EPS)
  angle_BTHW = clamped_acos(cos_BTHW)
  counted_BTHW = jnp.where(valid_BTHW, jnp.broadcast_to(weight_THW, valid_BTHW.shape), 0.0)
  weight_sum = _pairwise_sum(counted_BTHW)
  nonzero = weight_sum > 0
  return jnp.where(nonzero, _pairwise_sum(angle_BTHW * counted_BTHW) / jnp.where(nonzero, weight_sum, 1.0), 0.0)


def context_aware_loss(output_BTHWC: jax.Array, target_BTHWC: jax.Array, mask_BTHWC: jax.Array, *,
                       lambda_mae: float = 1.0, lambda_ssim: float = 0.0, lambda_sam: float = 0.0,
                       center_mae: float = 1.0, reference: bool = False) -> dict[str, jax.Array]:
  """The reference `WeightedMaskedLoss` on channels-last patches; returns float32 scalars `TERMS`.

  `target_BTHWC` is the filled patch (invalid elements replaced by the channel mean, as the network
  input); `mask_BTHWC` is True where the element was valid before filling. With w = tau[t] * s[h, w]
  (centre entry = `center_mae`) and w_hat = w / sum_{t,h,w,c} w:
    mae    = sum over valid elements of w_hat * |o - x|, divided by B;
    ssim   = 1 - mean SSIM map over every element (mask not used; 7x7 Gaussian sigma 1.5, zero padding);
    sam    = sum theta * w / sum w over positions (b, t, h, w) whose channels are all valid, with
             cos = o.x / (|x||o| + 1e-8) clipped to [-1, 1] and the unnormalised w; 0 if none counts;
    total  = lambda_mae * mae + lambda_ssim * ssim + lambda_sam * sam; a term whose lambda <= 0 is not
             computed and reported as 0.0.
  Kept from the reference in both modes, because they define the paper's objective: the normaliser of
  w_hat counts masked elements, so fewer valid elements means a smaller loss; mae is divided by B on top
  of the per-sample normalisation; SSIM ignores the mask (filled values count as targets).

  Differences from the reference, in both modes: its guard paths (a NaN anywhere in the output, or a mask
  without any True, return a bare scalar 0 that callers fail to unpack) are not reproduced: NaN outputs
  propagate and an empty mask gives mae = sam = 0 with finite gradients; disabled terms are float 0.0,
  not int 0; gradients are finite at cos = +-1 (see `clamped_acos`) and at zero spectra.

  Difference in the default mode (`reference=False`) only: `center` averages |o - x| over the valid
  elements of the centre pixel of the centre frame (0 if none is valid). The reference (`reference=True`)
  averages over every (b, c) at the centre, so an invalid, mean-filled centre channel counts as ground
  truth in the model-selection metric. Every other term is identical in both modes.
  """
  if not (output_BTHWC.shape == target_BTHWC.shape == mask_BTHWC.shape) or output_BTHWC.ndim != 5:
    raise ValueError(f"output {output_BTHWC.shape}, target {target_BTHWC.shape} and mask {mask_BTHWC.shape} "
                     "must share one (B, T, H, W, C) shape")
  _, t, h, w, c = output_BTHWC.shape
  if (t, h, w) != (schema.PATCH_FRAMES, schema.PATCH_PX, schema.PATCH_PX):
    raise ValueError(f"patches must be {schema.PATCH_FRAMES}x{schema.PATCH_PX}x{schema.PATCH_PX} (T, H, W), "
                     f"got {(t, h, w)}")
  output_BTHWC = jnp.asarray(output_BTHWC, jnp.float32)
  target_BTHWC = jnp.asarray(target_BTHWC, jnp.float32)
  mask_BTHWC = jnp.asarray(mask_BTHWC).astype(bool)
  batch = output_BTHWC.shape[0]
  weight_THW = _combined_weights(center_mae)
  zero = jnp.zeros((), jnp.float32)
  terms = dict(mae=zero, ssim=zero, sam=zero)

  if lambda_mae > 0:
    # where() before abs(): a NaN target at a masked element must not reach the gradient.
    diff_BTHWC = jnp.where(mask_BTHWC, output_BTHWC - target_BTHWC, 0.0)
    normaliser = np.float32(c * weight_THW.astype(np.float64).sum())
    terms["mae"] = _pairwise_sum(jnp.abs(diff_BTHWC) * weight_THW[..., None]) / normaliser / batch
  if lambda_ssim > 0:
    terms["ssim"] = _ssim_term(output_BTHWC, target_BTHWC)
  if lambda_sam > 0:
    terms["sam"] = _sam_term(output_BTHWC, target_BTHWC, mask_BTHWC, weight_THW)

  centre = (slice(None), schema.CENTRE_FRAME, schema.CENTRE_PX, schema.CENTRE_PX)
  if reference:
    center = jnp.mean(jnp.abs(output_BTHWC[centre] - target_BTHWC[centre]))
  else:
    center = centre_mae(output_BTHWC[centre], target_BTHWC, mask_BTHWC)

  total = zero
  for name, lam in (("mae", lambda_mae), ("ssim", lambda_ssim), ("sam", lambda_sam)):
    if lam > 0:
      total = total + lam * terms[name]
  return dict(total=total, **terms, center=center.astype(jnp.float32))


def centre_mae(centre_BC: jax.Array, target_BTHWC: jax.Array, mask_BTHWC: jax.Array) -> jax.Array:
  """MAE of a (B, C) answer for the centre pixel of the centre frame over its valid target values (0 if
  none)."""
  at = (slice(None), schema.CENTRE_FRAME, schema.CENTRE_PX, schema.CENTRE_PX)
  valid_BC = mask_BTHWC[at]
  abs_BC = jnp.abs(jnp.where(valid_BC, centre_BC - target_BTHWC[at], 0.0))
  count = jnp.sum(valid_BC)
  return jnp.where(count > 0, jnp.sum(abs_BC) / jnp.maximum(count, 1), 0.0).astype(jnp.float32)


def fusion_loss(recon: Mapping[str, jax.Array], target: Mapping[str, jax.Array], mask: Mapping[str, jax.Array],
                *, weights: Mapping[str, Mapping[str, float]] | None = None, reference: bool = False,
                centre: Mapping[str, jax.Array] | None = None, centre_weight: float = 1.0
                ) -> dict[str, jax.Array]:
  """Stage-2 objective: mean over sensors of `context_aware_loss` totals, plus the selection metric.

  Each mapping goes sensor name -> `(B, T, H, W, C_sensor)`. A sensor's weights come from `weights`, else
  its registered `fusion_loss` (`earthrep.sensors`). Returns `total` (0.5 S1 + 0.5 S2 for the two
  reference sensors), `val_metric` (mean of the per-sensor `center`) and `<sensor>/<term>` for every term.
  `centre` (sensor -> (B, C), a fusion model's centre heads) adds `centre_weight` times the heads' MAE at
  the centre pixel of the centre frame (`<sensor>/head`) to each sensor's term, and the heads' MAE replaces
  the decoder's `center` in `val_metric`: the head is then the model's answer for that pixel.
  """
  names = list(recon)
  if not names or set(names) != set(target) or set(names) != set(mask):
    raise ValueError(f"recon {sorted(recon)}, target {sorted(target)} and mask {sorted(mask)} must name the "
                     "same, non-empty set of sensors")
  centre = dict(centre or {})
  if set(centre) - set(names):
    raise ValueError(f"centre heads given for sensors {sorted(set(centre) - set(names))} not in {names}")
  weights = dict(weights or {})
  unknown = set(weights) - set(names)
  if unknown:
    raise ValueError(f"weights given for sensors {sorted(unknown)} that are not in {names}")
  out: dict[str, jax.Array] = {}
  for sensor in names:
    sensor_weights = weights[sensor] if sensor in weights else sensors.get(sensor).fusion_loss
    terms = context_aware_loss(recon[sensor], target[sensor], mask[sensor], reference=reference,
                               **sensor_weights)
    if sensor in centre:
      terms["head"] = centre_mae(centre[sensor], target[sensor], mask[sensor])
      terms["total"] = terms["total"] + centre_weight * terms["head"]
    out.update({f"{sensor}/{name}": value for name, value in terms.items()})
  out["total"] = sum(out[f"{s}/total"] for s in names) / len(names)
  out["val_metric"] = sum(out[f"{s}/head" if s in centre else f"{s}/center"] for s in names) / len(names)
  return out
