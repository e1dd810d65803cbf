"""Compares earthrep's models and losses with the reference parity vectors.

`run_parity(vectors, model)` is what `python -m earthrep.parity --vectors FILE.npz --model s2_ae` runs. Two
kinds of vector files are read: the full ones (../shared/reference/vectors, with `param/*` tensors) and
the compact ones vendored in tests/data/parity (from ../shared/reference/vectors_compact: no `param/*`,
the parameters follow the recipe of their README, `recipe_state_dict`). The parameters go through
`earthrep.interop.torch_import` (aliases of shared tensors must be equal); the file's `meta/config` must
describe the requested model (an S1 file is refused for s2_ae), and its inputs must be present with the
shapes that model takes; a file with nothing to compare is refused too. The model is built from `meta/config` in
compatibility mode (`reference_batch_mixing=True`), runs the `inputs/*` (reference (B, T, C, H, W)
transposed to channels-last) under float32 'highest' matmul precision, and every `outputs/*`, `inter/*`,
`check/*` and `loss/*` array of the file is compared with the tolerances of vectors/README.md. Any batch
size works.
"""
from __future__ import annotations

import json
import zipfile
import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from earthrep import sensors
from earthrep.errors import EarthrepError
from earthrep.interop import torch_import
from earthrep.models.autoencoder import TransformerAE
from earthrep.models.fusion import FusionModel
from earthrep.schema import PATCH_FRAMES, PATCH_PX
from earthrep.training import losses

MODELS = ("s1_ae", "s2_ae", "fusion")
COMPARED = ("outputs/", "inter/", "check/", "loss/")
_WEIGHT_KEYS = ("lambda_mae", "lambda_ssim", "lambda_sam", "center_mae")


class ParityError(EarthrepError):
  """A vector file that cannot be compared: unreadable, or made for another model."""


def _weights(kwargs: dict) -> tuple[float, float, float, float]:
  return tuple(float(kwargs[k]) for k in _WEIGHT_KEYS)


# (lambda_mae, lambda_ssim, lambda_sam, center_mae) of every loss group in the vectors (README.md): the
# stage-1 objective, the reference class defaults, the S2 fusion weights, and the per-sensor fusion weights.
LOSS_GROUPS = {
    "stage1": _weights(sensors.STAGE1_LOSS), "full": _weights(losses.CLASS_DEFAULT_WEIGHTS),
    "center175": _weights(sensors.get("s2").fusion_loss),
    **{s: _weights(sensors.get(s).fusion_loss) for s in ("s1", "s2")},
}
TOL_ARRAYS, TOL_LOSS, TOL_SAM = 1e-5, 1e-6, 1e-4


def tolerance(name: str) -> float:
  if not name.startswith("loss/"):
    return TOL_ARRAYS
  parts = name.split("/")
  if parts[-1] == "sam":
    return TOL_SAM
  if parts[-1] == "total":   # SAM-containing totals get the SAM tolerance
    group = parts[1] if len(parts) == 3 else "s2"   # loss/total = 0.5 s1 + 0.5 s2
    return TOL_SAM if LOSS_GROUPS.get(group, (0, 0, 1, 0))[2] > 0 else TOL_LOSS
  return TOL_LOSS


def _nhwc(x_BTCHW: np.ndarray) -> jax.Array:
  return jnp.asarray(np.transpose(x_BTCHW, (0, 1, 3, 4, 2)))


def _nchw(x_BTHWC: Any) -> np.ndarray:
  return np.transpose(np.asarray(x_BTHWC), (0, 1, 4, 2, 3))


def _loss_terms(prefix: str, group: str, out_BTHWC, x_BTHWC, mask_BTHWC) -> dict[str, Any]:
  lam_mae, lam_ssim, lam_sam, center = LOSS_GROUPS[group]
  terms = losses.context_aware_loss(out_BTHWC, x_BTHWC, mask_BTHWC, lambda_mae=lam_mae, lambda_ssim=lam_ssim,
                                    lambda_sam=lam_sam, center_mae=center, reference=True)
  return {f"{prefix}{group}/{k}": v for k, v in terms.items()}


def _ae_arrays(vec: Any, cfg: dict) -> dict[str, Any]:
  model = TransformerAE(channels=cfg["channels"], bottleneck=cfg["dbottleneck"],
                        reduced_tokens=cfg["num_reduced_tokens"], d_model=cfg.get("d_model", 256),
                        frames=cfg.get("frames", 11), max_position=cfg.get("max_position", 200),
                        reference_batch_mixing=True)
  params = {"params": _load(model, vec)}
  x_BTHWC, mask_BTHWC = _nhwc(vec["inputs/x"]), _nhwc(vec["inputs/mask"])
  gaps_BG = jnp.asarray(vec["inputs/time_gaps"])
  run = jax.jit(lambda p, x, g: model.apply(p, x, g, train=False, mutable=["intermediates"]))
  (recon, z), state = run(params, x_BTHWC, gaps_BG)
  inter = {k: v[0] for k, v in state["intermediates"].items()}
  out = {"outputs/z": z, "outputs/recon": _nchw(recon)}
  out.update({f"inter/{k}": v for k, v in inter.items()})
  out["inter/enc_dimred"] = _nchw(inter["enc_dimred"])
  (recon1, z1), _ = run(params, x_BTHWC[:1], gaps_BG[:1])
  out.update({"check/z_sample0_alone": z1, "check/recon_sample0_alone": _nchw(recon1)})
  for group in ("stage1", "full", "center175"):
    out.update(_loss_terms("loss/", group, recon, x_BTHWC, mask_BTHWC))
  out["loss/spatial_weight_map"] = losses.spatial_weights()
  out["loss/temporal_weights"] = losses.temporal_weights()
  return out


def _fusion_arrays(vec: Any, cfg: dict) -> dict[str, Any]:
  aes = tuple(TransformerAE(channels=cfg[s]["channels"], bottleneck=cfg[s]["dbottleneck"],
                            reduced_tokens=cfg[s]["num_reduced_tokens"], reference_batch_mixing=True)
              for s in ("s1", "s2"))
  model = FusionModel(aes, ("s1", "s2"), bottleneck=cfg["dbottleneck"], d_model=cfg.get("d_fuse", 128),
                      heads=cfg.get("nhead", 4), ffn=cfg.get("dim_ff", 256), layers=cfg.get("num_layers", 2),
                      max_position=cfg.get("max_position", 350))
  params = {"params": _load(model, vec)}
  x_BTHWC, mask_BTHWC = _nhwc(vec["inputs/x"]), _nhwc(vec["inputs/mask"])
  c2 = aes[1].channels   # fused tensor: S2 channels first, then S1
  x = {"s1": x_BTHWC[..., c2:], "s2": x_BTHWC[..., :c2]}
  mask = {"s1": mask_BTHWC[..., c2:], "s2": mask_BTHWC[..., :c2]}
  gaps = {"s1": jnp.asarray(vec["inputs/gaps_s1"]), "s2": jnp.asarray(vec["inputs/gaps_s2"])}
  delta_B1 = np.asarray(vec["inputs/delta_days"], np.int32)
  offsets_BK = sensors.fusion_offsets(model.sensors, {"delta_days": delta_B1}, len(delta_B1))   # S1 0, S2 delta

  def run(p, xs, gs, off):
    return model.apply(p, {s: (xs[s], gs[s]) for s in model.sensors}, off, train=False,
                       mutable=["intermediates"])
  res, state = jax.jit(run)(params, x, gaps, offsets_BK)
  out = {"outputs/zf": res["zf"]}
  for s in model.sensors:
    out.update({f"outputs/z_{s}": res["z"][s], f"outputs/b_{s}": res["b"][s],
                f"outputs/y_{s}": _nchw(res["recon"][s])})
  out.update({f"inter/{k}": v[0] for k, v in state["intermediates"].items() if k in
              ("fuser_in", "fuser_out", "pooled", "pooled_normed")})
  embed = jax.jit(lambda p, xs, gs, off: model.apply(p, {s: (xs[s], gs[s]) for s in model.sensors}, off,
                                                      method=FusionModel.embed))
  out["check/zf_sample0_alone"] = embed(params, {s: v[:1] for s, v in x.items()},
                                        {s: v[:1] for s, v in gaps.items()}, offsets_BK[:1])
  for s in model.sensors:
    out.update(_loss_terms("loss/", s, res["recon"][s], x[s], mask[s]))
  out["loss/total"] = 0.5 * out["loss/s1/total"] + 0.5 * out["loss/s2/total"]
  out["loss/val_metric"] = (out["loss/s1/center"] + out["loss/s2/center"]) / 2
  return out


def recipe_state_dict(vec: Any) -> dict[str, np.ndarray]:
  """The reference state dict of a compact vector file, built by the recipe of its README: per unaliased
  key, rng = default_rng([seed, crc32(key)]); 1-D '...weight' = 1 + 0.1 N(0, 1); other 1-D = 0.1 U(-1, 1);
  else U(-1, 1) / sqrt(prod(shape[1:])); float32. An aliased key takes the value of the key it names."""
  seed = int(json.loads(str(vec["meta/config"]))["seed"])
  out: dict[str, np.ndarray] = {}
  for key, shape, alias in json.loads(str(vec["meta/state_dict"])):
    if alias:
      out[key] = out[alias]
      continue
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    shape = tuple(int(n) for n in shape)
    if len(shape) == 1 and key.endswith("weight"):
      value = 1 + 0.1 * rng.standard_normal(shape)
    elif len(shape) == 1:
      value = 0.1 * rng.uniform(-1, 1, shape)
    else:
      value = rng.uniform(-1, 1, shape) / np.sqrt(np.prod(np.asarray(shape[1:], np.float64)))
    out[key] = value.astype(np.float32)
  return out


def _load(model: Any, vec: Any) -> dict:
  state_dict = {k[len("param/"):]: vec[k] for k in vec.files if k.startswith("param/")}
  if not state_dict and "meta/state_dict" in vec.files:
    state_dict = recipe_state_dict(vec)
  return torch_import.params_from_state_dict(model, state_dict)


_INPUTS = {"ae": ("inputs/x", "inputs/mask", "inputs/time_gaps"),
           "fusion": ("inputs/x", "inputs/mask", "inputs/gaps_s1", "inputs/gaps_s2", "inputs/delta_days")}
_AE_FIELDS = ("channels", "dbottleneck", "num_reduced_tokens")


def _channels(vectors: str, cfg: dict, where: str) -> int:
  try:
    return int(cfg[where.rsplit(".", 1)[-1]])
  except (KeyError, TypeError, ValueError):
    raise ParityError(f"{vectors}: meta/config: {where} {cfg.get(where.rsplit('.', 1)[-1])!r}: expected a "
                      "number of channels") from None


def _check_inputs(vectors: str, vec: Any, cfg: dict, model: str) -> None:
  """Refuses missing inputs or config fields, and inputs whose shapes do not fit the model."""
  kind = "fusion" if model == "fusion" else "ae"
  groups = {s: cfg[s] for s in ("s1", "s2")} if kind == "fusion" else {"": cfg}
  for name, group in groups.items():
    if not isinstance(group, dict):
      raise ParityError(f"{vectors}: meta/config: {name}: expected a dict of model fields")
    missing = [f"{name}.{f}".lstrip(".") for f in _AE_FIELDS if f not in group]
    if missing:
      raise ParityError(f"{vectors}: meta/config: missing field(s) {missing}")
  if kind == "fusion" and "dbottleneck" not in cfg:
    raise ParityError(f"{vectors}: meta/config: missing field dbottleneck")
  missing = [k for k in _INPUTS[kind] if k not in vec.files]
  if missing:
    raise ParityError(f"{vectors}: {missing[0]}: missing array (a parity file holds {list(_INPUTS[kind])})")
  channels = sum(_channels(vectors, g, f"{n}.channels".lstrip(".")) for n, g in groups.items())
  x = vec["inputs/x"]
  want = (PATCH_FRAMES, channels, PATCH_PX, PATCH_PX)
  if x.ndim != 5 or tuple(x.shape[1:]) != want:
    raise ParityError(f"{vectors}: inputs/x: shape {tuple(x.shape)}, expected (batch, {', '.join(map(str, want))})"
                      " (reference layout B, T, C, H, W)")
  if vec["inputs/mask"].shape != x.shape:
    raise ParityError(f"{vectors}: inputs/mask: shape {tuple(vec['inputs/mask'].shape)}, "
                      f"expected {tuple(x.shape)}")
  for key in _INPUTS[kind][2:4]:
    if vec[key].shape != (x.shape[0], PATCH_FRAMES - 1):
      raise ParityError(f"{vectors}: {key}: shape {tuple(vec[key].shape)}, "
                        f"expected ({x.shape[0]}, {PATCH_FRAMES - 1})")


def _check_kind(vectors: str, cfg: dict, model: str) -> None:
  """Refuses a vector file made for another model (its meta/config describes the model it holds)."""
  if not isinstance(cfg, dict):
    raise ParityError(f"{vectors}: meta/config: {type(cfg).__name__}, expected a JSON object")
  is_fusion = "s1" in cfg and "s2" in cfg
  if model == "fusion" and not is_fusion:
    raise ParityError(f"{vectors}: meta/config: an autoencoder's vectors (channels {cfg.get('channels')}), "
                      "not fusion")
  if model != "fusion":
    if is_fusion:
      raise ParityError(f"{vectors}: meta/config: fusion vectors, not {model}")
    want = sensors.get(model.split("_")[0]).stage1["channels"]
    if _channels(vectors, cfg, "channels") != want:
      raise ParityError(f"{vectors}: meta/config: channels {cfg.get('channels')}, but {model} has {want}")


def run_parity(vectors: str, model: str) -> list[tuple[str, float, float, bool]]:
  """(name, max_abs_err, tol, ok) for every compared array of the file; err is nan if ours is missing."""
  if model not in MODELS:
    raise ParityError(f"model {model!r}: expected one of {MODELS}")
  try:
    vec = np.load(vectors)
    cfg = json.loads(str(vec["meta/config"]))
  except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
    raise ParityError(f"{vectors}: unreadable parity vectors ({type(e).__name__}: {e})") from e
  _check_kind(vectors, cfg, model)
  _check_inputs(vectors, vec, cfg, model)
  compared = sorted(k for k in vec.files if k.startswith(COMPARED))
  if not compared:
    raise ParityError(f"{vectors}: holds no {', '.join(p + '*' for p in COMPARED)} arrays to compare")
  build: Callable = _fusion_arrays if model == "fusion" else _ae_arrays
  try:
    with jax.default_matmul_precision("highest"):
      ours = build(vec, cfg)
  except torch_import.StateDictError as e:
    raise ParityError(f"{vectors}: param/* or meta/state_dict: {e}") from None
  rows = []
  for name in compared:
    want = np.asarray(vec[name], np.float64)
    tol = tolerance(name)
    got = ours.get(name)
    got = None if got is None else np.asarray(got, np.float64)
    if got is None or got.shape != want.shape:
      rows.append((name, float("nan"), tol, False))
      continue
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    rows.append((name, err, tol, bool(err <= tol)))
  return rows
