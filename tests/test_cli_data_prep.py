"""Bad inputs to the data_prep tools (demo_world, build_shards, build_cubes): each ends in one error line and
exit status 2 with every file left byte-identical. Also: a killed shard build leaves the earlier build
intact and the rerun equals a straight build; suspect cubes are counted as warnings in the metadata; a
catalogue URL's credentials reach neither the log nor build_report.json."""
from __future__ import annotations

import functools
import http.server
import json
import logging
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from helpers import assert_refused, run_cli, snapshot
from data_prep import build_cubes, build_shards, demo_world
from earthrep import schema
from earthrep.io import cube as cube_lib

pystac = pytest.importorskip("pystac")
import stac_fixtures as fx  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
              pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")]
WORLD = dict(seed=3, size=24, sites=3, start="2019-03-01", days=150)
SHARDS = ["--modality", "s2", "--spatial-stride", "5", "--time-stride", "10"]
START, END = "2021-11-15", "2021-12-20"
SECRET = "hunter2-never-logged"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """world/ (3 sites), shards/ (its s2 build), short/ (cubes without a window), bad/ (one truncated cube),
  notcube/, empty/, user/ (a user's folder), afile, stac/ (one site) and built/ (its cube build)."""
  root = tmp_path_factory.mktemp("data_prep")
  demo_world.make_world(root / "world", **WORLD)
  assert build_shards.main(["--cubes", str(root / "world" / "cubes"), "--out", str(root / "shards"), *SHARDS]) == 0
  demo_world.make_world(root / "short", seed=1, size=16, sites=2, days=40)
  shutil.copytree(root / "world" / "cubes", root / "bad")
  chunks = root / "bad" / "XX-Db1" / schema.ZARR_NAME / schema.VAR_S2
  next(p for p in sorted(chunks.rglob("*")) if p.is_file() and p.name != "zarr.json").unlink()
  for name, scale in (("dn", "s2"), ("db", "s1")):   # wrong units, written past the writer's own checks
    cube = cube_lib.read_cube(root / "world" / "cubes" / "XX-Cr1")
    if scale == "s2":
      cube.s2_reflectance = cube.s2_reflectance * 10000 + 1000   # digital numbers
    else:
      cube.s1_gamma0 = 10 * np.log10(cube.s1_gamma0)              # dB
    cube_lib.cube_to_dataset(cube).to_zarr(root / name / "site" / schema.ZARR_NAME, zarr_format=3,
                                           consolidated=False, write_empty_chunks=True)
  (root / "notcube" / "site").mkdir(parents=True)
  (root / "notcube" / "site" / schema.ZARR_NAME).write_text("not a store\n")
  (root / "empty").mkdir()
  (root / "user").mkdir()
  (root / "user" / "notes.txt").write_text("mine\n")
  (root / "afile").write_text("keep\n")
  cube = demo_world.make_site_cube(5, size=24, days=30, land_cover="ENF", start=START)
  catalog = fx.write_catalog(root, fx.s2_items(cube, root, "F") + fx.s1_items(cube, root, "F"))
  sites = {"sites.csv": f"site_id,lon,lat\nF,{cube.meta.lon},{cube.meta.lat}\n",
           "far.csv": "site_id,lon,lat\nX,200,95\n", "columns.csv": "site_id,lon\nX,1\n",
           "text.csv": "site_id,lon,lat\nX,abc,50\n", "none.csv": "site_id,lon,lat\n",
           "twice.csv": "site_id,lon,lat\nX,1,50\nX,2,51\n"}
  for name, text in sites.items():
    (root / name).write_text(text)
  (root / "binary.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
  (root / "notjson").mkdir()
  (root / "notjson" / "catalog.json").write_text("{not json")
  assert build_cubes.main(_cubes_argv(root, root / "built")) == 0
  return root


def _cubes_argv(root: Path, out: Path | str, *extra: str, sites: str = "sites.csv") -> list[str]:
  return ["--sites", str(root / sites), "--start", START, "--end", END, "--out", str(out), "--size-px", "24",
          "--catalog", str(root / "stac" / "catalog.json"), "--s1-catalog", str(root / "stac" / "catalog.json"),
          "--max-cloud", "100", *extra]


W = "--seed 3 --size 24 --days 150 --start 2019-03-01"
DEMO_CASES = [
    ("sites 0 into a world", f"--out {{r}}/world {W} --sites 0", r"--sites 0: expected at least 1 site"),
    ("sites -2", f"--out {{r}}/w1 {W} --sites -2", r"--sites -2: expected at least 1"),
    ("size 0", "--out {r}/w2 --seed 1 --size 0", r"--size 0: expected at least 15 px"),
    ("size 8, below a patch", "--out {r}/w3 --seed 1 --size 8", r"--size 8: expected at least 15 px"),
    ("size beyond memory", "--out {r}/w4 --seed 1 --size 200000 --days 730", r"needs about \d+ GB of memory"),
    ("days 0", "--out {r}/w5 --seed 1 --days 0", r"--days 0: expected at least 1 day"),
    ("start not a day", "--out {r}/w6 --seed 1 --start 2019-13-45", r"--start '2019-13-45': not a calendar day"),
    ("start not ISO", "--out {r}/w7 --seed 1 --start 01/02/2019", r"--start '01/02/2019': expected a day as"),
    ("seed -1", "--out {r}/w8 --seed -1", r"--seed -1: expected a non-negative integer"),
    ("out is a file", "--out {r}/afile --seed 1", r"afile: is a file"),
    ("out under a file", "--out {r}/afile/w --seed 1", r"afile is a file, not a directory"),
    ("out on a read-only file system", "--out /sys/earthrep-test-world --seed 1", r"cannot write in /sys"),
    ("another world into a world", f"--out {{r}}/world {W} --sites 3 --seed 4".replace("--seed 3 ", ""),
     r"world: holds a demo world \(sites\.csv.*--overwrite"),
    ("fewer sites into a world", f"--out {{r}}/world {W} --sites 1", r"holds a demo world .*--overwrite"),
]

S = " ".join(SHARDS)
SHARD_CASES = [
    ("fractions 1,-1 over a build", f"--cubes {{r}}/world/cubes --out {{r}}/shards {S} --split-fractions 1,-1 "
     "--overwrite", r"--split-fractions 1,-1: expected up to 3 non-negative numbers"),
    ("fractions a,b", f"--cubes {{r}}/world/cubes --out {{r}}/s1 {S} --split-fractions a,b",
     r"--split-fractions 'a,b': expected up to 3 comma-separated numbers"),
    ("fractions 0,0,0", f"--cubes {{r}}/world/cubes --out {{r}}/s2 {S} --split-fractions 0,0,0",
     r"positive sum"),
    ("four fractions", f"--cubes {{r}}/world/cubes --out {{r}}/s3 {S} --split-fractions 1,1,1,1",
     r"--split-fractions 1,1,1,1: expected up to 3"),
    ("records per shard 0", f"--cubes {{r}}/world/cubes --out {{r}}/s4 {S} --records-per-shard 0",
     r"--records-per-shard 0: expected >= 1"),
    ("spatial stride 0", "--cubes {r}/world/cubes --out {r}/s5 --modality s2 --spatial-stride 0",
     r"--spatial-stride 0: expected a positive number"),
    ("time stride -1", "--cubes {r}/world/cubes --out {r}/s6 --modality s1 --time-stride -1",
     r"--time-stride -1: expected a positive number"),
    ("seed -1 over a build", f"--cubes {{r}}/world/cubes --out {{r}}/shards {S} --seed -1 --overwrite",
     r"--seed -1: expected a non-negative integer"),
    ("cubes missing", f"--cubes {{r}}/nowhere --out {{r}}/s7 {S}", r"nowhere: cubes: no site cubes found"),
    ("cubes folder empty", f"--cubes {{r}}/empty --out {{r}}/s8 {S}", r"empty: cubes: no site cubes found"),
    ("truncated cube over a build", f"--cubes {{r}}/bad --out {{r}}/shards {S} --overwrite",
     r"cannot read cube .*XX-Db1.*truncated store"),
    ("cube store is a file", f"--cubes {{r}}/notcube --out {{r}}/s9 {S}", r"is a file, not a Zarr store"),
    ("cube in digital numbers", f"--cubes {{r}}/dn --out {{r}}/s11 {S}",
     r"s2_reflectance: .*looks like digital numbers"),
    ("cube with S1 in dB", "--cubes {r}/db --out {r}/s12 --modality s1",
     r"s1_gamma0: mostly negative: looks like dB"),
    ("no valid window over a build", "--cubes {r}/short/cubes --out {r}/shards --modality s2 --overwrite",
     r"no cube under .* yields a valid s2 patch"),
    ("rebuild without --overwrite", f"--cubes {{r}}/world/cubes --out {{r}}/shards {S} --seed 5",
     r"shards: exists \(shard directory\); pass --overwrite"),
    ("out is a file", f"--cubes {{r}}/world/cubes --out {{r}}/afile {S}", r"afile: is a file"),
    ("out on a read-only file system", f"--cubes {{r}}/world/cubes --out /sys/earthrep-test-shards {S}",
     r"cannot write in /sys"),
    ("out is the cubes folder", f"--cubes {{r}}/world/cubes --out {{r}}/world/cubes {S} --overwrite",
     r"overlaps the input --cubes"),
    ("out holds the cubes", f"--cubes {{r}}/world/cubes --out {{r}}/world {S} --overwrite",
     r"overlaps the input --cubes"),
    ("out is a user folder", f"--cubes {{r}}/world/cubes --out {{r}}/user {S} --overwrite",
     r"user: exists and is not a shard directory"),
    ("unknown modality", "--cubes {r}/world/cubes --out {r}/s10 --modality s3", r"--modality: invalid choice"),
]

C = "--start 2021-11-15 --end 2021-12-20 --size-px 24 --max-cloud 100 --catalog {r}/stac/catalog.json"
CUBES_CASES = [
    ("rerun over a build", f"--sites {{r}}/sites.csv {C} --out {{r}}/built",
     r"built: holds an earlier build \(build_report\.json and cubes of F\); pass --resume"),
    ("resume with another end", f"--sites {{r}}/sites.csv {C} --out {{r}}/built --resume".replace(
        "2021-12-20", "2021-12-05"), r"earlier run used other settings \(end '2021-12-20' -> '2021-12-05'\)"),
    ("start not a day", f"--sites {{r}}/sites.csv {C} --out {{r}}/c1".replace("2021-11-15", "2021-13-45"),
     r"--start '2021-13-45': not a calendar day"),
    ("start not ISO", f"--sites {{r}}/sites.csv {C} --out {{r}}/c2".replace("2021-11-15", "15.11.2021"),
     r"--start '15\.11\.2021': expected a day as YYYY-MM-DD"),
    ("end before start", f"--sites {{r}}/sites.csv {C} --out {{r}}/c3".replace("2021-12-20", "2021-01-01"),
     r"--end 2021-01-01 is before --start"),
    ("size 0", f"--sites {{r}}/sites.csv {C} --out {{r}}/c4 --size-px 0", r"--size-px 0: expected 15 to"),
    ("size beyond a site", f"--sites {{r}}/sites.csv {C} --out {{r}}/c5 --size-px 20000",
     r"--size-px 20000: expected 15 to 10000"),
    ("max cloud 150", f"--sites {{r}}/sites.csv {C} --out {{r}}/c6 --max-cloud 150",
     r"--max-cloud 150: expected a percentage"),
    ("max cloud -1", f"--sites {{r}}/sites.csv {C} --out {{r}}/c7 --max-cloud -1", r"--max-cloud -1: expected"),
    ("workers -1", f"--sites {{r}}/sites.csv {C} --out {{r}}/c8 --workers -1", r"--workers -1: expected 0"),
    ("site outside the UTM zones", f"--sites {{r}}/far.csv {C} --out {{r}}/c9",
     r"far\.csv:2: lon 200, lat 95: expected degrees"),
    ("sites file missing", f"--sites {{r}}/nope.csv {C} --out {{r}}/c10", r"--sites .*nope\.csv: unreadable"),
    ("sites file without lat", f"--sites {{r}}/columns.csv {C} --out {{r}}/c11",
     r"columns\.csv:2: expected columns site_id, lon, lat"),
    ("lon not a number", f"--sites {{r}}/text.csv {C} --out {{r}}/c12", r"text\.csv:2: expected columns"),
    ("no sites", f"--sites {{r}}/none.csv {C} --out {{r}}/c13", r"none\.csv: no sites"),
    ("sites file binary", f"--sites {{r}}/binary.csv {C} --out {{r}}/c14",
     r"binary\.csv: unreadable as a UTF-8 CSV file"),
    ("site id twice", f"--sites {{r}}/twice.csv {C} --out {{r}}/c15", r"twice\.csv:3: site_id 'X' .*repeated"),
    ("catalogue not JSON", f"--sites {{r}}/sites.csv {C} --out {{r}}/c16".replace(
        "{r}/stac/catalog.json", "{r}/notjson/catalog.json"), r"cannot open the catalogue \(JSONDecodeError"),
    ("catalogue unknown", f"--sites {{r}}/sites.csv {C} --out {{r}}/c17".replace(
        "{r}/stac/catalog.json", "landsat-look"), r"--catalog 'landsat-look': unknown catalogue"),
    ("catalogue file missing", f"--sites {{r}}/sites.csv {C} --out {{r}}/c18".replace(
        "{r}/stac/catalog.json", "{r}/nowhere/catalog.json"), r"nowhere/catalog\.json does not exist"),
    ("out is a file", f"--sites {{r}}/sites.csv {C} --out {{r}}/afile", r"afile: is a file"),
    ("out on a read-only file system", f"--sites {{r}}/sites.csv {C} --out /sys/earthrep-test-cubes",
     r"cannot write in /sys"),
    ("resume and overwrite", f"--sites {{r}}/sites.csv {C} --out {{r}}/built --resume --overwrite",
     r"--overwrite: not allowed with argument --resume"),
]


def _argv(template: str, root: Path) -> list[str]:
  return template.format(r=root).split()


def _all_but_stac(root: Path) -> list[Path]:
  """Everything in the fixture but the STAC catalogue's files, which only build_cubes reads."""
  return [p for p in root.iterdir() if p.name not in ("F", "stac", "built")]


@pytest.mark.parametrize("case,argv,pattern", DEMO_CASES, ids=[c[0] for c in DEMO_CASES])
def test_demo_world_refuses(root, capsys, case, argv, pattern):
  names = sorted(p.name for p in root.iterdir())
  assert_refused(demo_world.main, _argv(argv, root), capsys, pattern, *_all_but_stac(root))
  assert sorted(p.name for p in root.iterdir()) == names   # no new output either


@pytest.mark.parametrize("case,argv,pattern", SHARD_CASES, ids=[c[0] for c in SHARD_CASES])
def test_build_shards_refuses(root, capsys, case, argv, pattern):
  names = sorted(p.name for p in root.iterdir())
  assert_refused(build_shards.main, _argv(argv, root), capsys, pattern, *_all_but_stac(root),
                 usage="invalid choice" in pattern)
  assert sorted(p.name for p in root.iterdir()) == names


@pytest.mark.parametrize("case,argv,pattern", CUBES_CASES, ids=[c[0] for c in CUBES_CASES])
def test_build_cubes_refuses(root, capsys, case, argv, pattern):
  assert_refused(build_cubes.main, _argv(argv, root), capsys, pattern, root, usage="not allowed" in pattern)


def _records(out: Path) -> list[bytes]:
  from array_record.python.array_record_module import ArrayRecordReader
  meta = json.loads((out / schema.SHARD_METADATA).read_text())
  records = []
  for split in meta["splits"].values():
    for f in split["files"]:
      reader = ArrayRecordReader(str(out / f["path"]))
      records += reader.read_all()
      reader.close()
  return records


def test_killed_shard_build_keeps_the_old_build_and_the_rerun_equals_a_straight_one(root, tmp_path, capsys):
  out, straight = tmp_path / "shards", tmp_path / "straight"
  shutil.copytree(root / "shards", out)   # an earlier build (seed 42) that a --seed 7 rebuild replaces
  old = snapshot(out)
  argv = ["--cubes", str(root / "world" / "cubes"), "--out", str(out), *SHARDS, "--seed", "7", "--overwrite",
          "--records-per-shard", "2"]
  # The build blocks after its third record (a hook in the child, so that the kill lands mid-build).
  hook = textwrap.dedent(f"""
      import sys, time
      from data_prep import build_shards as bs
      real, n = bs.SplitWriter.write, [0]
      def write(self, record):
        real(self, record)
        n[0] += 1
        if n[0] == 3:
          print("three records written", flush=True)
          time.sleep(300)
      bs.SplitWriter.write = write
      sys.exit(bs.main({argv!r}))""")
  proc = subprocess.Popen([sys.executable, "-c", hook], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  output = []
  for line in proc.stdout:
    output.append(line)
    if "three records written" in line:
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, "".join(output)
  assert snapshot(out) == old                                   # the earlier build is untouched
  assert (tmp_path / ".shards.partial").is_dir()                # the killed build's leftover
  assert run_cli(build_shards.main, argv, capsys)[0] == 0       # the same command again
  assert not (tmp_path / ".shards.partial").exists()
  assert build_shards.main([*argv[:3], str(straight), *argv[4:-3], "--records-per-shard", "2"]) == 0
  assert _records(out) == _records(straight) and len(_records(out)) > 3
  meta, ref = (json.loads((d / schema.SHARD_METADATA).read_text()) for d in (out, straight))
  assert meta["seed"] == 7 and meta["counts"] == ref["counts"]


def test_suspect_cubes_are_counted_warnings_and_paths_stay_as_given(root, tmp_path, monkeypatch):
  cubes = tmp_path / "cubes"
  no_s1 = cube_lib.read_cube(root / "world" / "cubes" / "XX-Cr1")
  no_s1.s1_gamma0[:] = np.nan
  cube_lib.write_zarr(no_s1, cubes / "a_no_s1")
  shutil.copytree(root / "short" / "cubes" / "XX-Cr1", cubes / "b_short")
  monkeypatch.chdir(tmp_path)
  assert build_shards.main(["--cubes", "cubes", "--out", "out", "--modality", "fused", "--spatial-stride", "5",
                            "--time-stride", "10", "--split-fractions", "1,0,0"]) == 0
  meta = json.loads((tmp_path / "out" / schema.SHARD_METADATA).read_text())
  messages = meta["warnings"]["messages"]
  assert meta["warnings"]["count"] == len(messages) == 2
  assert "a_no_s1" in messages[0] and "s1_gamma0: all NaN" in messages[0]
  assert "b_short" in messages[1] and "no valid window" in messages[1]
  prov = meta["provenance"]
  assert prov["cubes_dir"] == "cubes" and prov["cube_paths"] == ["cubes/a_no_s1", "cubes/b_short"]
  assert prov["command"].startswith("python -m data_prep.build_shards --cubes cubes")
  assert str(tmp_path) not in json.dumps(meta)


@pytest.fixture
def stac_server(root):
  """The test catalogue over HTTP on the loopback interface."""
  class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):   # the server's own request log is not the tool's
      pass
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
  threading.Thread(target=server.serve_forever, daemon=True).start()
  yield f"127.0.0.1:{server.server_address[1]}"
  server.shutdown()


def test_catalogue_credentials_never_reach_the_log_or_the_report(root, tmp_path, stac_server, capsys, caplog):
  url = f"http://alice:{SECRET}@{stac_server}/stac/catalog.json?token={SECRET}&sig={SECRET}"
  argv = ["--sites", str(root / "sites.csv"), "--start", START, "--end", END, "--out", str(tmp_path / "out"),
          "--size-px", "24", "--catalog", url, "--s1-catalog", "none"]
  with caplog.at_level(logging.DEBUG):
    rc, err = run_cli(build_cubes.main, argv, capsys)
  report = (tmp_path / "out" / build_cubes.REPORT).read_text()
  assert rc in (0, 1), err                      # the site may fail (a static catalogue has no search)
  assert json.loads(report)["catalog"] == f"http://***@{stac_server}/stac/catalog.json?token=***&sig=***"
  for text in (report, caplog.text, err, capsys.readouterr().out):
    assert SECRET not in text
  for path in (tmp_path / "out").rglob("*"):
    assert path.is_dir() or SECRET.encode() not in path.read_bytes()
