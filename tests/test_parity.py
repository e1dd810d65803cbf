"""Golden-value test: earthrep.parity on the reference vectors (s1_ae, s2_ae, fusion), in compatibility mode.

The vectors live outside the repository: `$EARTHREP_REFERENCE_VECTORS`, default `<repo>/../shared/reference/vectors`."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from earthrep import parity

VECTORS = Path(os.environ.get("EARTHREP_REFERENCE_VECTORS",
                              Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "vectors"))


@pytest.mark.parametrize("model", parity.MODELS)
def test_parity(model):
  path = VECTORS / f"{model}.npz"
  if not VECTORS.is_dir():
    pytest.skip(f"reference vectors folder {VECTORS} is absent (set EARTHREP_REFERENCE_VECTORS)")
  assert path.is_file(), f"{path} missing from the vectors folder"
  rows = parity.run_parity(str(path), model)
  failed = [f"{name}: err {err:.3e} > tol {tol:.0e}" for name, err, tol, ok in rows if not ok]
  assert not failed, "\n".join(failed)
  names = {r[0] for r in rows}
  assert "outputs/recon" in names or "outputs/zf" in names
  assert any(n.startswith("check/") for n in names) and any(n.startswith("loss/") for n in names)


def test_tolerances():
  assert parity.tolerance("outputs/z") == 1e-5 and parity.tolerance("inter/fuser_in") == 1e-5
  assert parity.tolerance("loss/stage1/total") == 1e-6 and parity.tolerance("loss/s1/total") == 1e-6
  assert parity.tolerance("loss/full/total") == 1e-4 and parity.tolerance("loss/total") == 1e-4
  assert parity.tolerance("loss/center175/sam") == 1e-4 and parity.tolerance("loss/s2/ssim") == 1e-6
  assert parity.tolerance("loss/val_metric") == 1e-6
