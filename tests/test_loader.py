"""earthrep.data: batch contents, determinism, global shuffle, exact resume (iterator state and Orbax),
per-host sharding, centre hiding, exact evaluation batches, and clear errors for broken shard dirs."""
from __future__ import annotations

import json
import shutil

import grain.python as grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from data_prep import build_shards as bs
from data_prep import demo_world
from earthrep import data, schema
from earthrep.data import preprocess
from earthrep.io import cube as cube_lib

LAND_COVERS = ("CRO", "DBF", "ENF", "GRA", "MF")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("loader_world")
  for seed, land_cover in enumerate(LAND_COVERS):
    cube = demo_world.make_site_cube(seed, size=48, days=300, land_cover=land_cover)
    cube_lib.write_zarr(cube, root / "cubes" / f"site{seed}")
  return root


@pytest.fixture(scope="module")
def fused_dir(world):
  out = world / "fused"
  bs.build_shards(world / "cubes", out, "fused", records_per_shard=8, split_fractions=(0.6, 0.2, 0.2))
  return out


def key_of(cube_index, y0, x0, days):
  return int(cube_index), int(y0), int(x0), tuple(int(d) for d in days)


def batch_keys(batch, sensor="s2"):
  return [key_of(*v) for v in zip(batch["cube_index"], batch["y0"], batch["x0"], batch[f"{sensor}_days"])]


def raw_records(out, split, sensor="s2"):
  """key -> (file index, position, decoded record), straight from the files."""
  shards = data.open_shards(out, split)
  found = {}
  for i, path in enumerate(shards.paths):
    reader = ArrayRecordReader(str(path))
    for j, r in enumerate(reader.read_all()):
      rec = shards.spec.decode(r)
      found[key_of(rec["cube_index"], rec["y0"], rec["x0"], rec[f"{sensor}_days"])] = (i, j, rec)
    reader.close()
  return found


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_fused_batch_contents(fused_dir):
  raw = raw_records(fused_dir, "train")
  batch = next(iter(data.make_loader(fused_dir, "train", global_batch_size=4, seed=0)))
  expected = {"delta_days", "cube_index", "y0", "x0"} | {
      f"{s}_{k}" for s in ("s2", "s1") for k in ("x", "mask", "target", "target_mask", "hidden", "gaps", "days")}
  assert set(batch) == expected
  for s, c in (("s2", 10), ("s1", 2)):
    assert batch[f"{s}_x"].shape == (4, 11, 15, 15, c) and batch[f"{s}_x"].dtype == np.float32
    assert batch[f"{s}_mask"].dtype == np.bool_ and batch[f"{s}_gaps"].dtype == np.int32
    assert batch[f"{s}_gaps"].shape == (4, 10) and batch[f"{s}_days"].shape == (4, 11)
    stacked = np.stack([raw[k][2][s] for k in batch_keys(batch)])
    x, mask = preprocess.fill_patches(stacked)
    np.testing.assert_array_equal(batch[f"{s}_x"], x)
    np.testing.assert_array_equal(batch[f"{s}_mask"], mask)
    np.testing.assert_array_equal(batch[f"{s}_target"], x)
    np.testing.assert_array_equal(batch[f"{s}_target_mask"], mask)
    np.testing.assert_array_equal(batch[f"{s}_gaps"], np.diff(batch[f"{s}_days"], axis=1))
    assert not batch[f"{s}_hidden"].any() and np.isfinite(batch[f"{s}_x"]).all()
  assert batch["delta_days"].shape == (4, 1) and batch["delta_days"].dtype == np.int32


def test_s1_batch_keys(world):
  out = world / "s1"
  bs.build_shards(world / "cubes", out, "s1", split_fractions=(0.6, 0.2, 0.2))
  batch = next(iter(data.make_loader(out, "train", global_batch_size=2, seed=0)))
  assert {k for k in batch if k.startswith("s")} == {
      f"s1_{k}" for k in ("x", "mask", "target", "target_mask", "hidden", "gaps", "days")}
  assert "delta_days" not in batch and batch["s1_x"].shape == (2, 11, 15, 15, 2)
  with pytest.raises(ValueError, match="hide_sensor"):
    data.make_loader(out, "train", global_batch_size=2, seed=0, hide_centre_prob=0.5, hide_sensor="s2")


def test_determinism_and_seed(fused_dir):
  def first(seed):
    return take(iter(data.make_loader(fused_dir, "train", global_batch_size=4, seed=seed)), 4)
  a, b, c = first(1), first(1), first(2)
  assert_batches_equal(a, b)
  assert sum(map(batch_keys, a), []) != sum(map(batch_keys, c), [])


def test_one_epoch_is_a_global_shuffle(fused_dir):
  raw = raw_records(fused_dir, "train")
  loader = data.make_loader(fused_dir, "train", global_batch_size=4, seed=3, num_epochs=1,
                            drop_remainder=False)
  keys = sum(map(batch_keys, loader), [])
  assert sorted(keys) == sorted(raw) and len(keys) == len(raw) > 30
  files = [raw[k][0] for k in keys]
  assert len(set(files)) > 3
  assert len(set(files[:8])) >= 3 and files != sorted(files)   # not file by file


@pytest.mark.parametrize("worker_count", [0, 1])
def test_resume_from_iterator_state(fused_dir, worker_count):
  if worker_count:
    from absl import flags
    if not flags.FLAGS.is_parsed():
      with pytest.raises(ValueError, match="parsed absl flags"):   # the library leaves flags to the program
        data.make_loader(fused_dir, "train", global_batch_size=4, seed=5, worker_count=worker_count)
      flags.FLAGS.mark_as_parsed()   # what a notebook or test does (absl.app.run parses them)
  kwargs = dict(global_batch_size=4, seed=5, worker_count=worker_count, hide_centre_prob=0.5)
  k, n = (9, 6) if worker_count == 0 else (2, 2)   # 15 batches cross an epoch (~50 records)
  it = iter(data.make_loader(fused_dir, "train", **kwargs))
  take(it, k)
  state = it.get_state()
  expected = take(it, n)
  fresh = iter(data.make_loader(fused_dir, "train", **kwargs))
  fresh.set_state(state)
  assert_batches_equal(take(fresh, n), expected)


def test_resume_through_orbax(fused_dir, tmp_path):
  kwargs = dict(global_batch_size=4, seed=11)
  it = iter(data.make_loader(fused_dir, "train", **kwargs))
  take(it, 3)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(3, args=ocp.args.Composite(data=grain.PyGrainCheckpointSave(it)))
    manager.wait_until_finished()
  expected = take(it, 4)
  fresh = iter(data.make_loader(fused_dir, "train", **kwargs))
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.restore(3, args=ocp.args.Composite(data=grain.PyGrainCheckpointRestore(fresh)))
  assert_batches_equal(take(fresh, 4), expected)


def test_per_host_sharding_gives_disjoint_halves(fused_dir):
  n = data.open_shards(fused_dir, "train").count
  hosts = []
  for index in (0, 1):
    loader = data.make_loader(fused_dir, "train", global_batch_size=4, seed=0, num_epochs=1,
                              drop_remainder=False, shard_index=index, shard_count=2)
    batches = list(loader)
    assert all(len(b["y0"]) == 2 for b in batches[:-1])
    hosts.append(sum(map(batch_keys, batches), []))
  assert not set(hosts[0]) & set(hosts[1])
  assert len(hosts[0]) == len(hosts[1]) == n // 2
  with pytest.raises(ValueError, match="multiple"):
    data.make_loader(fused_dir, "train", global_batch_size=3, seed=0, shard_index=0, shard_count=2)


def test_hide_centre(fused_dir):
  raw = raw_records(fused_dir, "train")
  batch = next(iter(data.make_loader(fused_dir, "train", global_batch_size=8, seed=0, hide_centre_prob=1.0)))
  c = schema.CENTRE_FRAME
  stacked = np.stack([raw[k][2]["s2"] for k in batch_keys(batch)])
  assert batch["s2_hidden"].all() and not batch["s1_hidden"].any()
  assert not batch["s2_mask"][:, c].any()
  target, target_mask = preprocess.fill_patches(stacked)
  np.testing.assert_array_equal(batch["s2_target"], target)
  np.testing.assert_array_equal(batch["s2_target_mask"], target_mask)
  assert target_mask[:, c].any()                        # something was really hidden
  others = np.delete(stacked, c, axis=1)                # the fill mean excludes the hidden frame
  mean_bc = np.nan_to_num(np.nanmean(others.reshape(len(others), -1, 10).astype(np.float64), axis=1))
  np.testing.assert_allclose(batch["s2_x"][:, c], np.broadcast_to(mean_bc[:, None, None], (8, 15, 15, 10)),
                             rtol=1e-6)
  np.testing.assert_array_equal(batch["s2_x"][:, :c][batch["s2_mask"][:, :c]], stacked[:, :c][target_mask[:, :c]])
  np.testing.assert_array_equal(batch["s1_x"], batch["s1_target"])
  # Probability 0.5: a mix, the same for the same seed.
  def hidden(seed):
    it = iter(data.make_loader(fused_dir, "train", global_batch_size=8, seed=seed, hide_centre_prob=0.5))
    return np.concatenate([b["s2_hidden"] for b in take(it, 5)])
  h = hidden(4)
  assert 0.2 < h.mean() < 0.8 and (h == hidden(4)).all()


def test_frame_fill_hides_the_centre_as_zeros(fused_dir):
  raw = raw_records(fused_dir, "train")
  batch = next(iter(data.make_loader(fused_dir, "train", global_batch_size=8, seed=0, hide_centre_prob=1.0,
                                     fill="frame")))
  stacked = np.stack([raw[k][2]["s2"] for k in batch_keys(batch)])
  c = schema.CENTRE_FRAME
  np.testing.assert_array_equal(batch["s2_x"][:, c], 0.0)
  target, _ = preprocess.fill_patches(stacked, "frame")
  np.testing.assert_array_equal(batch["s2_target"], target)
  np.testing.assert_array_equal(np.delete(batch["s2_x"], c, axis=1), np.delete(target, c, axis=1))
  evaluated = next(iter(data.eval_batches(fused_dir, "validation", 8, fill="frame")))
  stacked = np.stack([r[2]["s2"] for r in sorted(raw_records(fused_dir, "validation").values(),
                                                 key=lambda r: r[:2])[:8]])
  np.testing.assert_array_equal(evaluated["s2_x"][evaluated["weight"] == 1],
                                preprocess.fill_patches(stacked, "frame")[0][:int(evaluated["weight"].sum())])
  with pytest.raises(ValueError, match="fill 'mean'"):
    data.make_loader(fused_dir, "train", global_batch_size=8, seed=0, fill="mean")


def test_eval_batches_cover_every_record_once(fused_dir):
  raw = raw_records(fused_dir, "validation")
  in_file_order = sorted(raw, key=lambda k: raw[k][:2])
  batches = list(data.eval_batches(fused_dir, "validation", 8))
  assert all(len(b["weight"]) == 8 for b in batches)
  real = [k for b in batches for k, w in zip(batch_keys(b), b["weight"]) if w == 1]
  assert real == in_file_order
  assert sum(float(b["weight"].sum()) for b in batches) == len(raw) and len(batches) == -(-len(raw) // 8)
  assert not any(b["s2_hidden"].any() for b in batches)
  hidden = [b["s2_hidden"] for b in data.eval_batches(fused_dir, "validation", 8, hide_centre_prob=0.5)]
  again = [b["s2_hidden"] for b in data.eval_batches(fused_dir, "validation", 8, hide_centre_prob=0.5)]
  assert all((a == b).all() for a, b in zip(hidden, again)) and np.concatenate(hidden).any()


# ---------------------------------------------------------------------------------------------------
# Broken shard directories.
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def broken(fused_dir, tmp_path):
  copy = tmp_path / "shards"
  shutil.copytree(fused_dir, copy)
  return copy


def _first_file(d):
  meta = json.loads((d / schema.SHARD_METADATA).read_text())
  return d / meta["splits"]["train"]["files"][0]["path"]


def test_missing_metadata(broken):
  (broken / schema.SHARD_METADATA).unlink()
  with pytest.raises(data.ShardError, match="metadata.json"):
    data.make_loader(broken, "train", global_batch_size=4, seed=0)


def test_missing_shard_file(broken):
  victim = _first_file(broken)
  victim.unlink()
  with pytest.raises(data.ShardError, match=f"{victim.name}.*missing"):
    data.open_shards(broken, "train")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_shard_file(broken, damage):
  victim = _first_file(broken)
  content = victim.read_bytes()
  victim.write_bytes({"truncate": content[:len(content) // 2], "garbage": b"\x17" * len(content),
                      "empty": b""}[damage])
  with pytest.raises(data.ShardError, match=victim.name):
    data.open_shards(broken, "train")


def test_extra_shard_file(broken):
  extra = broken / "train" / "fused-train.array_record-00000-of-00099"
  shutil.copy(_first_file(broken), extra)
  with pytest.raises(data.ShardError, match=extra.name):
    data.open_shards(broken, "train")


def test_layout_mismatch(broken):
  path = broken / schema.SHARD_METADATA
  meta = json.loads(path.read_text())
  meta["layout"][0]["dtype"] = "<f2"
  path.write_text(json.dumps(meta))
  with pytest.raises(data.ShardError, match=r"metadata.json.*'s2'.*dtype"):
    data.open_shards(broken, "train")
  # Records of another layout under a matching metadata: the record size gives it away.
  meta["modality"], meta["layout"] = "s2", schema.RecordSpec("s2").layout()
  path.write_text(json.dumps(meta))
  with pytest.raises(data.ShardError, match=f"{_first_file(broken).name}.*bytes"):
    data.open_shards(broken, "train")
