"""Stage 2 on top of stage-1 checkpoints: restore, freezing, mismatch errors, and a toy third sensor."""
from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from earthrep import schema, sensors
from earthrep.data import loader
from earthrep.data import shards as shards_lib
from earthrep.inference.engine import load_fusion
from earthrep.io import checkpoint
from earthrep.models import blocks
from earthrep.training import configs, head_refit, tasks
from earthrep.training import trainer as train


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_tree_equal(a, b):
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)


def _stage1(sensor, data_dir, workdir, steps=2):
  config = configs.stage1_config(sensor, "test")
  config.update(data_dir=str(data_dir), total_steps=steps, eval_every_steps=steps, eval_at_start=False)
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def stage1_workdirs(tiny_shards, tmp_path_factory):
  root = tmp_path_factory.mktemp("stage1")
  return {s: _stage1(s, tiny_shards(s), root / f"{s}_ae") for s in ("s1", "s2")}


def _fusion_config(workdirs, data_dir, **overrides):
  config = configs.fusion_config("test", tuple(workdirs))
  for s, w in workdirs.items():
    setattr(config, f"{s}_workdir", str(w))
  config.update(data_dir=str(data_dir), total_steps=3, eval_every_steps=3, eval_at_start=False, **overrides)
  return config


def test_frozen_fusion_keeps_stage1_params_bitwise_and_holds_no_state_for_them(
    stage1_workdirs, tiny_shards, tmp_path):
  config = _fusion_config(stage1_workdirs, tiny_shards("fused"))
  out = train.train_and_evaluate(config, tmp_path / "fusion")
  params = out["params"]
  for s, w in stage1_workdirs.items():
    _assert_tree_equal(params[f"ae_{s}"], checkpoint.load_params(w))
  # The optimiser holds Adam moments for the trained params only, and they moved (the fusion
  # layers received gradients and were updated).
  trained = sum(x.size for x, t in zip(jax.tree.leaves(params), jax.tree.leaves(out["trainable"])) if t)
  frozen = sum(x.size for x in jax.tree.leaves(params)) - trained
  moments = [np.asarray(x) for x in jax.tree.leaves(out["opt_state"]) if getattr(x, "ndim", 0) > 0]
  assert frozen > trained > 0 and sum(m.size for m in moments) == 2 * trained
  assert all(np.abs(m).max() > 0 for m in moments)
  cfg = json.loads((tmp_path / "fusion" / "model_config.json").read_text())
  assert cfg["kind"] == "fusion" and set(cfg["model"]["autoencoders"]) == {"s1", "s2"}


@pytest.mark.parametrize("anchor", [False, True])
def test_fusion_with_centre_heads_trains_them_and_selects_on_them(stage1_workdirs, tiny_shards, tmp_path, anchor):
  config = _fusion_config(stage1_workdirs, tiny_shards("fused"))
  config.model.centre_head = True
  config.model.centre_anchor = anchor   # anchored: the loader's masks reach the heads
  out = train.train_and_evaluate(config, tmp_path / "fusion")
  for s in stage1_workdirs:
    assert all(jax.tree.leaves(out["trainable"][f"centre_{s}"]))
    assert np.abs(np.asarray(out["params"][f"centre_{s}"]["out"]["kernel"])).max() > 0   # moved from zero
  cfg = json.loads((tmp_path / "fusion" / "model_config.json").read_text())
  assert cfg["model"]["centre_head"] is True and cfg["model"]["centre_anchor"] is anchor
  metrics = out["history"][-1]
  assert {"val/s1/head", "val/s2/head"} <= set(metrics)
  np.testing.assert_allclose(metrics["val_metric"], (metrics["val/s1/head"] + metrics["val/s2/head"]) / 2,
                             rtol=1e-5)


def test_unfrozen_fusion_fine_tunes_the_autoencoders(stage1_workdirs, tiny_shards, tmp_path):
  config = _fusion_config(stage1_workdirs, tiny_shards("fused"), freeze_encoders=False)
  out = train.train_and_evaluate(config, tmp_path / "fusion")
  assert out["trainable"] is None
  changed = [not np.array_equal(a, b) for a, b in
             zip(_leaves(out["params"]["ae_s2"]), _leaves(checkpoint.load_params(stage1_workdirs["s2"])))]
  assert any(changed)


def test_stage1_checkpoint_that_does_not_fit_lists_the_keys(stage1_workdirs, tiny_shards, tmp_path):
  wrong = tmp_path / "s2_wrong"
  shutil.copytree(stage1_workdirs["s2"], wrong)
  cfg = json.loads((wrong / "model_config.json").read_text())
  cfg["model"]["token_dim"] = 4   # the stored params were trained with token_dim 8
  (wrong / "model_config.json").write_text(json.dumps(cfg))
  config = _fusion_config({"s1": stage1_workdirs["s1"], "s2": wrong}, tiny_shards("fused"))
  with pytest.raises(checkpoint.CheckpointError, match=r"(?s)params do not fit.*encoder_linear"):
    train.train_and_evaluate(config, tmp_path / "fusion")


def test_stage1_checkpoints_with_different_input_fills_are_refused(stage1_workdirs, tiny_shards, tmp_path):
  other = tmp_path / "s1_window_fill"
  shutil.copytree(stage1_workdirs["s1"], other)
  cfg = json.loads((other / "model_config.json").read_text())
  assert cfg["model"]["fill"] == "frame"       # the default of the stage-1 configs
  cfg["model"]["fill"] = "window"
  (other / "model_config.json").write_text(json.dumps(cfg))
  config = _fusion_config({"s1": other, "s2": stage1_workdirs["s2"]}, tiny_shards("fused"))
  with pytest.raises(ValueError, match=r"different input fills.*s1: 'window'.*s2: 'frame'"):
    train.train_and_evaluate(config, tmp_path / "fusion")


def test_missing_stage1_workdir_is_named(tiny_shards, tmp_path):
  config = configs.fusion_config("test")
  config.update(data_dir=str(tiny_shards("fused")), s1_workdir="")
  with pytest.raises(ValueError, match="--config.s1_workdir"):
    train.train_and_evaluate(config, tmp_path / "fusion")


# ------------------------------------------------------------------ a new sensor, nothing else retrained
TOY = "toy_ndvi"


def _toy_records(fused_dir, split):
  """Records of the fused shards plus a 1-band toy sensor (NDVI of the S2 patch)."""
  from array_record.python.array_record_module import ArrayRecordReader
  shard_set = shards_lib.open_shards(fused_dir, split)
  for path in shard_set.paths:
    reader = ArrayRecordReader(str(path))
    for raw in reader.read_all():
      r = shard_set.spec.decode(raw)
      nir, red = r["s2"][..., 6], r["s2"][..., 2]
      ndvi = ((nir - red) / (nir + red + 1e-6) + 1.0) / 2.0      # NaN where S2 is invalid
      yield dict(r, **{TOY: ndvi[..., None].astype(np.float32), f"{TOY}_days": r["s2_days"]})
    reader.close()


def test_a_toy_third_sensor_trains_stage1_then_fusion_leaves_s1_s2_frozen(
    stage1_workdirs, tiny_shards, tmp_path, request):
  from data_prep import build_shards
  request.addfinalizer(lambda: sensors.unregister(TOY))   # registered for this test only
  sensors.register(sensors.Sensor(
      name=TOY, bands=("NDVI",), scaling="(NDVI + 1) / 2 of the S2 B08/B04 reflectances",
      stage1=dict(channels=1, bottleneck=1, reduced_tokens=3),
      fusion_loss=dict(lambda_mae=1.0, lambda_ssim=0.0, lambda_sam=0.0, center_mae=1.0)))
  fused = tiny_shards("fused")
  splits = ("train", "validation")
  toy_spec = schema.RecordSpec(TOY, schema.sensor_fields(TOY, 1))
  build_shards.write_records(tmp_path / "toy_shards", toy_spec,
                             {s: _toy_records(fused, s) for s in splits})
  fused_spec = schema.RecordSpec("fused")
  three_spec = schema.RecordSpec("s1_s2_toy", fused_spec.fields + schema.sensor_fields(TOY, 1))
  build_shards.write_records(tmp_path / "three_shards", three_spec,
                             {s: _toy_records(fused, s) for s in splits})
  assert shards_lib.open_shards(tmp_path / "three_shards", "train").sensors == ("s2", "s1", TOY)

  toy_workdir = _stage1(TOY, tmp_path / "toy_shards", tmp_path / "toy_ae")
  workdirs = {**stage1_workdirs, TOY: toy_workdir}
  out = train.train_and_evaluate(_fusion_config(workdirs, tmp_path / "three_shards"), tmp_path / "fusion3")
  for s, w in workdirs.items():
    _assert_tree_equal(out["params"][f"ae_{s}"], checkpoint.load_params(w))
  assert out["params"]["type_embed"]["embedding"].shape[0] == 3
  assert np.isfinite(out["history"][-1]["val_metric"])


def test_head_refit_fits_the_centre_heads_alone_and_keeps_every_other_param(stage1_workdirs, tiny_shards,
                                                                             tmp_path):
  data = tiny_shards("fused")
  config = _fusion_config(stage1_workdirs, data)
  config.model.update(centre_head=True, centre_anchor=True)
  train.train_and_evaluate(config, tmp_path / "fusion")
  model, params = load_fusion(tmp_path / "fusion")

  # What the heads read reproduces the model's own centre answers: base + head(head_in).
  parts = head_refit.collect(model, params, data, "validation", batch_size=8, hide_centre_prob=1.0)
  batch = next(loader.eval_batches(data, "validation", 8, hide_centre_prob=1.0, fill=model.fill))
  inputs, offsets, valid = tasks.fusion_batch(model, batch)
  out = model.apply({"params": params}, inputs, offsets, train=False, valid=valid)
  n = int(batch["weight"].sum())
  for s in model.sensors:
    mlp = blocks.Mlp(model.d_model, parts[s]["base"].shape[1], zero_out=True)
    answer = parts[s]["base"][:n] + np.asarray(mlp.apply({"params": params[f"centre_{s}"]},
                                                         parts[s]["head_in"][:n]))
    np.testing.assert_allclose(answer, np.asarray(out["centre"][s])[:n], atol=1e-5)

  # Fitting a head on its own windows lowers their MAE (validation = training data here).
  s2 = parts["s2"]
  mlp = blocks.Mlp(model.d_model, s2["base"].shape[1], zero_out=True)
  _, history, best = head_refit.fit_head(mlp, params["centre_s2"], s2, s2, epochs=40, batch_size=8,
                                         lr=3e-3, patience=40)
  assert best > 0 and history[best] < 0.9 * history[0]

  record = head_refit.refit(tmp_path / "fusion", data, tmp_path / "refit", epochs=5, batch_size=8)
  model2, params2 = load_fusion(tmp_path / "refit")
  assert model2 == model
  for key in params:
    if not key.startswith("centre_"):
      _assert_tree_equal(params2[key], params[key])
  for s in model.sensors:
    r = record["sensors"][s]
    assert r["val_mae_after"] == pytest.approx(min(r["val_mae_by_epoch"]), abs=1e-6)
    assert r["val_mae_after"] <= r["val_mae_before"]
  stored = json.loads((tmp_path / "refit" / "model_config.json").read_text())
  assert stored["head_refit"]["records"] == record["records"] and stored["model"] == json.loads(
      (tmp_path / "fusion" / "model_config.json").read_text())["model"]

  with pytest.raises(head_refit.EarthrepError, match="refit"):   # an existing output is not replaced
    head_refit.refit(tmp_path / "fusion", data, tmp_path / "refit", epochs=1)


def test_refit_heads_refuses_a_model_without_centre_heads(stage1_workdirs, tiny_shards, tmp_path, capsys):
  from earthrep import refit_heads
  data = tiny_shards("fused")
  train.train_and_evaluate(_fusion_config(stage1_workdirs, data), tmp_path / "fusion")
  args = ["--model", str(tmp_path / "fusion"), "--data-dir", str(data), "--out", str(tmp_path / "refit")]
  assert refit_heads.main(args) == 2
  err = capsys.readouterr().err
  assert "refit_heads: error:" in err and "model_config.json: model.centre_head is False" in err
  assert not (tmp_path / "refit").exists()
  assert refit_heads.main(args[:4] + ["--out", str(data)]) == 2   # an output over its input is refused
  assert "overlaps the input --data-dir" in capsys.readouterr().err
  config = _fusion_config(stage1_workdirs, data)
  config.model.centre_head = True
  train.train_and_evaluate(config, tmp_path / "heads")
  assert refit_heads.main(["--model", str(tmp_path / "heads"), "--data-dir", str(tiny_shards("s2")),
                           "--out", str(tmp_path / "refit")]) == 2   # shards without the model's S1
  assert "split 'train' has no s1 data" in capsys.readouterr().err
