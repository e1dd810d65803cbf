"""data_prep.build_shards: records are exactly the reference's patches of the prepared cubes, filters
hold, splits are by cube, builds are reproducible, and bad cubes fail clearly. Hand-built cubes."""
from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from data_prep import build_shards as bs
from earthrep import schema
from earthrep.data import preprocess
from earthrep.io import cube as cube_lib
from earthrep.data import shards as shards_lib

SIZE, N_CUBES = 48, 5


def make_cube(seed: int, size: int = SIZE, s2_days: int = 300, gap: tuple[int, int] = (150, 240)
              ) -> schema.SiteCube:
  """Random but rule-exercising cube: S2 every 5 days at 10:30 UTC with a no-data gap (some windows
  span >= 200 days), per-date cloud cover from 0 to 100 %, S1 every 3 days at 05:10 UTC from 30 days
  before to 30 days after the S2 period (the +-7 d range cut matters), 5 % S1 no-data."""
  rng = np.random.default_rng(seed)
  offsets = np.arange(0, s2_days, 5)
  offsets = offsets[(offsets < gap[0]) | (offsets >= gap[1])]
  s2_time = np.datetime64("2020-03-02T10:30:00", "ns") + offsets.astype("timedelta64[D]")
  s1_time = (np.datetime64("2020-01-31T05:10:00", "ns")
             + np.arange(0, s2_days + 60, 3).astype("timedelta64[D]"))
  t2, t1 = len(s2_time), len(s1_time)
  cover = rng.choice([0.0, 0.1, 0.5, 0.985, 1.0], t2)
  cloud = np.where(rng.random((t2, size, size)) < cover[:, None, None],
                   rng.integers(1, 4, (t2, size, size)), 0).astype(np.uint8)
  cloud[0] = 0   # validate_cube wants some clear data
  refl = rng.uniform(0.0, 0.6, (t2, 10, size, size)).astype(np.float32)
  s1 = rng.uniform(0.005, 0.4, (t1, 2, size, size)).astype(np.float32)
  s1[rng.random(s1.shape) < 0.05] = np.nan
  return schema.SiteCube(schema.SiteMeta(f"site{seed}", 11.0, 50.0), "EPSG:32632",
                         (10.0, 0.0, 600000.0, 0.0, -10.0, 5500000.0), refl, cloud, s2_time, s1, s1_time,
                         np.array(["ascending", "descending"] * (t1 // 2) + ["ascending"] * (t1 % 2)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("hand_world")
  for i in range(N_CUBES):
    cube_lib.write_zarr(make_cube(i), root / "cubes" / f"cube{i:02d}")
  return root / "cubes"


@pytest.fixture(scope="module")
def built(world, tmp_path_factory):
  """modality -> shard dir, built once (small files so that splits span several)."""
  cache = {}

  def get(modality: str, **kwargs):
    key = (modality, tuple(sorted(kwargs.items())))
    if key not in cache:
      out = tmp_path_factory.mktemp(f"shards_{modality}")
      bs.build_shards(world, out, modality, records_per_shard=16, **kwargs)
      cache[key] = out
    return cache[key]
  return get


def read_split(out, split):
  meta = json.loads((out / schema.SHARD_METADATA).read_text())
  spec = schema.RecordSpec(meta["modality"])
  records = []
  for f in meta["splits"][split]["files"]:
    reader = ArrayRecordReader(str(out / f["path"]))
    records += [spec.decode(r) for r in reader.read_all()]
    reader.close()
  return meta, records


def all_records(out):
  return {s: read_split(out, s)[1] for s in shards_lib.SPLITS}


def test_split_cubes_is_the_reference_scheme():
  split = bs.split_cubes(500, 42)
  random.seed(42)
  train = random.sample(range(500), 375)
  rest = [i for i in range(500) if i not in train]
  random.shuffle(rest)
  assert split == {"train": sorted(train), "validation": sorted(rest[:83]), "test": sorted(rest[83:])}
  for n in range(3, 12):
    s = bs.split_cubes(n, 7)
    assert all(s[k] for k in s), (n, s)
    assert sorted(s["train"] + s["validation"] + s["test"]) == list(range(n))
  assert [len(v) for v in bs.split_cubes(2, 0).values()] == [1, 1, 0]
  assert bs.split_cubes(1, 0) == {"train": [0], "validation": [], "test": []}
  assert bs.split_cubes(4, 0, [1, 0, 0]) == {"train": [0, 1, 2, 3], "validation": [], "test": []}


def _window_of(frames, n_t, sampling):
  window = min(sampling.time_window, n_t)
  return [t0 for t0 in range(0, n_t - window + 1, sampling.time_stride)
          if t0 <= frames[0] and frames[-1] < t0 + window]


def _s1_range(cube):
  d2, d1 = schema.datetime_to_days(cube.s2_time), schema.datetime_to_days(cube.s1_time)
  return np.flatnonzero((d1 >= d2[0] - 7) & (d1 <= d2[-1] + 7))


def test_fused_records_are_the_patches_of_the_prepared_cube(built):
  out = built("fused")
  meta = json.loads((out / schema.SHARD_METADATA).read_text())
  sampling = bs.SAMPLING["fused"]
  prepared = {}
  for i, path in enumerate(meta["provenance"]["cube_paths"]):
    cube = cube_lib.read_cube(path)
    s2 = preprocess.prepare_s2(cube.s2_reflectance, cube.cloud_mask)
    keep = preprocess.clear_dates(s2, 0.03)
    rng_idx = _s1_range(cube)
    prepared[i] = (s2[keep], cube.s2_time[keep], preprocess.prepare_s1(cube.s1_gamma0[rng_idx]),
                   cube.s1_time[rng_idx])
  n_checked = 0
  for split, records in all_records(out).items():
    assert records or not meta["splits"][split]["cube_indices"]
    for rec in records:
      ci = int(rec["cube_index"])
      assert ci in meta["splits"][split]["cube_indices"]
      s2, s2_time, s1, s1_time = prepared[ci]
      days = schema.datetime_to_days(s2_time)
      frames = np.array([np.flatnonzero(days == d)[0] for d in rec["s2_days"]])
      assert (np.diff(frames) > 0).all() and _window_of(frames, len(s2), sampling)
      y0, x0 = int(rec["y0"]), int(rec["x0"])
      assert y0 % 9 == 0 and x0 % 9 == 0 and y0 + 15 <= SIZE and x0 + 15 <= SIZE
      np.testing.assert_array_equal(rec["s2"], s2[frames, y0:y0 + 15, x0:x0 + 15])
      # S1: nearest acquisition within the +-7 d range, preprocessed on that range.
      s1_ns = s1_time.astype(np.int64)
      nearest = [int(np.argmin(np.abs(s1_ns - t))) for t in s2_time[frames].astype(np.int64)]
      np.testing.assert_array_equal(rec["s1"], s1[nearest, y0:y0 + 15, x0:x0 + 15])
      np.testing.assert_array_equal(rec["s1_days"], schema.datetime_to_days(s1_time[nearest]))
      c = schema.CENTRE_FRAME
      assert int(rec["delta_days"]) == abs(int(rec["s1_days"][c]) - int(rec["s2_days"][c]))
      # Filters.
      assert (~np.isnan(rec["s2"][c, 7, 7, :10])).any()
      assert rec["s2_days"][-1] - rec["s2_days"][0] < 200
      n_checked += 1
  assert n_checked == sum(meta["counts"].values()) > 20
  n_xy = len(range(0, SIZE - 15 + 1, 9)) ** 2
  for row in meta["cubes"]:   # every candidate is kept or counted as dropped
    n_t = len(prepared[row["index"]][0])
    assert row["candidates"] == len(range(0, n_t - min(20, n_t) + 1, 17)) * n_xy
    assert row["candidates"] == row["num_records"] + row["dropped_centre"] + row["dropped_span"]
  assert sum(r["dropped_span"] for r in meta["cubes"]) > 0 and sum(r["dropped_centre"] for r in meta["cubes"]) > 0


def test_s1_records_and_filters(built):
  out = built("s1")
  meta = json.loads((out / schema.SHARD_METADATA).read_text())
  prepared = {}
  for i, path in enumerate(meta["provenance"]["cube_paths"]):
    cube = cube_lib.read_cube(path)
    idx = _s1_range(cube)
    prepared[i] = preprocess.prepare_s1(cube.s1_gamma0[idx]), schema.datetime_to_days(cube.s1_time[idx])
  records = [r for rs in all_records(out).values() for r in rs]
  assert len(records) == sum(meta["counts"].values()) > 5
  for rec in records:
    s1, days = prepared[int(rec["cube_index"])]
    frames = np.array([np.flatnonzero(days == d)[0] for d in rec["s1_days"]])
    assert _window_of(frames, len(s1), bs.SAMPLING["s1"])
    y0, x0 = int(rec["y0"]), int(rec["x0"])
    assert y0 % 15 == 0 and x0 % 15 == 0
    np.testing.assert_array_equal(rec["s1"], s1[frames, y0:y0 + 15, x0:x0 + 15])
    assert (~np.isnan(rec["s1"][5, 7, 7])).any() and rec["s1_days"][-1] - rec["s1_days"][0] < 200


def test_s2_modality_is_the_s2_half_of_fused(built):
  fused, s2 = all_records(built("fused")), all_records(built("s2"))
  for split in shards_lib.SPLITS:
    assert len(fused[split]) == len(s2[split])
    for a, b in zip(fused[split], s2[split]):
      for k in ("s2", "s2_days", "cube_index", "y0", "x0"):
        np.testing.assert_array_equal(a[k], b[k])


def test_splits_by_cube_and_metadata(built):
  out = built("fused")
  meta = json.loads((out / schema.SHARD_METADATA).read_text())
  ids = [set(meta["splits"][s]["cube_ids"]) for s in shards_lib.SPLITS]
  assert all(ids) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
  assert set.union(*ids) == {f"cube{i:02d}" for i in range(N_CUBES)}
  for s, records in all_records(out).items():
    assert {int(r["cube_index"]) for r in records} <= set(meta["splits"][s]["cube_indices"])
    files = meta["splits"][s]["files"]
    assert [f["path"] for f in files] == [f"{s}/fused-{s}.array_record-{i:05d}-of-{len(files):05d}"
                                          for i in range(len(files))]
    assert sum(f["num_records"] for f in files) == meta["counts"][s] == len(records)
  assert meta["layout"] == schema.RecordSpec("fused").layout()
  assert meta["seed"] == 42 and meta["delta_days_rule"] == "calendar"
  assert meta["provenance"]["site_ids"] == [f"site{i}" for i in range(N_CUBES)]
  assert not list(out.rglob("*.partial"))


def test_build_is_deterministic_given_seed(built, world, tmp_path):
  bs.build_shards(world, tmp_path / "again", "fused", records_per_shard=16)
  first, again = all_records(built("fused")), all_records(tmp_path / "again")
  other = all_records(built("fused", seed=7))
  for split in shards_lib.SPLITS:
    assert len(first[split]) == len(again[split])
    for a, b in zip(first[split], again[split]):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])
  key = lambda recs: [(int(r["cube_index"]), tuple(r["s2_days"])) for r in recs]
  assert key(sum(first.values(), [])) != key(sum(other.values(), []))


def test_denser_strides_cut_more_patches_and_are_recorded(built, world, tmp_path):
  dense = bs.build_shards(world, tmp_path / "dense", "s2", records_per_shard=64, spatial_stride=5,
                          time_stride=10)
  reference = json.loads((built("s2") / schema.SHARD_METADATA).read_text())
  assert reference["sampling"]["spatial_stride"] == 9 and reference["sampling"]["time_stride"] == 17
  assert dense["sampling"]["spatial_stride"] == 5 and dense["sampling"]["time_stride"] == 10
  assert sum(dense["counts"].values()) > 2 * sum(reference["counts"].values())
  with pytest.raises(ValueError, match="spatial-stride 0"):
    bs.sampling_for("s2", spatial_stride=0)


def test_gap_windows_open_a_gap_around_the_kept_centre_date():
  """`gap_windows`: a chosen candidate keeps its centre date; its other frames become the 5 last dates
  before day(c) - G/2 and the 5 first after day(c) + G/2 (G drawn per candidate after the choice); one
  without 5 such dates on a side, and every one at share 0, keeps its frames."""
  rng = np.random.default_rng(0)
  days = np.cumsum(rng.integers(2, 15, 80))
  frames, _, _ = bs.candidates(80, 15, 15, bs.SAMPLING["fused"], rng)
  out = bs.gap_windows(frames, days, 0.6, 90, np.random.default_rng(1))
  draws = np.random.default_rng(1)
  pick = draws.random(len(frames)) < 0.6
  half = draws.random(len(frames)) * 45
  np.testing.assert_array_equal(out[:, 5], frames[:, 5])
  changed = (out != frames).any(axis=1)
  assert not changed[~pick].any() and changed.sum() > 0.3 * len(frames)
  for f, h in zip(out[changed], half[changed]):
    c = days[f[5]]
    assert (np.diff(f[:5]) == 1).all() and (np.diff(f[6:]) == 1).all()
    assert days[f[4]] < c - h <= days[f[4] + 1] and days[f[6] - 1] <= c + h < days[f[6]]
  kept = pick & ~changed   # chosen, but too close to the series' ends
  assert all(np.searchsorted(days, days[f[5]] - h, "left") < 5 or
             np.searchsorted(days, days[f[5]] + h, "right") + 5 > len(days)
             for f, h in zip(frames[kept], half[kept]))
  np.testing.assert_array_equal(bs.gap_windows(frames, days, 0.0, 90, np.random.default_rng(1)), frames)
  with pytest.raises(ValueError, match="gap-share 1.5"):
    bs.sampling_for("fused", gap_share=1.5)
  with pytest.raises(ValueError, match="not s1"):
    bs.sampling_for("s1", gap_share=0.5)


def test_gap_share_is_recorded_and_widens_the_centre_gap(built, world, tmp_path):
  gapped = bs.build_shards(world, tmp_path / "gap", "fused", records_per_shard=64, gap_share=1.0,
                           max_gap_days=60)
  reference = json.loads((built("fused") / schema.SHARD_METADATA).read_text())
  assert reference["sampling"]["gap_share"] == 0.0 and gapped["sampling"]["gap_share"] == 1.0
  assert gapped["sampling"]["max_gap_days"] == 60 and "gap_windows" in gapped["sampling"]["rng"]
  def centre_gap(recs):
    days = np.stack([r["s2_days"] for r in sum(recs.values(), [])]).astype(np.int64)
    return np.mean(days[:, 6] - days[:, 4])
  assert centre_gap(all_records(tmp_path / "gap")) > centre_gap(all_records(built("fused"))) + 5


def test_reference_training_delta_rule(built):
  calendar, training = all_records(built("fused")), all_records(built("fused", delta_rule="reference_training"))
  # S1 at 05:10, S2 at 10:30 UTC: |floor((S1 - S2) / day)| is the calendar difference + 1 when S1 is on
  # the S2 day or earlier, - 1 when S1 is on a later day (contradiction 8).
  c, n = schema.CENTRE_FRAME, 0
  for split in calendar:
    for a, b in zip(calendar[split], training[split]):
      expected = 1 if a["s1_days"][c] <= a["s2_days"][c] else -1
      assert int(b["delta_days"]) - int(a["delta_days"]) == expected
      n += 1
  assert n > 20


def test_cube_without_valid_window_is_skipped(tmp_path, caplog):
  good, short = make_cube(1), make_cube(2, s2_days=40)   # 8 S2 dates < 11 frames
  cube_lib.write_zarr(good, tmp_path / "cubes" / "a_good")
  cube_lib.write_zarr(short, tmp_path / "cubes" / "b_short")
  with caplog.at_level(logging.WARNING):
    meta = bs.build_shards(tmp_path / "cubes", tmp_path / "out", "s2", split_fractions=[1, 0, 0])
  assert "b_short" in caplog.text and "no valid window" in caplog.text
  assert [r["num_records"] > 0 for r in meta["cubes"]] == [True, False]
  with pytest.raises(bs.BuildError, match="no cube"):
    bs.build_shards(tmp_path / "cubes" / "b_short", tmp_path / "out2", "s2")


def test_unreadable_cube_is_named(tmp_path):
  cube_lib.write_zarr(make_cube(1), tmp_path / "cubes" / "a")
  cube_lib.write_zarr(make_cube(2), tmp_path / "cubes" / "b")
  victim = next(p for p in (tmp_path / "cubes" / "b" / schema.ZARR_NAME / schema.VAR_S2).rglob("*")
                if p.is_file() and p.name != "zarr.json")
  victim.unlink()
  with pytest.raises(bs.BuildError, match=r"cubes/b"):
    bs.build_shards(tmp_path / "cubes", tmp_path / "out", "fused")
  assert not (tmp_path / "out" / schema.SHARD_METADATA).exists()
  assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_cli(world, tmp_path):
  from conftest import run_module
  (tmp_path / "cubes").mkdir()
  for i in range(3):   # three cubes keep the subprocess quick
    (tmp_path / "cubes" / f"c{i}").symlink_to(world / f"cube{i:02d}", target_is_directory=True)
  proc = run_module("data_prep.build_shards", "--cubes", str(tmp_path / "cubes"), "--out", str(tmp_path / "o"),
                    "--modality", "s1", "--seed", "3", "--split-fractions", "0.6,0.2,0.2")
  assert "s1 records train" in proc.stdout
  meta = json.loads((tmp_path / "o" / schema.SHARD_METADATA).read_text())
  assert meta["seed"] == 3 and meta["split_scheme"]["fractions"] == [0.6, 0.2, 0.2]
  assert shards_lib.open_shards(tmp_path / "o", "train").count == meta["counts"]["train"]
