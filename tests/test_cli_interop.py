"""Bad inputs to `earthrep.convert` and `earthrep.parity`: each ends in one error line and exit status 2 with
every file left byte-identical; `--overwrite` replaces only an earlier checkpoint; provenance keeps paths
as given."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import assert_refused, run_cli, snapshot
from earthrep import convert as convert_cli
from earthrep import parity
from earthrep.interop import convert, torch_import
from earthrep.models.params import abstract_params

PARITY = Path(__file__).parent / "data" / "parity"


def _state_dict(name: str) -> dict[str, np.ndarray]:
  model = convert.preset_model(name)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), abstract_params(model))
  return torch_import.state_dict_from_params(model, params)


def _npz(path: Path, arrays: dict[str, np.ndarray], prefix: str = "param/") -> Path:
  np.savez(path, **{f"{prefix}{k}": v for k, v in arrays.items()})
  return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """s1.npz (a valid S1 state dict), ck (its converted checkpoint), user/ (a user's folder), bad inputs."""
  root = tmp_path_factory.mktemp("interop")
  sd = _state_dict("s1_ae")
  s1 = _npz(root / "s1.npz", sd)
  assert convert_cli.main(["--state-dict", str(s1), "--model", "s1_ae", "--out", str(root / "ck")]) == 0
  shutil.copytree(root / "ck", root / "workdir")   # a stage workdir: model_config.json and checkpoints/
  (root / "workdir" / "checkpoints" / "3").mkdir(parents=True)
  (root / "user").mkdir()
  (root / "user" / "notes.txt").write_text("mine\n")
  (root / "text.npz").write_text("not a zip archive\n")
  np.savez(root / "empty.npz")
  _npz(root / "int.npz", {k: v.astype(np.int64) for k, v in sd.items()})
  first = next(iter(sd))
  _npz(root / "nan.npz", {**sd, first: np.full_like(sd[first], np.nan)})
  data = s1.read_bytes()
  (root / "cut.npz").write_bytes(data[: len(data) // 2])
  vectors = dict(np.load(PARITY / "s2_ae.npz"))
  def vec(name, **changes):
    np.savez(root / name, **{k: v for k, v in {**vectors, **changes}.items() if v is not None})
  vec("no_input.npz", **{"inputs/x": None})
  vec("bad_shape.npz", **{"inputs/x": vectors["inputs/x"][:, :, :3]})
  vec("no_meta.npz", **{"meta/config": None})
  vec("bad_json.npz", **{"meta/config": np.array("{not json")})
  vec("list_meta.npz", **{"meta/config": np.array("[1, 2]")})
  cfg = json.loads(str(vectors["meta/config"]))
  vec("channels_text.npz", **{"meta/config": np.array(json.dumps(cfg | {"channels": "ten"}))})
  vec("no_params.npz", **{k: None for k in vectors if k.startswith("param/") or k == "meta/state_dict"})
  vec("nothing.npz", **{k: None for k in vectors if k.startswith(parity_prefixes())})
  (root / "cut_vectors.npz").write_bytes((PARITY / "s2_ae.npz").read_bytes()[:4000])
  return root


def parity_prefixes() -> tuple[str, ...]:
  from earthrep.interop.parity import COMPARED
  return COMPARED


# (id, argv relative to the fixture root ({r} = root), expected error pattern)
CONVERT_CASES = [
    ("missing state dict", "--state-dict {r}/none.npz --model s1_ae --out {r}/o1", r"none\.npz: no such file"),
    ("not an npz", "--state-dict {r}/text.npz --model s1_ae --out {r}/o2", r"text\.npz: unreadable \.npz"),
    ("truncated npz", "--state-dict {r}/cut.npz --model s1_ae --out {r}/o3", r"cut\.npz: unreadable \.npz"),
    ("empty npz", "--state-dict {r}/empty.npz --model s1_ae --out {r}/o4", r"empty\.npz: holds no tensors"),
    ("integer tensors", "--state-dict {r}/int.npz --model s1_ae --out {r}/o5",
     r"int\.npz: .*dtype int64, expected a float"),
    ("NaN tensor", "--state-dict {r}/nan.npz --model s1_ae --out {r}/o6", r"nan\.npz: .*non-finite values"),
    ("S1 weights into the S2 preset", "--state-dict {r}/s1.npz --model s2_ae --out {r}/o7",
     r"s1\.npz: state dict does not fit .*misshaped key"),
    ("S1 weights into fusion", "--state-dict {r}/s1.npz --model fusion --out {r}/o8", r"s1\.npz: .*missing key"),
    ("reduced tokens 0", "--state-dict {r}/s1.npz --model s1_ae --out {r}/o9 --reduced-tokens 0",
     r"--reduced-tokens 0: expected 1 to 11"),
    ("reduced tokens -1", "--state-dict {r}/s1.npz --model s1_ae --out {r}/o10 --reduced-tokens -1",
     r"--reduced-tokens -1: expected 1 to 11"),
    ("reduced tokens with fusion", "--state-dict {r}/s1.npz --model fusion --out {r}/o11 --reduced-tokens 3",
     r"--reduced-tokens applies to s1_ae / s2_ae only"),
    ("out exists", "--state-dict {r}/s1.npz --model s1_ae --out {r}/ck", r"--out .*ck: exists .*--overwrite"),
    ("out is a user folder, with --overwrite", "--state-dict {r}/s1.npz --model s1_ae --out {r}/user --overwrite",
     r"user: exists and is not a converted checkpoint"),
    ("out is a training workdir, with --overwrite", "--state-dict {r}/s1.npz --model s1_ae --out {r}/workdir "
     "--overwrite", r"workdir: exists and is not a converted checkpoint"),
    ("out is a file", "--state-dict {r}/s1.npz --model s1_ae --out {r}/text.npz", r"text\.npz: is a file"),
    ("out is the state dict", "--state-dict {r}/s1.npz --model s1_ae --out {r}/s1.npz --overwrite",
     r"overlaps the input --state-dict"),
    ("out under a file", "--state-dict {r}/s1.npz --model s1_ae --out {r}/text.npz/ck", r"text\.npz is a file"),
    ("out on a read-only file system", "--state-dict {r}/s1.npz --model s1_ae --out /sys/earthrep-test-ck",
     r"/sys/earthrep-test-ck: cannot write in /sys"),
    ("torch checkpoint without torch", "--state-dict {r}/user/notes.txt --model s1_ae --out {r}/o12",
     r"notes\.txt: (reading a PyTorch checkpoint needs torch|cannot read as a torch checkpoint)"),
]

PARITY_CASES = [
    ("S2 vectors as s1_ae", f"--vectors {PARITY}/s2_ae.npz --model s1_ae",
     r"meta/config: channels 10, but s1_ae has 2"),
    ("S2 vectors as fusion", f"--vectors {PARITY}/s2_ae.npz --model fusion", r"an autoencoder's vectors"),
    ("fusion vectors as s2_ae", f"--vectors {PARITY}/fusion.npz --model s2_ae", r"fusion vectors, not s2_ae"),
    ("missing file", "--vectors {r}/none.npz --model s2_ae", r"none\.npz: unreadable parity vectors"),
    ("not an npz", "--vectors {r}/text.npz --model s2_ae", r"text\.npz: unreadable parity vectors"),
    ("truncated", "--vectors {r}/cut_vectors.npz --model s2_ae", r"cut_vectors\.npz: unreadable parity vectors"),
    ("no meta/config", "--vectors {r}/no_meta.npz --model s2_ae", r"no_meta\.npz: unreadable .*meta/config"),
    ("meta/config not JSON", "--vectors {r}/bad_json.npz --model s2_ae", r"bad_json\.npz: unreadable .*JSON"),
    ("meta/config a list", "--vectors {r}/list_meta.npz --model s2_ae",
     r"meta/config: list, expected a JSON object"),
    ("channels not a number", "--vectors {r}/channels_text.npz --model s2_ae",
     r"channels 'ten': expected a number"),
    ("inputs/x missing", "--vectors {r}/no_input.npz --model s2_ae", r"no_input\.npz: inputs/x: missing array"),
    ("inputs/x wrong shape", "--vectors {r}/bad_shape.npz --model s2_ae",
     r"inputs/x: shape \(\d+, 11, 3, 15, 15\), expected \(batch, 11, 10, 15, 15\)"),
    ("no parameters", "--vectors {r}/no_params.npz --model s2_ae", r"param/\* or meta/state_dict: .*missing key"),
    ("nothing to compare", "--vectors {r}/nothing.npz --model s2_ae", r"holds no outputs/\*.* arrays to compare"),
]


def _argv(template: str, root: Path) -> list[str]:
  return template.format(r=root).split()


@pytest.mark.parametrize("case,argv,pattern", CONVERT_CASES, ids=[c[0] for c in CONVERT_CASES])
def test_convert_refuses(files, capsys, case, argv, pattern):
  assert_refused(convert_cli.main, _argv(argv, files), capsys, pattern, files)


@pytest.mark.parametrize("case,argv,pattern", PARITY_CASES, ids=[c[0] for c in PARITY_CASES])
def test_parity_refuses(files, capsys, case, argv, pattern):
  assert_refused(parity.main, _argv(argv, files), capsys, pattern, files, PARITY)


def test_convert_overwrite_replaces_only_a_checkpoint_and_keeps_paths_as_given(files, tmp_path, capsys,
                                                                               monkeypatch):
  monkeypatch.chdir(files)
  out = tmp_path / "ck"
  rc, _ = run_cli(convert_cli.main, ["--state-dict", "s1.npz", "--model", "s1_ae", "--out", str(out)], capsys)
  assert rc == 0
  first = snapshot(out)
  assert json.loads((out / "model_config.json").read_text())["source"] == "s1.npz"   # as given, not resolved
  rc, _ = run_cli(convert_cli.main, ["--state-dict", "s1.npz", "--model", "s1_ae", "--out", str(out),
                                     "--reference-batch-mixing", "--overwrite"], capsys)
  assert rc == 0 and snapshot(out) != first
  assert json.loads((out / "model_config.json").read_text())["model"]["reference_batch_mixing"] is True
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary left
  assert os.path.isdir(files / "user") and (files / "user" / "notes.txt").read_text() == "mine\n"
