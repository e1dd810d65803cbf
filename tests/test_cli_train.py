"""Bad inputs to `earthrep.train`: each ends in one error line and exit status 2 before anything is
compiled, with every file left byte-identical; above all a workdir holding another run (another sensor,
seed or data) is refused, not rewritten. `--overwrite` discards only the run's own entries. (The SIGKILL +
resume case of training is tests/test_train.py's.)"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import orbax.checkpoint as ocp
import pytest

from helpers import assert_refused
from data_prep import build_shards, demo_world
from earthrep import train
from earthrep.interop import torch_import
from earthrep.io import checkpoint
from earthrep.models.params import abstract_params
from earthrep.training import configs, trainer

S2 = "--config experiments/s2_ae.py:test"
S1 = "--config experiments/s1_ae.py:test"
FUSION = "--config experiments/fusion.py:test"


def _workdir_as_trained(workdir: Path, config) -> None:
  """A stage-1 workdir in the trainer's layout without training it: model_config.json written as
  `train_and_evaluate` writes it, and a params checkpoint (random weights) under best/ and checkpoints/."""
  task = trainer.build_task(config)
  workdir.mkdir(parents=True)
  stored = {"config": config.to_dict(), "data_fingerprint": trainer.data_fingerprint(config)}
  checkpoint.write_model_config(workdir, task.model_config() | stored)
  params = torch_import.random_params(task.model)
  for kind in ("best", "checkpoints"):
    ocp.PyTreeCheckpointer().save(workdir / kind / "1" / "params", params)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """sh_s1/, sh_s2/ (shards of a small world), sh_cut/ (a truncated shard), s2wd/ (an S2 workdir),
  nocfg/ (checkpoints without model_config.json), badcfg/ (an unreadable one), afile."""
  root = tmp_path_factory.mktemp("train")
  demo_world.make_world(root / "world", seed=3, size=24, sites=3, start="2019-03-01", days=150)
  for modality in ("s1", "s2"):
    assert build_shards.main(["--cubes", str(root / "world" / "cubes"), "--out", str(root / f"sh_{modality}"),
                              "--modality", modality, "--spatial-stride", "5", "--time-stride", "10"]) == 0
  assert build_shards.main(["--cubes", str(root / "world" / "cubes"), "--out", str(root / "sh_s2_seed5"), "--seed",
                            "5", "--modality", "s2", "--spatial-stride", "5", "--time-stride", "10"]) == 0
  shutil.copytree(root / "sh_s2", root / "sh_cut")
  shard = sorted((root / "sh_cut" / "train").iterdir())[0]
  shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
  config = configs.stage1_config("s2", "test")
  config.data_dir = str(root / "sh_s2")
  _workdir_as_trained(root / "s2wd", config)
  shutil.copytree(root / "s2wd", root / "nocfg")
  (root / "nocfg" / checkpoint.MODEL_CONFIG).unlink()
  shutil.copytree(root / "s2wd", root / "badcfg")
  (root / "badcfg" / checkpoint.MODEL_CONFIG).write_text('{"kind": "autoenc')
  (root / "afile").write_text("keep\n")
  return root


D2, D1 = "--config.data_dir={r}/sh_s2", "--config.data_dir={r}/sh_s1"
CASES = [
    ("S1 config on an S2 workdir", f"{S1} --workdir {{r}}/s2wd {D1}",
     r"s2wd: holds a run with other settings \(sensor: 's2' -> 's1'; .*model\.bottleneck: 9 -> 2"),
    ("another seed on a workdir", f"{S2} --workdir {{r}}/s2wd {D2} --config.seed=7",
     r"other settings \(config\.seed: 42 -> 7\).*--overwrite"),
    ("other data on a workdir", f"{S2} --workdir {{r}}/s2wd --config.data_dir={{r}}/sh_s2_seed5",
     r"other settings \(data_fingerprint: '\w+' -> '\w+'\)"),
    ("another model size on a workdir", f"{S2} --workdir {{r}}/s2wd {D2} --config.model.d_model=64",
     r"model\.d_model: 32 -> 64"),
    ("workdir with an unreadable model_config.json", f"{S2} --workdir {{r}}/badcfg {D2}",
     r"badcfg/model_config\.json: unreadable .*--overwrite"),
    ("workdir with checkpoints but no model_config.json", f"{S2} --workdir {{r}}/nocfg {D2}",
     r"nocfg: has checkpoints but no model_config\.json"),
    ("config file missing", "--config experiments/none.py --workdir {r}/w",
     r"--config: cannot load the config file"),
    ("config variant unknown", "--config experiments/s2_ae.py:huge --workdir {r}/w",
     r"--config=experiments/s2_ae\.py:huge: .*unknown config variant 'huge'"),
    ("unknown config field", f"{S2} --workdir {{r}}/w --config.bogus=1", r"--config: unknown field .*bogus"),
    ("config field of the wrong type", f"{S2} --workdir {{r}}/w --config.batch_size=abc",
     r"--config\.batch_size=abc: invalid literal"),
    ("no --workdir", f"{S2} {D2}", r"--workdir: required"),
    ("no --config", "--workdir {r}/w", r"--config: required"),
    ("stray argument", f"{S2} --workdir {{r}}/w {D2} extra", r"unexpected arguments \['extra'\]"),
    ("data_dir missing", f"{S2} --workdir {{r}}/w --config.data_dir={{r}}/none",
     r"none/metadata\.json: shard metadata not found"),
    ("data_dir holds cubes, not shards", f"{S2} --workdir {{r}}/w --config.data_dir={{r}}/world/cubes",
     r"cubes/metadata\.json: shard metadata not found"),
    ("S1 model on S2 shards", f"{S1} --workdir {{r}}/w {D2}", r"modality 's2' .* lack \['s1'\]"),
    ("truncated shard", f"{S2} --workdir {{r}}/w --config.data_dir={{r}}/sh_cut",
     r"train/s2-train\.array_record-00000-of-00001: .*(truncated|corrupt)"),
    ("workdir is a file", f"{S2} --workdir {{r}}/afile {D2}", r"--workdir .*afile: is a file"),
    ("workdir under a file", f"{S2} --workdir {{r}}/afile/w {D2}", r"afile is a file, not a directory"),
    ("workdir on a read-only file system", f"{S2} --workdir /sys/earthrep-test-wd {D2}", r"cannot write in /sys"),
    ("batch size 0", f"{S2} --workdir {{r}}/w {D2} --config.batch_size=0", r"batch_size=0: expected a positive"),
    ("batch size -4", f"{S2} --workdir {{r}}/w {D2} --config.batch_size=-4",
     r"batch_size=-4: expected a positive"),
    ("total steps -1", f"{S2} --workdir {{r}}/w {D2} --config.total_steps=-1",
     r"total_steps=-1: expected a non-neg"),
    ("no steps and no epochs", f"{S2} --workdir {{r}}/w {D2} --config.total_steps=0 --config.num_epochs=0",
     r"total_steps and --config\.num_epochs are both 0"),
    ("learning rate -1", f"{S2} --workdir {{r}}/w {D2} --config.optimizer.lr=-1.0",
     r"lr=-1\.0: expected a positive"),
    ("learning rate nan", f"{S2} --workdir {{r}}/w {D2} --config.optimizer.lr=nan",
     r"lr=nan: expected a positive"),
    ("seed -1", f"{S2} --workdir {{r}}/w {D2} --config.seed=-1", r"seed=-1: expected a non-negative integer"),
    ("keep_best 0", f"{S2} --workdir {{r}}/w {D2} --config.keep_best=0", r"keep_best=0: expected a positive"),
    ("more devices than there are", f"{S2} --workdir {{r}}/w {D2} --config.num_devices=3",
     r"num_devices: .*"),
    ("fusion without its S1 workdir", f"{FUSION} --workdir {{r}}/w {D2} --config.s1_workdir={{r}}/none "
     "--config.s2_workdir={r}/s2wd", r"none: no such checkpoint or workdir"),
    ("fusion with the S2 workdir as S1", f"{FUSION} --workdir {{r}}/w {D2} --config.s1_workdir={{r}}/s2wd "
     "--config.s2_workdir={r}/s2wd", r"--config\.s1_workdir .*s2wd: holds the s2 autoencoder, not s1"),
    ("fusion with an empty S1 workdir setting", f"{FUSION} --workdir {{r}}/w {D2} --config.s1_workdir= "
     "--config.s2_workdir={r}/s2wd", r"missing --config\.s1_workdir"),
    ("hide probability 2", f"{FUSION} --workdir {{r}}/w {D2} --config.s1_workdir={{r}}/s2wd "
     "--config.s2_workdir={r}/s2wd --config.data_kwargs.hide_centre_prob=2.0",
     r"(hide_centre_prob=2\.0: expected a probability|holds the s2 autoencoder)"),
]


@pytest.mark.parametrize("case,argv,pattern", CASES, ids=[c[0] for c in CASES])
def test_train_refuses(root, capsys, case, argv, pattern):
  assert_refused(train.main, argv.format(r=root).split(), capsys, pattern, root)
  assert not (root / "w").exists()   # no workdir was even created


def test_refused_workdir_still_loads(root, capsys):
  assert_refused(train.main, f"{S1} --workdir {root}/s2wd --config.data_dir={root}/sh_s1".split(), capsys,
                 r"holds a run with other settings", root)
  stored = json.loads((root / "s2wd" / checkpoint.MODEL_CONFIG).read_text())
  assert stored["sensor"] == "s2"
  config = configs.stage1_config("s2", "test")
  params = checkpoint.load_params(root / "s2wd", target=abstract_params(trainer.build_task(config).model))
  assert params


def test_overwrite_discards_only_the_runs_own_entries(root, tmp_path):
  workdir = tmp_path / "wd"
  shutil.copytree(root / "s2wd", workdir)
  (workdir / "tensorboard").mkdir()
  (workdir / "notes.txt").write_text("the user's\n")
  config = configs.stage1_config("s1", "test")
  config.data_dir = str(root / "sh_s1")
  current = trainer.build_task(config).model_config() | {"config": config.to_dict(),
                                                         "data_fingerprint": trainer.data_fingerprint(config)}
  with pytest.raises(trainer.ConfigError, match="other settings"):
    trainer.prepare_workdir(workdir, current, overwrite=False)
  trainer.prepare_workdir(workdir, current, overwrite=True)
  assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]
  trainer.prepare_workdir(workdir, current, overwrite=False)   # an emptied workdir is a new one


def test_resume_may_change_the_schedule_and_the_data_path_but_not_the_run(root, tmp_path):
  config = configs.stage1_config("s2", "test")
  config.data_dir = str(root / "sh_s2")
  stored = {"kind": "autoencoder", "sensor": "s2", "model": {"d_model": 32}, "config": config.to_dict(),
            "data_fingerprint": trainer.data_fingerprint(config)}
  longer = config.copy_and_resolve_references()
  longer.total_steps, longer.log_every_steps, longer.data_dir = 100, 7, str(tmp_path / "moved")
  shutil.copytree(root / "sh_s2", tmp_path / "moved")   # the same shards, moved
  current = stored | {"config": longer.to_dict(), "data_fingerprint": trainer.data_fingerprint(longer)}
  assert trainer.run_differences(stored, current) == []
  longer.optimizer.lr = 0.5
  assert trainer.run_differences(stored, current | {"config": longer.to_dict()}) == [
      f"config.optimizer.lr: {config.optimizer.lr!r} -> 0.5"]
  older = {k: v for k, v in stored.items() if k != "data_fingerprint"}   # a workdir of an earlier version
  assert trainer.run_differences(older, stored) == []
  assert trainer.run_differences(older, current)[0].startswith("config.data_dir: ")
  # a run written before the params' moving average existed resumes as it was (ema_decay 0), not otherwise
  no_ema = json.loads(json.dumps(stored))
  del no_ema["config"]["optimizer"]["ema_decay"]
  assert trainer.run_differences(no_ema, stored) == []
  stored["config"]["optimizer"]["ema_decay"] = 0.99
  assert trainer.run_differences(no_ema, stored) == ["config.optimizer.ema_decay: '<unset>' -> 0.99"]
  # ... and one written before the autoencoders' centre path existed (stage 1 and fusion layouts)
  before = {"model": {"fill": "frame", "autoencoders": {"s2": {"fill": "frame"}}}}
  after = {"model": {"fill": "frame", "centre_path": False,
                     "autoencoders": {"s2": {"fill": "frame", "centre_path": False}}}}
  assert trainer.run_differences(before, after) == []
  after["model"]["autoencoders"]["s2"]["centre_path"] = True
  assert trainer.run_differences(before, after) == [
      "model.autoencoders.s2.centre_path: '<unset>' -> True"]
  # ... and a fusion run written before the fusion's centre heads existed
  no_head = {"model": {"bottleneck": 7}, "config": {"model": {"bottleneck": 7}, "loss": {"reference": False}}}
  head = json.loads(json.dumps(no_head))
  head["model"]["centre_head"] = head["config"]["model"]["centre_head"] = False
  head["config"]["loss"]["centre_weight"] = 1.0
  assert trainer.run_differences(no_head, head) == []
  head["model"]["centre_head"] = head["config"]["model"]["centre_head"] = True
  assert trainer.run_differences(no_head, head) == ["model.centre_head: '<unset>' -> True",
                                                    "config.model.centre_head: '<unset>' -> True"]
  # ... and a stage-1 run written before stage 1 took loader options (it hid nothing)
  stored["config"]["optimizer"]["ema_decay"] = config.optimizer.ema_decay
  no_kwargs = json.loads(json.dumps(stored))
  del no_kwargs["config"]["data_kwargs"]
  assert stored["config"]["data_kwargs"] == {"hide_centre_prob": 0.0, "hide_sensor": "s2"}
  assert trainer.run_differences(no_kwargs, stored) == []
  stored["config"]["data_kwargs"]["hide_centre_prob"] = 0.25
  assert trainer.run_differences(no_kwargs, stored) == [
      "config.data_kwargs.hide_centre_prob: '<unset>' -> 0.25", "config.data_kwargs.hide_sensor: '<unset>' -> 's2'"]
