"""End-to-end stage-1 training on tiny shards: learning, checkpoints, 1 vs 2 devices, kill + resume, NaN guard."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO, run_module
from earthrep.io import checkpoint
from earthrep.training import configs
from earthrep.training import trainer as train


def _test_config(sensor: str, data_dir, **overrides):
  config = configs.stage1_config(sensor, "test")
  config.data_dir = str(data_dir)
  config.update(overrides)
  return config


def _latest_params(workdir):
  mgr = ocp.CheckpointManager(workdir / "checkpoints", item_names=("params",))
  step = mgr.latest_step()
  return step, ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(step) / "params")


def test_stage1_trains_checkpoints_and_restores_best(tiny_shards, tmp_path):
  config = _test_config("s2", tiny_shards("s2"), total_steps=8, eval_every_steps=4)
  out = train.train_and_evaluate(config, tmp_path / "s2")
  assert out["step"] == 8
  steps = [h["step"] for h in out["history"]]
  assert steps == [0, 4, 8]
  assert all(np.isfinite(h["val_metric"]) and h["val_metric"] > 0 for h in out["history"])
  # best/ holds the lowest validation metric; the fusion stage loads params from there.
  best_dir = checkpoint.find_params_dir(tmp_path / "s2")
  best = min(out["history"][1:], key=lambda h: h["val_metric"])
  assert best_dir.name == str(best["step"])
  params = checkpoint.load_params(tmp_path / "s2", target=out["params"])
  assert len(params) == len(out["params"])
  cfg = json.loads((tmp_path / "s2" / "model_config.json").read_text())
  assert cfg["sensor"] == "s2" and cfg["model"]["channels"] == 10
  assert list((tmp_path / "s2" / "tensorboard").iterdir()), "no TensorBoard event file"
  assert train.read_history(tmp_path / "s2") == json.loads(json.dumps(out["history"]))   # history.json
  # the summary of the stage: the best checkpoint's centre MAE on a split, the curve
  from earthrep import summarize
  assert summarize.main(["--run", f"s2_ae={tmp_path / 's2'}", "--out", str(tmp_path / "summary"),
                         "--splits", "validation"]) == 0
  table = (tmp_path / "summary" / "summary.md").read_text()
  row = next(line for line in table.splitlines() if line.startswith("| s2_ae | validation | s2 |"))
  assert float(row.split("|")[7]) == pytest.approx(best["val_metric"], abs=6e-5)   # printed to 4 decimals
  assert (tmp_path / "summary" / "curves.png").stat().st_size > 1000
  # and beside it what simple rules reach on the same split: four finite scores for the S2 shards
  rule = next(line for line in table.splitlines() if line.startswith(f"| {config.data_dir} | validation | s2 |"))
  scores = [float(v) for v in rule.strip("|").split("|")[3:]]
  assert len(scores) == 4 and all(np.isfinite(scores)) and min(scores) > 0, rule


def test_stage1_learns_to_fill_a_hidden_centre_frame(tiny_shards, tmp_path):
  """`data_kwargs.hide_centre_prob` in stage 1: the centre frame is hidden from the input, still scored, and
  the summary reports the hidden case beside the visible one."""
  from earthrep import data
  from earthrep.training import summary, tasks
  config = _test_config("s2", tiny_shards("s2"), total_steps=4, eval_every_steps=4)
  config.data_kwargs.hide_centre_prob = 1.0
  task = tasks.make_task(config)
  batch = next(iter(data.make_loader(config.data_dir, "train", global_batch_size=4, seed=0, shuffle=False,
                                     **train.task_data_kwargs(config, task))))
  assert np.all(batch["s2_x"][:, 5] == 0) and np.all(batch["s2_gaps"] > 0)   # a frame-filled hidden frame
  centre = batch["s2_target"][:, 5, 7, 7]
  assert batch["s2_target_mask"][:, 5, 7, 7].all() and np.all(centre > 0)    # ... that the loss still scores
  train.train_and_evaluate(config, tmp_path / "s2")
  hidden = summary.stage_scores(tmp_path / "s2", "validation", hide_centre=True)
  visible = summary.stage_scores(tmp_path / "s2", "validation")
  assert hidden["count"] == visible["count"] > 0
  assert np.isfinite(hidden["val/center"]) and hidden["val/center"] != visible["val/center"]
  rows = summary.write_summary({"s2_ae": tmp_path / "s2"}, tmp_path / "summary", splits=("validation",))
  assert [r["centre_frame"] for r in rows] == ["visible", "hidden"]
  assert rows[1]["centre_mae"] == pytest.approx(hidden["val/center"])


def test_predictor_values_by_hand():
  from earthrep.training import summary
  t, h, c = 11, 15, 2
  target = np.zeros((1, t, h, h, c), np.float32)
  mask = np.ones(target.shape, bool)
  target[0, 5] = 1.0                      # the centre frame is 1 everywhere ...
  target[0, 5, 6:9, 6:9] = 3.0            # ... 3 on the 3x3 around the centre ...
  target[0, 5, 7, 7] = 100.0              # ... and the centre itself never counts
  mask[0, 5, 6, 6, 1] = False             # one neighbour invalid in band 1
  target[0, 5, 6, 6, 1] = 1000.0
  mask[0, 4, 7, 7] = False                # frame 4 of the centre pixel invalid: before = frame 3
  target[0, 3, 7, 7] = 10.0               # day 30
  target[0, 6, 7, 7] = 20.0               # day 60; the centre frame is day 50
  days = np.array([[0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]])
  out = summary.predictor_values(target, mask, days, band_means=np.array([0.5, 0.25]))
  np.testing.assert_allclose(out["band means"], [[0.5, 0.25]])
  np.testing.assert_allclose(out["ring-1 mean"], [[3.0, 3.0]])
  n0, n1 = 224, 223                       # valid pixels of the frame but the centre, per band
  np.testing.assert_allclose(out["frame mean"], [[(216 + 3 * 8) / n0, (216 + 3 * 7) / n1]], rtol=1e-6)
  np.testing.assert_allclose(out["linear in time"], [[10 + 20 / 30 * 10] * 2], rtol=1e-6)
  mask[0, :5, 7, 7] = False               # nothing valid before: the first valid frame after
  np.testing.assert_allclose(summary.predictor_values(target, mask, days, np.zeros(2))["linear in time"], [[20, 20]])


def test_validation_metric_falls(tiny_shards, tmp_path):
  config = _test_config("s1", tiny_shards("s1"), total_steps=30, eval_every_steps=30)
  config.optimizer.lr = 3e-3
  out = train.train_and_evaluate(config, tmp_path / "s1")
  first, last = out["history"][0]["val_metric"], out["history"][-1]["val_metric"]
  assert last < 0.7 * first, (first, last)


def test_resume_is_a_no_op_when_finished(tiny_shards, tmp_path):
  config = _test_config("s2", tiny_shards("s2"), total_steps=4, eval_every_steps=2)
  first = train.train_and_evaluate(config, tmp_path / "w")
  again = train.train_and_evaluate(config, tmp_path / "w")
  assert again["step"] == 4 and again["history"] == json.loads(json.dumps(first["history"]))   # from history.json
  for a, b in zip(_leaves(first["params"]), _leaves(again["params"])):
    np.testing.assert_array_equal(a, b)


def _leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _train_cmd(data_dir, workdir, total_steps):
  return [sys.executable, "-m", "earthrep.train", "--config", "experiments/s2_ae.py:test",
          "--workdir", str(workdir), f"--config.data_dir={data_dir}", f"--config.total_steps={total_steps}",
          "--config.eval_every_steps=5", "--config.checkpoint_every_steps=1", "--config.log_every_steps=1",
          "--config.optimizer.ema_decay=0.9"]   # the moving average is part of the state that must resume


def test_sigkill_and_resume_reaches_bitwise_same_params(tiny_shards, tmp_path):
  data_dir, total = tiny_shards("s2"), 14
  run_module("earthrep.train", *_train_cmd(data_dir, tmp_path / "straight", total)[3:])
  # Kill the second run hard in the middle of training (while checkpoints are being written).
  proc = subprocess.Popen(_train_cmd(data_dir, tmp_path / "killed", total), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  killed_at = None
  for line in proc.stdout:
    if "step 7/" in line:
      proc.send_signal(signal.SIGKILL)
      killed_at = 7
      break
  proc.wait(timeout=120)
  assert killed_at and proc.returncode == -signal.SIGKILL
  step_before, _ = _latest_params(tmp_path / "killed")
  assert step_before < total
  run_module("earthrep.train", *_train_cmd(data_dir, tmp_path / "killed", total)[3:])
  s1, p1 = _latest_params(tmp_path / "straight")
  s2, p2 = _latest_params(tmp_path / "killed")
  assert s1 == s2 == total
  for a, b in zip(_leaves(p1), _leaves(p2)):
    np.testing.assert_array_equal(a, b)
  # the best checkpoints hold the moving average (validated instead of the params), also bitwise the same
  b1, b2 = (checkpoint.load_params(tmp_path / w) for w in ("straight", "killed"))
  for a, b in zip(_leaves(b1), _leaves(b2)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(b1), _leaves(p1)))


def test_same_loss_on_one_and_two_devices(tiny_shards):
  script = textwrap.dedent(f"""
      import jax, jax.numpy as jnp, numpy as np
      from earthrep import data, parallel
      from earthrep.training import configs, tasks
      config = configs.stage1_config("s2", "test")
      config.data_dir = {str(tiny_shards("s2"))!r}
      task = tasks.make_task(config)
      batch = next(iter(data.make_loader(config.data_dir, "train", global_batch_size=8, seed=0)))
      key = jax.random.key(0)
      params0 = jax.jit(task.init)(key, task.example_batch(8))
      grad_fn = jax.jit(jax.value_and_grad(task.loss, has_aux=True))
      out = {{}}
      for n in (1, 2):
        mesh = parallel.make_mesh(n)
        global_batch = parallel.host_batch_to_global(batch, mesh)
        assert len(global_batch["s2_x"].sharding.device_set) == n
        (loss, _), grads = grad_fn(parallel.replicate(params0, mesh), global_batch, key)
        out[n] = (float(loss), [np.asarray(g) for g in jax.tree.leaves(grads)])
      print("devices", jax.device_count())
      print("loss", out[1][0], out[2][0])
      np.testing.assert_allclose(out[1][0], out[2][0], rtol=1e-6)
      for a, b in zip(out[1][1], out[2][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(a).max())
      print("ok")
  """)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "devices 2" in proc.stdout and proc.stdout.strip().endswith("ok")


def test_non_finite_loss_raises_with_step(tiny_shards, tmp_path, monkeypatch):
  real_make_loader = train.data_lib.make_loader

  class Poisoned:
    """Delegates to the real iterator and puts an inf into the inputs of the 3rd batch."""

    def __init__(self, it):
      self.it, self.n = it, 0

    def __iter__(self):
      return self

    def __next__(self):
      batch = dict(next(self.it))
      self.n += 1
      if self.n == 3:
        batch["s2_x"] = np.array(batch["s2_x"])
        batch["s2_x"][0, 5, 7, 7, 0] = np.inf
      return batch

    def get_state(self):
      return self.it.get_state()

    def set_state(self, state):
      self.it.set_state(state)

  class Loader:
    def __init__(self, *a, **k):
      self.loader = real_make_loader(*a, **k)

    def __iter__(self):
      return Poisoned(iter(self.loader))

  monkeypatch.setattr(train.data_lib, "make_loader", Loader)
  config = _test_config("s2", tiny_shards("s2"), total_steps=6, eval_every_steps=6, eval_at_start=False)
  with pytest.raises(train.NonFiniteError, match="step 3"):
    train.train_and_evaluate(config, tmp_path / "nan")
