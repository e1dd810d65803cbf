"""Bad inputs to `earthrep.embed`: each ends in one error line and exit status 2 with every file left
byte-identical (resume with other arguments, existing outputs, outputs over inputs, bad numbers and dates,
mismatched or broken models and cubes; tests/test_embed.py has models with other band counts or fills).
Also: a run killed by SIGKILL resumes to the same store as a straight run, and suspect inputs are counted
as warnings in the store, whose paths stay as given."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import xarray as xr

from conftest import REPO
from helpers import assert_refused, random_fusion, run_cli, save_fusion_dir, snapshot
from data_prep.demo_world import make_site_cube
from earthrep import embed
from earthrep.inference import feature_cubes
from earthrep.interop import convert, torch_import
from earthrep.io import cube as cube_io
from earthrep.io import feature_cube
from earthrep.io.cube import write_zarr

SIZE, DAYS, TILE = 18, 200, 2      # output grid 4x4: 4 tiles of 2x2


def _embed_quietly(*args, **kwargs):
  return feature_cubes.embed_cube(*args, log=lambda msg: None, **kwargs)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """model/ (tiny fusion), site/ (a cube), out.zarr (its complete feature cube), part.zarr (a run that
  failed after 2 of 4 tiles, kept for --resume), other model and cube dirs, broken ones, user files."""
  root = tmp_path_factory.mktemp("embed")
  model, params = random_fusion()
  save_fusion_dir(model, params, root / "model")
  save_fusion_dir(model, jax.tree.map(lambda a: a * 1.01, params), root / "model2")   # "retrained"
  ae = convert.preset_model("s1_ae")
  convert.save_params(root / "model_ae", torch_import.random_params(ae), convert.model_config(ae, "s1"))
  configs = {"cfg_no_model": '{"kind": "fusion"}', "cfg_bogus": '{"kind": "fusion", "model": {"x": 1}}',
             "cfg_truncated": '{"kind": "fus'}
  for name, text in configs.items():
    shutil.copytree(root / "model", root / name)
    (root / name / "model_config.json").write_text(text)
  shutil.copytree(root / "model", root / "model_cut")
  for f in (root / "model_cut" / "0" / "params").rglob("*"):
    if f.is_file() and f.stat().st_size > 100:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
  write_zarr(make_site_cube(0, size=SIZE, days=DAYS), root / "site")
  write_zarr(make_site_cube(2, size=SIZE, days=DAYS), root / "site2")
  write_zarr(make_site_cube(1, size=SIZE, days=25), root / "short")
  write_zarr(make_site_cube(1, size=12, days=DAYS), root / "small")
  no_s1 = make_site_cube(0, size=SIZE, days=DAYS)
  no_s1.s1_gamma0, no_s1.s1_time, no_s1.s1_orbit_direction = (a[:0] for a in (no_s1.s1_gamma0, no_s1.s1_time,
                                                                                no_s1.s1_orbit_direction))
  no_s1.s1_relative_orbit = None if no_s1.s1_relative_orbit is None else no_s1.s1_relative_orbit[:0]
  write_zarr(no_s1, root / "no_s1")
  dn = make_site_cube(0, size=SIZE, days=DAYS)
  dn.s2_reflectance = dn.s2_reflectance * 10000 + 1000   # digital numbers, written past the writer's checks
  cube_io.cube_to_dataset(dn).to_zarr(root / "dn" / "cube.zarr", zarr_format=3, consolidated=False,
                                      write_empty_chunks=True)
  shutil.copytree(root / "site", root / "cut_site")
  victim = next(p for p in sorted((root / "cut_site" / "cube.zarr" / "s2_reflectance").rglob("*"))
                if p.is_file() and p.name != "zarr.json")
  victim.unlink()
  _embed_quietly(str(root / "model"), str(root / "site"), str(root / "out.zarr"), tile=TILE, batch=64)
  real, writes = feature_cube.write_region, []
  def failing(store, block, y0, x0):
    if len(writes) == 2:
      raise OSError(28, "No space left on device")
    writes.append((y0, x0))
    real(store, block, y0, x0)
  feature_cube.write_region = failing
  try:
    with pytest.raises(feature_cubes.EmbedError, match="No space left"):
      _embed_quietly(str(root / "model"), str(root / "site"), str(root / "part.zarr"), tile=TILE, batch=64,
                     resume=True)
  finally:
    feature_cube.write_region = real
  assert (root / ".part.zarr.partial").is_dir()
  first = str(xr.open_zarr(root / "out.zarr", consolidated=False)["time"].values[0])[:10]
  (root / "tifs").mkdir()
  (root / "tifs" / f"{first}.tif").write_text("a user's GeoTIFF\n")
  (root / f"q.zarr.{first}.png").write_text("a user's PNG\n")
  (root / "user").mkdir()
  (root / "user" / "notes.txt").write_text("mine\n")
  (root / "afile").write_text("keep\n")
  return root


M = "--model {r}/model --cube {r}/site"
CASES = [
    # resume: the interrupted run (part.zarr, tile 2, clear dates, fast path) or the complete out.zarr
    ("resume with another tile", f"{M} --out {{r}}/part.zarr --tile 3 --resume",
     r"used other inputs .*tile: 2 -> 3"),
    ("resume with other dates", f"{M} --out {{r}}/part.zarr --tile 2 --resume --dates daily",
     r"interrupted run .* \(dates_mode: 'clear' -> 'daily'\)"),
    ("resume with another model", "--model {r}/model2 --cube {r}/site --out {r}/part.zarr --tile 2 --resume",
     r"interrupted run .*model_fingerprint"),
    ("resume with another cube", "--model {r}/model --cube {r}/site2 --out {r}/part.zarr --tile 2 --resume",
     r"interrupted run .*cube_fingerprint"),
    ("resume on the naive path", f"{M} --out {{r}}/part.zarr --tile 2 --resume --naive",
     r"path: 'fast' -> 'naive'"),
    ("resume a complete store with other dates", f"{M} --out {{r}}/out.zarr --resume --dates daily",
     r"out\.zarr: complete, but made with other inputs .*dates_mode"),
    ("rerun over an interrupted run", f"{M} --out {{r}}/part.zarr --tile 2",
     r"an interrupted run left \.part\.zarr\.partial; pass --resume"),
    ("out exists", f"{M} --out {{r}}/out.zarr", r"out\.zarr: exists \(feature cube\); pass --overwrite"),
    ("out is a user folder", f"{M} --out {{r}}/user --overwrite", r"user: exists and is not a feature cube"),
    ("out is a file", f"{M} --out {{r}}/afile", r"afile: is a file"),
    ("out is the cube", f"{M} --out {{r}}/site/cube.zarr --overwrite", r"overlaps the input --cube"),
    ("out inside the model", f"{M} --out {{r}}/model/features.zarr", r"overlaps the input --model"),
    ("out under a file", f"{M} --out {{r}}/afile/x.zarr", r"afile is a file, not a directory"),
    ("out on a read-only file system", f"{M} --out /sys/earthrep-test.zarr", r"cannot write in /sys"),
    ("tile 0", f"{M} --out {{r}}/t.zarr --tile 0", r"--tile 0: expected a positive number"),
    ("tile -3", f"{M} --out {{r}}/t.zarr --tile -3", r"--tile -3: expected a positive number"),
    ("batch 0", f"{M} --out {{r}}/t.zarr --batch 0", r"--batch 0: expected a positive number"),
    ("dates not a day", f"{M} --out {{r}}/t.zarr --dates 2019-13-01", r"--dates '2019-13-01': expected clear"),
    ("dates empty", f"{M} --out {{r}}/t.zarr --dates ,", r"--dates ',': expected clear, daily or ISO dates"),
    ("dates all outside the cube", f"{M} --out {{r}}/t.zarr --dates 2030-01-01", r"no valid window for --dates"),
    ("quicklook not a day", f"{M} --out {{r}}/t.zarr --quicklook tomorrow", r"--quicklook 'tomorrow': expected"),
    ("quicklook outside the output", f"{M} --out {{r}}/t.zarr --quicklook 2035-01-01",
     r"--quicklook 2035-01-01: outside the output's days"),
    ("quicklook PNG exists", f"{M} --out {{r}}/q.zarr --quicklook auto",
     r"q\.zarr\.[-\d]+\.png exists; pass --overwrite"),
    ("geotiff is a file", f"{M} --out {{r}}/t.zarr --geotiff {{r}}/afile", r"--geotiff .*afile: is a file"),
    ("geotiff files exist", f"{M} --out {{r}}/t.zarr --geotiff {{r}}/tifs",
     r"holds 1 GeoTIFF\(s\) of these dates"),
    ("geotiff inside the cube", f"{M} --out {{r}}/t.zarr --geotiff {{r}}/site/tifs",
     r"--geotiff .*overlaps the input --cube"),
    ("model missing", "--model {r}/nomodel --cube {r}/site --out {r}/t.zarr",
     r"nomodel: no such checkpoint or workdir"),
    ("model config without model", "--model {r}/cfg_no_model --cube {r}/site --out {r}/t.zarr",
     r"model_config\.json: not a fusion model's config \(KeyError"),
    ("model config with unknown fields", "--model {r}/cfg_bogus --cube {r}/site --out {r}/t.zarr",
     r"not a fusion model's config .*unknown FusionModel config field"),
    ("model config truncated", "--model {r}/cfg_truncated --cube {r}/site --out {r}/t.zarr",
     r"model_config\.json: not valid JSON"),
    ("stage-1 autoencoder as model", "--model {r}/model_ae --cube {r}/site --out {r}/t.zarr",
     r"kind 'autoencoder', expected 'fusion'"),
    ("model params truncated", "--model {r}/model_cut --cube {r}/site --out {r}/t.zarr",
     r"params.*(unreadable|cannot restore|truncated)"),
    ("cube missing", "--model {r}/model --cube {r}/nocube --out {r}/t.zarr", r"nocube: cube: no cube\.zarr"),
    ("cube truncated", "--model {r}/model --cube {r}/cut_site --out {r}/t.zarr",
     r"s2_reflectance: truncated store"),
    ("cube in digital numbers", "--model {r}/model --cube {r}/dn --out {r}/t.zarr",
     r"s2_reflectance: .*looks like digital numbers"),
    ("cube too short for a window", "--model {r}/model --cube {r}/short --out {r}/t.zarr", r"no valid window"),
    ("cube smaller than a patch", "--model {r}/model --cube {r}/small --out {r}/t.zarr",
     r"grid 12x12 is too small for the 7-px border"),
    ("cube without S1 for an S1 model", "--model {r}/model --cube {r}/no_s1 --out {r}/t.zarr",
     r"s1_gamma0: no S1 acquisition, but the model fuses S1"),
    ("embedding unknown", f"{M} --out {{r}}/t.zarr --embedding s3", r"--embedding 's3': expected fused or one of"),
    ("resume and overwrite", f"{M} --out {{r}}/t.zarr --resume --overwrite",
     r"--overwrite: not allowed with argument --resume"),
]


@pytest.mark.parametrize("case,argv,pattern", CASES, ids=[c[0] for c in CASES])
def test_embed_refuses(root, capsys, case, argv, pattern):
  assert_refused(embed.main, argv.format(r=root).split(), capsys, pattern, root, usage="not allowed" in pattern)


def test_killed_run_resumes_to_the_straight_result(root, tmp_path, capsys):
  out = tmp_path / "killed.zarr"
  argv = ["--model", str(root / "model"), "--cube", str(root / "site"), "--out", str(out), "--tile", str(TILE),
          "--batch", "64"]
  # The child blocks after its second tile (a hook, so that the kill lands mid-run), then is killed.
  hook = textwrap.dedent(f"""
      import sys, time
      from earthrep.io import feature_cube
      real, n = feature_cube.write_region, [0]
      def write_region(*args):
        real(*args)
        n[0] += 1
        if n[0] == 2:   # the second tile's region is written, its record not yet
          print("two tiles written", flush=True)
          time.sleep(300)
      feature_cube.write_region = write_region
      from earthrep import embed
      sys.exit(embed.main({argv!r}))""")
  proc = subprocess.Popen([sys.executable, "-c", hook], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  output = []
  for line in proc.stdout:
    output.append(line)
    if "two tiles written" in line:
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, "".join(output)
  partial = tmp_path / ".killed.zarr.partial"
  assert partial.is_dir() and not out.exists()
  kept = snapshot(partial)
  assert_refused(embed.main, [*argv[:-4], "--tile", "3", "--resume"], capsys, r"tile: 2 -> 3", tmp_path)
  rc, err = run_cli(embed.main, [*argv, "--resume"], capsys)
  assert rc == 0, err
  assert "3 of 4 tiles to do" in err and kept   # the recorded tile is kept; the unrecorded one is redone
  assert not partial.exists() and not (tmp_path / ".killed.zarr.tiles").exists()
  with xr.open_zarr(out, consolidated=False) as ds, xr.open_zarr(root / "out.zarr", consolidated=False) as ref:
    np.testing.assert_array_equal(ds["features"].values, ref["features"].values)
    assert ds.attrs["cube_fingerprint"] == ref.attrs["cube_fingerprint"]


def test_resume_of_a_complete_store_with_its_views_changes_nothing(root, tmp_path, capsys):
  out = tmp_path / "done.zarr"
  shutil.copytree(root / "out.zarr", out)
  (tmp_path / "done.zarr.2019-04-01.png").write_text("its quick-look\n")
  before = snapshot(tmp_path)
  rc, err = run_cli(embed.main, ["--model", str(root / "model"), "--cube", str(root / "site"), "--out", str(out),
                                 "--quicklook", "auto", "--resume"], capsys)
  assert rc == 0 and "complete, nothing to resume" in err and snapshot(tmp_path) == before


def test_suspect_inputs_are_counted_warnings_and_paths_stay_as_given(root, tmp_path, monkeypatch, capsys):
  cube = make_site_cube(0, size=SIZE, days=DAYS)
  cube.s1_gamma0[:] = np.nan
  write_zarr(cube, tmp_path / "nan_s1")
  shutil.copytree(root / "model", tmp_path / "model")
  monkeypatch.chdir(tmp_path)
  days = "2019-03-01,2019-04-01,2031-01-01"   # the last one is years after the cube
  rc, err = run_cli(embed.main, ["--model", "model", "--cube", "nan_s1", "--out", "o.zarr", "--dates", days,
                                 "--tile", "4", "--batch", "64"], capsys)
  assert rc == 0, err
  attrs = feature_cube.attributes(tmp_path / "o.zarr")
  warnings = json.loads(attrs["warnings"])
  assert attrs["warning_count"] == len(warnings) == 3
  assert "1 of 3 day(s) outside the cube's S2 dates" in warnings[0]
  assert "1 of 3 target day(s) have no window" in warnings[1]
  assert "s1_gamma0: all NaN" in warnings[2]
  assert sum(line.startswith("warning: ") for line in err.splitlines()) == 3
  assert attrs["model_dir"] == "model" and attrs["input_cube"] == "nan_s1"
  assert str(tmp_path) not in json.dumps(attrs)
