"""Golden-value test: `python -m earthrep.parity` on the reference vectors (s1_ae, s2_ae, fusion), in
compatibility mode: always on the compact vectors vendored in tests/data/parity (parameters from their
recipe, see SOURCE.md), and on the full vectors (with `param/*`) where `$EARTHREP_REFERENCE_VECTORS`
(default `<repo>/../shared/reference/vectors`) exists."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from earthrep import parity
from earthrep.interop import parity as parity_lib

REPO = Path(__file__).resolve().parents[1]
COMPACT = REPO / "tests" / "data" / "parity"
FULL = Path(os.environ.get("EARTHREP_REFERENCE_VECTORS", REPO.parent / "shared" / "reference" / "vectors"))


def _check(path: Path, model: str, capsys) -> set[str]:
  rc = parity.main(["--vectors", str(path), "--model", model])
  lines = capsys.readouterr().out.strip().splitlines()
  failed = [line for line in lines if line.endswith("FAIL")]
  assert rc == 0 and not failed, "\n".join(failed or lines[-1:])
  n = len(lines) - 1
  assert n > 20 and lines[-1] == f"parity: {n}/{n} arrays within tolerance"
  names = {line.split()[0] for line in lines[:-1]}
  assert "outputs/recon" in names or "outputs/zf" in names
  assert any(k.startswith("check/") for k in names) and any(k.startswith("loss/") for k in names)
  return names


@pytest.mark.parametrize("model", parity_lib.MODELS)
def test_parity_compact_vectors(model, capsys):
  path = COMPACT / f"{model}.npz"
  assert path.is_file(), f"{path} is vendored with the repository"
  assert not any(k.startswith("param/") for k in np.load(path).files)   # parameters from the recipe
  _check(path, model, capsys)


@pytest.mark.parametrize("model", parity_lib.MODELS)
def test_parity_full_vectors(model, capsys):
  if not FULL.is_dir():
    pytest.skip(f"full reference vectors folder {FULL} is absent (set EARTHREP_REFERENCE_VECTORS); the compact "
                "vectors ran")
  path = FULL / f"{model}.npz"
  assert path.is_file(), f"{path} missing from the vectors folder"
  _check(path, model, capsys)


def test_recipe_state_dict_keys_shapes_and_aliases():
  """The recipe gives every key of `meta/state_dict` its shape, float32, and aliases the same tensor."""
  vec = np.load(COMPACT / "s1_ae.npz")
  state = parity_lib.recipe_state_dict(vec)
  assert all(v.dtype == np.float32 for v in state.values())
  entries = json.loads(str(vec["meta/state_dict"]))
  aliases = [(k, a) for k, _, a in entries if a]
  assert aliases and all(state[k] is state[a] for k, a in aliases)
  assert all(state[k].shape == tuple(shape) for k, shape, _ in entries)


def test_refuses_vectors_of_another_model(capsys):
  assert parity.main(["--vectors", str(COMPACT / "s2_ae.npz"), "--model", "s1_ae"]) == 2
  assert "channels 10, but s1_ae has 2" in capsys.readouterr().err
  assert parity.main(["--vectors", str(COMPACT / "s2_ae.npz"), "--model", "fusion"]) == 2
  assert parity.main(["--vectors", str(COMPACT / "fusion.npz"), "--model", "s2_ae"]) == 2


def test_tolerances():
  tol = parity_lib.tolerance
  assert tol("outputs/z") == 1e-5 and tol("inter/fuser_in") == 1e-5
  assert tol("loss/stage1/total") == 1e-6 and tol("loss/s1/total") == 1e-6
  assert tol("loss/full/total") == 1e-4 and tol("loss/total") == 1e-4
  assert tol("loss/center175/sam") == 1e-4 and tol("loss/s2/ssim") == 1e-6
  assert tol("loss/val_metric") == 1e-6
