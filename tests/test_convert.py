"""Conversion of reference weights: npz/torch -> Orbax round trips, strict key checking, corrupt inputs."""
from __future__ import annotations

import importlib.util
import json
import sys

import jax
import numpy as np
import pytest

from earthrep import convert as convert_cli
from earthrep.interop import convert, torch_import
from earthrep.io import checkpoint
from earthrep.models.params import abstract_params

HAS_TORCH = importlib.util.find_spec("torch") is not None


def _state_dict(model, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32),
                        abstract_params(model))
  return torch_import.state_dict_from_params(model, params)


def _write_npz(path, state_dict) -> str:
  np.savez(path, **{f"param/{k}": v for k, v in state_dict.items()})
  return str(path)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def s1():
  model = convert.preset_model("s1_ae")
  return model, _state_dict(model)


@pytest.mark.parametrize("name", ["s1_ae", "fusion"])
def test_npz_round_trip_equals_direct_load(tmp_path, name):
  model = convert.preset_model(name, reference_batch_mixing=True)
  sd = _state_dict(model)
  if name == "fusion":   # present in every reference fusion state dict, unused, ignored
    sd |= {k: np.ones((128, 7) if k.endswith("weight") else (128,), np.float32)
           for k in torch_import.FUSION_IGNORED}
  src = _write_npz(tmp_path / "w.npz", sd)
  out = convert.convert(src, name, tmp_path / "ckpt", reference_batch_mixing=True)
  params, cfg = convert.load_params(out)
  _assert_trees_equal(params, torch_import.params_from_state_dict(model, sd))
  assert convert.model_from_config(cfg) == model
  stored = json.loads((out / "model_config.json").read_text())
  assert stored["kind"] == ("fusion" if name == "fusion" else "autoencoder")
  ae_cfg = stored["model"]["autoencoders"]["s2"] if name == "fusion" else stored["model"]
  assert ae_cfg["reference_batch_mixing"] is True and ae_cfg["widths"] == [149, 128, 64]
  assert ae_cfg["fill"] == "window"   # reference weights expect the reference's input fill
  # the trainers' loader accepts the converted directory too
  _assert_trees_equal(checkpoint.load_params(out), params)


def _broken(sd: dict, how: str) -> tuple[dict, str]:
  sd = dict(sd)
  if how == "missing":
    del sd["encoder.token_reducer.0.bias"]
    return sd, "missing key encoder.token_reducer.0.bias"
  if how == "extra":
    sd["encoder.spare.0.weight"] = np.zeros((2, 2), np.float32)
    return sd, "unexpected key encoder.spare.0.weight"
  if how == "misshaped":
    sd["decoder.upscaler.conv1.0.weight"] = np.zeros((16, 64, 3, 3), np.float32)
    return sd, "misshaped key decoder.upscaler.conv1.0.weight: (16, 64, 3, 3), expected (16, 64, 2, 2)"
  key = "decoder.transformer_dec.layers.1.norm2.bias"   # alias of the shared encoder transformer
  sd[key] = sd[key] + 1.0
  return sd, f"alias key {key} differs"


@pytest.mark.parametrize("how", ["missing", "extra", "misshaped", "alias"])
def test_bad_state_dict_names_the_key(tmp_path, s1, how):
  _, sd = s1
  sd, message = _broken(sd, how)
  src = _write_npz(tmp_path / "w.npz", sd)
  with pytest.raises(convert.ConvertError) as err:
    convert.convert(src, "s1_ae", tmp_path / "ckpt")
  assert message in str(err.value)
  assert not (tmp_path / "ckpt").exists()


def test_truncated_npz_and_wrong_preset(tmp_path, s1):
  _, sd = s1
  src = _write_npz(tmp_path / "w.npz", sd)
  data = (tmp_path / "w.npz").read_bytes()
  (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
  with pytest.raises(convert.ConvertError, match="truncated or corrupt"):
    convert.convert(tmp_path / "cut.npz", "s1_ae", tmp_path / "a")
  with pytest.raises(convert.ConvertError, match="misshaped key encoder.dim_reducer.conv0.0.weight"):
    convert.convert(src, "s2_ae", tmp_path / "b")   # S1 weights into the S2 preset


def test_corrupt_orbax_checkpoint_is_reported(tmp_path, s1):
  _, sd = s1
  out = convert.convert(_write_npz(tmp_path / "w.npz", sd), "s1_ae", tmp_path / "ckpt")
  with pytest.raises(convert.ConvertError, match="exists.*--overwrite"):
    convert.convert(tmp_path / "w.npz", "s1_ae", out)
  for f in (out / "0" / "params").rglob("*"):
    if f.is_file() and f.name != "commit_success.txt":
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
  with pytest.raises(checkpoint.CheckpointError, match="params"):
    convert.load_params(out)


def test_cli_reports_errors(tmp_path, s1, capsys):
  _, sd = s1
  sd, _ = _broken(sd, "missing")
  rc = convert_cli.main(["--state-dict", _write_npz(tmp_path / "w.npz", sd), "--model", "s1_ae",
                     "--out", str(tmp_path / "ckpt")])
  assert rc == 2 and "encoder.token_reducer.0.bias" in capsys.readouterr().err


def test_torch_checkpoint_without_torch_names_the_extra(tmp_path, monkeypatch):
  (tmp_path / "m.ckpt").write_bytes(b"not used")
  monkeypatch.setitem(sys.modules, "torch", None)   # import torch -> ImportError
  with pytest.raises(convert.ConvertError, match=r"earthrep\[torch\]"):
    convert.read_state_dict(tmp_path / "m.ckpt")


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install 'earthrep[torch]')")
def test_lightning_ckpt_and_raw_state_dict(tmp_path, s1):
  import torch
  model, sd = s1
  direct = torch_import.params_from_state_dict(model, sd)
  tensors = {k: torch.from_numpy(v) for k, v in sd.items()}
  torch.save({"state_dict": {f"model.{k}": v for k, v in tensors.items()}, "epoch": 65,
              "global_step": 1234}, tmp_path / "ae.ckpt")
  torch.save(tensors, tmp_path / "ae.pt")
  for src in ("ae.ckpt", "ae.pt"):
    out = convert.convert(tmp_path / src, "s1_ae", tmp_path / f"out_{src}")
    params, _ = convert.load_params(out)
    _assert_trees_equal(params, direct)
  (tmp_path / "cut.ckpt").write_bytes((tmp_path / "ae.ckpt").read_bytes()[:5000])
  with pytest.raises(convert.ConvertError, match="cannot read as a torch checkpoint"):
    convert.read_state_dict(tmp_path / "cut.ckpt")
