"""experiments/colab/quickstart.ipynb runs end to end (tiny world, `test` variant) and writes real outputs."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("jupyter_client.kernelspec")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "experiments" / "colab" / "quickstart.ipynb"
KERNEL = "python3"


def _parameters(workdir: Path) -> str:
  params = dict(VARIANT="test", WORKDIR=str(workdir), SEED=1, WORLD_SIZE=24, WORLD_SITES=3,
                WORLD_START="2019-01-01", WORLD_DAYS=365, STAGE1_STEPS=2, FUSION_STEPS=2,
                GPP_FEATURES="fused,ndvi,s1", GPP_REGRESSORS="ridge,transformer", GPP_STEPS=4, GPP_WINDOW_DAYS=30)
  lines = [f"{k} = {v!r}" for k, v in params.items()]
  # The kernel must be this interpreter (the venv's) and see this process's environment (the XLA cache).
  lines += ["import os, sys",
            f"assert sys.executable == {sys.executable!r}, sys.executable",
            f"assert os.environ.get('JAX_COMPILATION_CACHE_DIR') == {os.environ.get('JAX_COMPILATION_CACHE_DIR')!r}"]
  return "\n".join(lines)


def test_committed_notebook_is_clean():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert "parameters" in code[0].metadata.get("tags", [])
  assert all(not c.outputs and c.execution_count is None for c in code), "clear the notebook's outputs"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path):
  specs = kernelspec.KernelSpecManager().find_kernel_specs()
  if KERNEL not in specs:
    pytest.skip(f"no {KERNEL!r} kernel spec (found {sorted(specs)}); "
                f"`{sys.executable} -m ipykernel install --sys-prefix --name {KERNEL}`")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  nb.cells.insert(index + 1, nbformat.v4.new_code_cell(_parameters(tmp_path / "demo"),
                                                       metadata={"tags": ["injected-parameters"]}))
  env_keys = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "JAX_PLATFORMS")
  assert all(k in os.environ for k in env_keys)   # set by conftest; the kernel inherits os.environ
  client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600, allow_errors=False,
                                   resources={"metadata": {"path": str(REPO)}})
  tic = time.perf_counter()
  client.execute()
  elapsed = time.perf_counter() - tic
  print(f"notebook ran in {elapsed:.1f} s")

  import pandas as pd
  import xarray as xr
  demo = tmp_path / "demo"
  report = demo / "gpp_report"
  sites = pd.read_csv(demo / "world" / "sites.csv")["site_id"].tolist()
  assert len(sites) == 3
  for run in ("s1_ae", "s2_ae", "fusion"):
    cfg = json.loads((demo / "runs" / run / "model_config.json").read_text())
    assert cfg["config"]["total_steps"] == 2
  cube = report / "feature_cubes" / "fused" / f"{sites[0]}.zarr"
  with xr.open_zarr(cube, consolidated=False) as ds:
    features = ds["features"].load()
  assert features.dims == ("feature", "time", "y", "x") and features.sizes["feature"] == 7
  assert features.sizes["y"] == features.sizes["x"] == 24 - 14 and features.sizes["time"] > 0
  assert features.notnull().any()
  assert list(cube.parent.glob(f"{cube.name}.*.png"))
  metrics = pd.read_csv(report / "metrics.csv")
  assert set(metrics["feature_set"]) == {"fused", "ndvi", "s1"}
  assert set(metrics["regressor"]) == {"ridge", "transformer"} and set(metrics["split"]) == {"loso"}
  fused = metrics[metrics["feature_set"] == "fused"]
  assert set(fused["site"]) == {"pooled", *sites} and len(fused) == 2 * (len(sites) + 1)
  assert fused[fused["site"] == "pooled"]["rmse"].notna().all()
  text = (report / "report.md").read_text()
  assert any(line.startswith("|") and "fused" in line for line in text.splitlines())
  # The notebook displayed the report and the quick-look.
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert any("text/markdown" in o.get("data", {}) for o in outputs)
  assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
