"""Compares earthrep's models and losses with the reference parity vectors (../shared/reference/vectors).

  python -m earthrep.parity --vectors ../shared/reference/vectors/s2_ae.npz --model s2_ae

Loads the `param/*` tensors through `earthrep.models.torch_import` (aliases of shared tensors must be
equal), builds the model from `meta/config` in compatibility mode (`reference_batch_mixing=True`), runs the
`inputs/*` (reference (B, T, C, H, W) transposed to channels-last) under float32 'highest' matmul
precision, and compares every `outputs/*`, `inter/*`, `check/*` and `loss/*` array of the file with the
tolerances of vectors/README.md. Prints `name  max_abs_err  tol  ok|FAIL` per array and a final
`parity: N/N arrays within tolerance`; exits 0 only if every array passes. Any batch size works.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from earthrep import losses
from earthrep.models import torch_import
from earthrep.models.autoencoder import TransformerAE
from earthrep.models.fusion import FusionModel

MODELS = ("s1_ae", "s2_ae", "fusion")
COMPARED = ("outputs/", "inter/", "check/", "loss/")

# (lambda_mae, lambda_ssim, lambda_sam, center_mae) of every loss group in the vectors (README.md).
LOSS_GROUPS = {
    "stage1": (1.0, 0.0, 0.0, 1.0), "full": (0.33, 0.02, 0.65, 1.0), "center175": (0.665, 0.02, 0.315, 1.75),
    "s1": (1.0, 0.0, 0.0, 1.5), "s2": (0.665, 0.02, 0.315, 1.75),
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
  delta_B1 = jnp.asarray(vec["inputs/delta_days"], jnp.int32)
  offsets_BK = jnp.concatenate([jnp.zeros_like(delta_B1), delta_B1], axis=1)   # S1 row 0, S2 row delta

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


def _load(model: Any, vec: Any) -> dict:
  state_dict = {k[len("param/"):]: vec[k] for k in vec.files if k.startswith("param/")}
  return torch_import.params_from_state_dict(model, state_dict)


def run_parity(vectors: str, model: str) -> list[tuple[str, float, float, bool]]:
  """(name, max_abs_err, tol, ok) for every compared array of the file; err is nan if ours is missing."""
  if model not in MODELS:
    raise ValueError(f"model {model!r}: expected one of {MODELS}")
  vec = np.load(vectors)
  cfg = json.loads(str(vec["meta/config"]))
  build: Callable = _fusion_arrays if model == "fusion" else _ae_arrays
  with jax.default_matmul_precision("highest"):
    ours = build(vec, cfg)
  rows = []
  for name in sorted(k for k in vec.files if k.startswith(COMPARED)):
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


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--vectors", required=True, help="a parity .npz (s1_ae.npz, s2_ae.npz or fusion.npz)")
  ap.add_argument("--model", required=True, choices=MODELS)
  args = ap.parse_args(argv)
  rows = run_parity(args.vectors, args.model)
  width = max(len(r[0]) for r in rows)
  for name, err, tol, ok in rows:
    print(f"{name:<{width}}  {err:.3e}  {tol:.0e}  {'ok' if ok else 'FAIL'}")
  n_ok = sum(r[3] for r in rows)
  print(f"parity: {n_ok}/{len(rows)} arrays within tolerance")
  return 0 if n_ok == len(rows) and rows else 1


if __name__ == "__main__":
  sys.exit(main())
