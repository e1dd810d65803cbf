"""`python -m earthrep.evaluate` end to end on the tiny demo world with a random-weight model: one report with
the verdict, pooled tables with intervals, ceilings, probes, costs and figures; bad arguments and an existing
report are refused before anything is computed."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from earthrep.evaluate import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  from tests.helpers import random_fusion, save_fusion_dir
  return save_fusion_dir(*random_fusion("test"), tmp_path_factory.mktemp("model") / "fusion")


def test_one_command_one_report(tiny_world, model_dir, tmp_path, capsys):
  out = tmp_path / "report"
  args = ["--world", str(tiny_world), "--model", str(model_dir), "--out", str(out), "--splits", "loso",
          "--features", "fused,fused_daily,s2_emb,ndvi,s1", "--designs", "met,x,lue", "--window-days", "30",
          "--outer-folds", "0", "--inner-folds", "2", "--transformer-sets", "met", "--steps", "20",
          "--probe-px", "10", "--probe-dates", "4", "--probe-sites", "0", "--bootstrap", "100"]
  assert main(args) == 0
  table = pd.read_csv(out / "metrics.csv")
  pooled = table[table["site"] == "pooled"]
  assert set(table["feature_set"]) == {"met", "fused", "fused_daily", "s2_emb", "ndvi", "s1", "fapar_true",
                                       "flux_noise"}
  assert set(table["design"]) == {"met", "x", "lue", "-"} and set(table["regressor"]) == {"ridge", "hgb",
                                                                                         "transformer", "truth"}
  assert set(pooled.loc[pooled["regressor"] == "transformer", "feature_set"]) == {"met"}
  assert (pooled["r2_lo"] <= pooled["r2_hi"]).all() and len(set(table["site"])) == 3 + 1
  # Every model is scored on the same site-days.
  assert pooled.groupby(["feature_set", "design", "regressor"])["n"].first().nunique() == 1
  # The ceiling of flux noise is the best score of all.
  assert pooled.loc[pooled["feature_set"] == "flux_noise", "r2"].iloc[0] >= pooled["r2"].max() - 1e-9
  text = (out / "report.md").read_text()
  for heading in ("## Verdict (loso)", "## Pooled skill (loso", "## Ceilings (simulator truth)", "## Per site",
                  "## Hyper-parameters chosen by nested selection", "### Land-cover kind",
                  "### Regressions against the simulator's truth", "### Boundary contrast", "## Costs"):
    assert heading in text, heading
  assert "The fused embedding " in text and "fused R2" in text
  land = pd.read_csv(out / "probes_land_cover.csv")
  assert set(land["feature_set"]) == {"fused", "s2_emb", "ndvi", "s1"}    # the same pixel-dates for each
  assert land["pixels"].nunique() == 1
  contrast = pd.read_csv(out / "probes_contrast.csv").set_index("feature_set")
  assert contrast.loc["ndvi", "contrast"] > 1.0
  selection = pd.read_csv(out / "selection.csv")
  assert set(selection["regressor"]) == {"ridge", "hgb", "transformer"} and (selection["selection_sites"] == 2).all()
  # ridge and trees are refitted on both training sites; the transformer trains on one, stops early on the other
  assert (selection["fit_sites"] == selection["regressor"].map({"ridge": 2, "hgb": 2, "transformer": 1})).all()
  for name in ("skill_loso.png", "scatter.png", "series.png", "loss_curves.png", "confusion.png"):
    assert (out / name).stat().st_size > 1000, name
  # Once written, the report is kept unless --overwrite; nothing is recomputed to find out.
  before = (out / "report.md").read_bytes()
  capsys.readouterr()
  assert main(args) == 2
  assert "holds a report (report.md" in capsys.readouterr().err and (out / "report.md").read_bytes() == before


@pytest.mark.parametrize("extra,message", [
    (["--designs", "x,weather"], "--designs: unknown 'weather'"),
    (["--features", "fused,met"], "met is not a feature set"),
    (["--outer-folds", "-1"], "--outer-folds -1: expected >= 0"),
    (["--labels", "nothing.tif"], "--labels nothing.tif: no such file or folder"),
    (["--features", "elsewhere"], "sets made elsewhere need --feature-cubes"),
])
def test_bad_arguments_are_refused_before_any_work(tiny_world, tmp_path, capsys, extra, message):
  out = tmp_path / "report"
  assert main(["--world", str(tiny_world), "--out", str(out), "--features", "ndvi", *extra]) == 2
  assert message in capsys.readouterr().err and not out.exists()


def test_embeddings_need_a_model_and_inputs_must_exist(tiny_world, tmp_path, capsys):
  assert main(["--world", str(tiny_world), "--out", str(tmp_path / "r"), "--features", "fused"]) == 2
  assert "embeddings need --model" in capsys.readouterr().err
  assert main(["--cubes", str(tmp_path / "none"), "--flux", str(tiny_world / "flux"), "--out", str(tmp_path / "r"),
               "--features", "ndvi"]) == 2
  assert f"--cubes {tmp_path / 'none'}: not a folder" in capsys.readouterr().err
  assert not (tmp_path / "r" / "report.md").exists()


def _label_rasters(world, out):
  """One GeoTIFF per site on its cube grid: the simulator's kinds + 1 (0 = unknown), with class names."""
  import json
  import rasterio
  from data_prep import demo_world
  from earthrep.io.cube import read_cube
  provider = demo_world.evaluation_truth(world)
  out.mkdir()
  for site_dir in sorted((world / "cubes").iterdir()):
    cube = read_cube(site_dir)
    truth = provider(site_dir.name, cube)
    labels = (truth.kind + 1).astype(np.uint8)
    labels[:2] = 0                                              # an unknown strip
    profile = dict(driver="GTiff", width=labels.shape[1], height=labels.shape[0], count=1, dtype="uint8",
                   crs=cube.crs, transform=rasterio.Affine(*cube.transform), nodata=255)
    with rasterio.open(out / f"{site_dir.name}.tif", "w", **profile) as dst:
      dst.write(labels, 1)
    (out / f"{site_dir.name}.tif.json").write_text(json.dumps({str(i + 1): n for i, n in enumerate(truth.kind_names)}))
  return out


def test_probes_from_label_rasters_without_truth(tiny_world, tmp_path):
  from earthrep.evaluation.truth import harmonise_labels, label_truth
  from earthrep.io.cube import read_cube
  labels = _label_rasters(tiny_world, tmp_path / "labels")
  site = sorted(p.name for p in (tiny_world / "cubes").iterdir())[0]
  truth = label_truth(labels / f"{site}.tif", read_cube(tiny_world / "cubes" / site), site)
  assert (truth.kind[:2] == -1).all() and (truth.kind[2:] >= 1).all() and truth.class_names[1] == "crop"
  harmonise_labels([truth])
  assert truth.kind_names[0] == "crop" and (truth.kind[2:] >= 0).all()
  out = tmp_path / "report"
  assert main(["--world", str(tiny_world), "--no-truth", "--labels", str(labels), "--out", str(out),
               "--features", "ndvi,bands", "--designs", "x", "--regressors", "ridge", "--window-days", "30",
               "--outer-folds", "0", "--probe-px", "10", "--probe-sites", "0", "--bootstrap", "50"]) == 0
  land = pd.read_csv(out / "probes_land_cover.csv").set_index("feature_set")
  # leave-site-out on a 3-site world: well above chance (1 / kinds), and the bands above NDVI alone
  assert land.loc["bands", "kinds"] >= 2
  assert land.loc["bands", "balanced_accuracy"] > 1.5 / land.loc["bands", "kinds"]
  assert land.loc["bands", "balanced_accuracy"] > land.loc["ndvi", "balanced_accuracy"]
  text = (out / "report.md").read_text()
  assert "### Land-cover kind" in text and "Ceilings" not in text and "### Regressions" not in text
  assert set(pd.read_csv(out / "metrics.csv")["feature_set"]) == {"ndvi", "bands"}   # no truth ceilings
