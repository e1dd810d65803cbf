"""Converts reference PyTorch weights into an earthrep Orbax checkpoint that the trainers can load.

`convert` is what `python -m earthrep.convert --state-dict FILE --model fusion --out DIR` runs. Reads a PyTorch Lightning `.ckpt` (a dict holding `state_dict`; a common `model.` key prefix is
stripped), a raw `state_dict` saved with `torch.save` (both need the `torch` extra), or an `.npz` of
`param/<torch key>` arrays (as in the parity vectors; an `.npz` without `param/` keys is read as plain
torch keys). The tensors are mapped by `earthrep.interop.torch_import` (strict: a missing, unexpected or
misshaped key raises naming it; the fusion's unused `bottleneck_expander` is ignored). Writes
`<out>/0/params` with `orbax.checkpoint.CheckpointManager` and `<out>/model_config.json` in the trainers'
format (`kind`, `sensor`, `model` = the module fields); `load_params(<out>)` rebuilds both. Presets:
s1_ae and s2_ae take the sensor registry's stage-1 sizes (S1: C 2, d_b 2, N 7; S2: C 10, d_b 9, N 6),
fusion = both + FusedS1S2 (d_b 7). The encoder attends per sample unless `reference_batch_mixing`
(bit-exact reference behaviour, batch-dependent). Arguments and the output are checked before the state
dict is read; the output is written into a temporary sibling and renamed when complete. An existing output
is replaced only with `overwrite`, and only if it is a converted checkpoint (`model_config.json` beside
step folders; never a training workdir).
`model_config.json` records the source file as the user gave it.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from earthrep import sensors
from earthrep.errors import EarthrepError
from earthrep.interop import torch_import
from earthrep.io import atomic, checkpoint, provenance
from earthrep.models.autoencoder import TransformerAE, ae_config, ae_from_config
from earthrep.models.fusion import FusionModel, fusion_config, fusion_from_config
from earthrep.models.params import abstract_params
from earthrep.schema import PATCH_FRAMES

REFERENCE_SENSORS = ("s1", "s2")
PRESETS = {f"{s}_ae": dict(sensors.get(s).stage1) for s in REFERENCE_SENSORS}
MODELS = (*PRESETS, "fusion")
FUSION_BOTTLENECK = 7
PARAM_PREFIX = "param/"


class ConvertError(EarthrepError):
  pass


def preset_model(name: str, *, reference_batch_mixing: bool = False,
                 reduced_tokens: int | None = None) -> TransformerAE | FusionModel:
  if name not in MODELS:
    raise ConvertError(f"model {name!r}: expected one of {MODELS}")
  if reduced_tokens is not None and not 1 <= reduced_tokens <= PATCH_FRAMES:
    raise ConvertError(f"--reduced-tokens {reduced_tokens}: expected 1 to {PATCH_FRAMES} (the tokens that the "
                       f"{PATCH_FRAMES} frames are reduced to)")
  if name == "fusion":
    if reduced_tokens is not None:
      raise ConvertError("--reduced-tokens applies to s1_ae / s2_ae only")
    aes = tuple(TransformerAE(**PRESETS[f"{s}_ae"], reference_batch_mixing=reference_batch_mixing)
                for s in REFERENCE_SENSORS)
    return FusionModel(aes, REFERENCE_SENSORS, bottleneck=FUSION_BOTTLENECK)
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
  broken = [k for k, v in sd.items() if np.issubdtype(np.asarray(v).dtype, np.floating)
            and not np.isfinite(v).all()]
  if broken:
    raise ConvertError(f"{path}: {broken[0]}: non-finite values (NaN or inf) in {len(broken)} tensor(s); "
                       "the checkpoint is broken")
  if all(k.startswith("model.") for k in sd):
    sd = {k[len("model."):]: v for k, v in sd.items()}
  return sd


def check_output(out_dir: str | os.PathLike, overwrite: bool = False,
                 inputs: Mapping[str, str | os.PathLike | None] | None = None) -> None:
  """Raises unless `out_dir` may be written: new or empty, or (with `overwrite`) an earlier checkpoint."""
  try:
    atomic.check_apart(out_dir, dict(inputs or {}))
    atomic.check_target(out_dir, overwrite=overwrite, kind="converted checkpoint",
                        is_kind=checkpoint.is_model_dir)
  except atomic.OutputError as e:
    raise ConvertError(str(e)) from None


def save_params(out_dir: str | os.PathLike, params: Any, config: Mapping[str, Any], *,
                overwrite: bool = False) -> Path:
  """Writes `<out>/0/params` (Orbax) and `<out>/model_config.json` atomically; an existing output is
  replaced only with `overwrite` (see `check_output`)."""
  check_output(out_dir, overwrite)
  return checkpoint.save_model_dir(out_dir, params, dict(config))


def load_params(ckpt_dir: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
  """(params, model_config dict) of a converted checkpoint (or a stage workdir); the stored tree must fit
  the module the config describes exactly. Rebuild the module with `model_from_config(config)`."""
  cfg = checkpoint.read_model_config(ckpt_dir)
  target = abstract_params(model_from_config(cfg))
  return checkpoint.load_params(ckpt_dir, target=target), cfg


def convert(state_dict_path: str | os.PathLike, model: str, out_dir: str | os.PathLike, *,
            reference_batch_mixing: bool = False, reduced_tokens: int | None = None,
            allow_pickle: bool = False, overwrite: bool = False) -> Path:
  module = preset_model(model, reference_batch_mixing=reference_batch_mixing, reduced_tokens=reduced_tokens)
  check_output(out_dir, overwrite, {"--state-dict": state_dict_path})
  state_dict = read_state_dict(state_dict_path, allow_pickle=allow_pickle)
  try:
    params = torch_import.params_from_state_dict(module, state_dict)
  except torch_import.StateDictError as e:
    raise ConvertError(f"{state_dict_path}: {e}") from e
  sensor = None if model == "fusion" else model.split("_")[0]
  config = model_config(module, sensor) | {"source": provenance.user_path(state_dict_path)}
  return save_params(out_dir, params, config, overwrite=overwrite)
