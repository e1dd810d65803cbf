"""Converts reference PyTorch weights into an earthrep Orbax checkpoint that the trainers can load.

  python -m earthrep.convert --state-dict fuse_model.ckpt --model fusion --out runs/converted/fusion

Reads a PyTorch Lightning `.ckpt` (a dict holding `state_dict`; a common `model.` key prefix is
stripped), a raw `state_dict` saved with `torch.save` (both need the `torch` extra), or an `.npz` of
`param/<torch key>` arrays (as in the parity vectors; an `.npz` without `param/` keys is read as plain
torch keys). The tensors are mapped by `earthrep.models.torch_import` (strict: a missing, unexpected or
misshaped key raises naming it; the fusion's unused `bottleneck_expander` is ignored). Writes
`<out>/0/params` with `orbax.checkpoint.CheckpointManager` and `<out>/model_config.json` in the trainers'
format (`kind`, `sensor`, `model` = the module fields); `load_params(<out>)` rebuilds both. Presets:
s1_ae = (C 2, d_b 2, N 7), s2_ae = (C 10, d_b 9, N 6), fusion = both + FusedS1S2 (d_b 7). The encoder
attends per sample unless `--reference-batch-mixing` (bit-exact reference behaviour, batch-dependent).
"""
from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import orbax.checkpoint as ocp

from earthrep import checkpoint
from earthrep.models import torch_import
from earthrep.models.autoencoder import TransformerAE, ae_config, ae_from_config
from earthrep.models.fusion import FusionModel, fusion_config, fusion_from_config

PRESETS = {"s1_ae": dict(channels=2, bottleneck=2, reduced_tokens=7),
           "s2_ae": dict(channels=10, bottleneck=9, reduced_tokens=6)}
MODELS = ("s1_ae", "s2_ae", "fusion")
PARAM_PREFIX = "param/"


class ConvertError(ValueError):
  pass


def preset_model(name: str, *, reference_batch_mixing: bool = False,
                 reduced_tokens: int | None = None) -> TransformerAE | FusionModel:
  if name not in MODELS:
    raise ConvertError(f"model {name!r}: expected one of {MODELS}")
  if name == "fusion":
    if reduced_tokens is not None:
      raise ConvertError("--reduced-tokens applies to s1_ae / s2_ae only")
    aes = tuple(TransformerAE(**PRESETS[f"{s}_ae"], reference_batch_mixing=reference_batch_mixing)
                for s in ("s1", "s2"))
    return FusionModel(aes, ("s1", "s2"), bottleneck=7)
  kwargs = dict(PRESETS[name])
  if reduced_tokens is not None:
    kwargs["reduced_tokens"] = reduced_tokens
  return TransformerAE(**kwargs, reference_batch_mixing=reference_batch_mixing)


def model_config(model: TransformerAE | FusionModel, sensor: str | None = None) -> dict[str, Any]:
  """The model_config.json content (same shape as the trainers write)."""
  if isinstance(model, FusionModel):
    return {"kind": "fusion", "model": fusion_config(model)}
  return {"kind": "autoencoder", "sensor": sensor, "model": ae_config(model)}


def model_from_config(cfg: Mapping[str, Any]) -> TransformerAE | FusionModel:
  """Rebuilds the module described by a model_config.json dict."""
  kind = cfg.get("kind")
  if kind == "autoencoder":
    return ae_from_config(cfg["model"])
  if kind == "fusion":
    return fusion_from_config(cfg["model"])
  raise ConvertError(f"model_config kind {kind!r}: expected 'autoencoder' or 'fusion'")


def _torch_state_dict(path: Path, allow_pickle: bool) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise ConvertError(f"{path}: reading a PyTorch checkpoint needs torch; install the extra with "
                       "`pip install 'earthrep[torch]'`, or convert an .npz of param/* arrays instead") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
  except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
    hint = "" if allow_pickle else " (a trusted checkpoint holding pickled objects needs --allow-pickle)"
    raise ConvertError(f"{path}: cannot read as a torch checkpoint: {type(e).__name__}: {e}{hint}") from e
  if isinstance(obj, Mapping) and "state_dict" in obj:
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
    raise ConvertError(f"{path}: neither a Lightning checkpoint with 'state_dict' nor a dict of tensors")
  return {k: v.detach().to(torch.float32).cpu().numpy() for k, v in obj.items()}


def _npz_state_dict(path: Path) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as f:
      keys = list(f.files)
      if any(k.startswith(PARAM_PREFIX) for k in keys):
        return {k[len(PARAM_PREFIX):]: np.asarray(f[k]) for k in keys if k.startswith(PARAM_PREFIX)}
      return {k: np.asarray(f[k]) for k in keys}
  except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
    raise ConvertError(f"{path}: unreadable .npz (truncated or corrupt?): {type(e).__name__}: {e}") from e


def read_state_dict(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """Torch key -> float array; a common `model.` prefix is stripped."""
  path = Path(path)
  if not path.is_file():
    raise ConvertError(f"{path}: no such file")
  sd = _npz_state_dict(path) if path.suffix == ".npz" else _torch_state_dict(path, allow_pickle)
  if not sd:
    raise ConvertError(f"{path}: holds no tensors")
  if all(k.startswith("model.") for k in sd):
    sd = {k[len("model."):]: v for k, v in sd.items()}
  return sd


def save_params(out_dir: str | os.PathLike, params: Any, config: Mapping[str, Any]) -> Path:
  """Writes `<out>/0/params` (Orbax) and `<out>/model_config.json`; refuses to overwrite."""
  out = Path(out_dir).absolute()
  if out.exists() and any(out.iterdir()):
    raise ConvertError(f"{out}: exists and is not empty; choose a new --out directory")
  out.mkdir(parents=True, exist_ok=True)
  mngr = ocp.CheckpointManager(out, options=ocp.CheckpointManagerOptions(create=True),
                               item_names=("params",))
  mngr.save(0, args=ocp.args.Composite(params=ocp.args.PyTreeSave(params)))
  mngr.wait_until_finished()
  mngr.close()
  checkpoint.write_model_config(out, dict(config))
  return out


def load_params(ckpt_dir: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
  """(params, model_config dict) of a converted checkpoint (or a stage workdir); the stored tree must fit
  the module the config describes exactly. Rebuild the module with `model_from_config(config)`."""
  cfg = checkpoint.read_model_config(ckpt_dir)
  target = torch_import.abstract_params(model_from_config(cfg))
  return checkpoint.load_params(ckpt_dir, target=target), cfg


def convert(state_dict_path: str | os.PathLike, model: str, out_dir: str | os.PathLike, *,
            reference_batch_mixing: bool = False, reduced_tokens: int | None = None,
            allow_pickle: bool = False) -> Path:
  module = preset_model(model, reference_batch_mixing=reference_batch_mixing, reduced_tokens=reduced_tokens)
  state_dict = read_state_dict(state_dict_path, allow_pickle=allow_pickle)
  try:
    params = torch_import.params_from_state_dict(module, state_dict)
  except torch_import.StateDictError as e:
    raise ConvertError(f"{state_dict_path}: {e}") from e
  sensor = None if model == "fusion" else model.split("_")[0]
  config = model_config(module, sensor) | {"source": str(Path(state_dict_path).absolute())}
  return save_params(out_dir, params, config)


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--state-dict", required=True, help=".ckpt / .pt (torch) or .npz of param/* arrays")
  ap.add_argument("--model", required=True, choices=MODELS)
  ap.add_argument("--out", required=True, help="new directory for the Orbax checkpoint")
  ap.add_argument("--reference-batch-mixing", action="store_true",
                  help="encoder attends across the batch exactly like the reference")
  ap.add_argument("--reduced-tokens", type=int, default=None,
                  help="override N of s1_ae/s2_ae (train_modality.py used 7 for S2)")
  ap.add_argument("--allow-pickle", action="store_true",
                  help="torch.load with weights_only=False (trusted files only)")
  args = ap.parse_args(argv)
  try:
    out = convert(args.state_dict, args.model, args.out, reference_batch_mixing=args.reference_batch_mixing,
                  reduced_tokens=args.reduced_tokens, allow_pickle=args.allow_pickle)
  except ConvertError as e:
    print(f"convert: error: {e}", file=sys.stderr)
    return 2
  print(f"convert: wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
