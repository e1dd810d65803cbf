"""Golden-value test: earthrep.parity on the reference vectors (s1_ae, s2_ae, fusion), in compatibility mode.

The vectors live outside the repository: `$EARTHREP_REFERENCE_VECTORS`, default
`<repo>/../shared/reference/vectors`."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from earthrep import parity

REPO = Path(__file__).resolve().parents[1]
VECTORS = Path(os.environ.get("EARTHREP_REFERENCE_VECTORS", REPO.parent / "shared" / "reference" / "vectors"))


@pytest.mark.parametrize("model", parity.MODELS)
def test_parity(model, capsys):
  path = VECTORS / f"{model}.npz"
  if not VECTORS.is_dir():
    pytest.skip(f"reference vectors folder {VECTORS} is absent (set EARTHREP_REFERENCE_VECTORS)")
  assert path.is_file(), f"{path} missing from the vectors folder"
  rc = parity.main(["--vectors", str(path), "--model", model])
  lines = capsys.readouterr().out.strip().splitlines()
  failed = [line for line in lines if line.endswith("FAIL")]
  assert rc == 0 and not failed, "\n".join(failed or lines[-1:])
  n = len(lines) - 1
  assert lines[-1] == f"parity: {n}/{n} arrays within tolerance"
  names = {line.split()[0] for line in lines[:-1]}
  assert "outputs/recon" in names or "outputs/zf" in names
  assert any(k.startswith("check/") for k in names) and any(k.startswith("loss/") for k in names)


def test_tolerances():
  assert parity.tolerance("outputs/z") == 1e-5 and parity.tolerance("inter/fuser_in") == 1e-5
  assert parity.tolerance("loss/stage1/total") == 1e-6 and parity.tolerance("loss/s1/total") == 1e-6
  assert parity.tolerance("loss/full/total") == 1e-4 and parity.tolerance("loss/total") == 1e-4
  assert parity.tolerance("loss/center175/sam") == 1e-4 and parity.tolerance("loss/s2/ssim") == 1e-6
  assert parity.tolerance("loss/val_metric") == 1e-6
