"""Grain input pipeline over the shards of `data_prep.build_shards`: training loader and exact eval batches.

Per record: decode (`RecordSpec`), optionally mark the centre frame of `hide_sensor` as hidden
(a `RandomMapTransform`: its draw comes from the sampler's per-position Philox stream, so it is fixed by
`seed` and the position in the sampled stream and changes from epoch to epoch); per batch: fill NaNs
(`earthrep.data.preprocess.fill_patches` with `fill`: "window" = the reference's per-sample, per-channel mean, "frame" =
the per-frame mean the models' `fill` field selects by default), compute masks and time gaps. A batch is a
dict of numpy arrays, for each sensor present (`s2`, `s1`; fused data has both):
  `{s}_x` float32 (b, 11, 15, 15, c)   filled input; a hidden centre frame is NaN before filling, so it
                                       carries the mean of the other frames ("window") or zeros
                                       ("frame") and is False in `{s}_mask`
  `{s}_mask` bool (b, 11, 15, 15, c)   valid input values
  `{s}_target`, `{s}_target_mask`      the same without hiding (always present; equal to x/mask when
                                       nothing is hidden), what the loss compares against
  `{s}_hidden` bool (b,)               whether this sample's centre frame was hidden
  `{s}_gaps` int32 (b, 10), `{s}_days` int32 (b, 11)   day gaps and days since 1970-01-01
  `delta_days` int32 (b, 1)            fused only: |S1 centre - S2 centre| in days
  `cube_index`, `y0`, `x0` int32 (b,)  provenance
`eval_batches` adds `weight` float32 (b,): 1 for real records, 0 for padding.

Resuming: `iter(make_loader(...))` is a `grain.python.PyGrainDatasetIterator`; `get_state()` after k
batches, `set_state(state)` on the iterator of a freshly built loader with the same arguments continues
with exactly the same batches (also with worker processes). Orbax: save with
`ocp.args.Composite(data=grain.python.PyGrainCheckpointSave(it))`, restore with
`PyGrainCheckpointRestore(it)`. With worker_count > 0 the caller's main module must be import-safe
(`if __name__ == "__main__":`), since workers are spawned processes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import grain.python as grain
import numpy as np
from absl import flags

from earthrep import schema
from earthrep.data import preprocess
from earthrep.data.shards import ShardSet, open_shards

# Records are ~100 KiB: a few reader threads keep up with local disks; Grain's default (16 threads,
# 500 records) spends more time polling its buffer than reading. Pass `read_options` for remote storage.
DEFAULT_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=64)


class DecodeRecord(grain.MapTransform):
  """bytes -> dict of the record's fields (NaN = invalid); `RecordSpec.decode` with the offsets cached."""

  def __init__(self, spec: schema.RecordSpec):
    self.spec = spec
    self._fields, offset = [], 0
    for f in self.spec.fields:
      dtype = np.dtype(f.dtype)
      self._fields.append((f.name, dtype, f.nbytes // dtype.itemsize, offset, f.shape))
      offset += f.nbytes

  def map(self, element: bytes) -> dict[str, np.ndarray]:
    if len(element) != self.spec.nbytes:
      return self.spec.decode(element)   # raises, naming the sizes
    return {name: np.frombuffer(element, dtype, count, offset).reshape(shape)
            for name, dtype, count, offset, shape in self._fields}


class HideCentre(grain.RandomMapTransform):
  """With probability `prob` flags the record's `sensor` centre frame as hidden from the input."""

  def __init__(self, prob: float, sensor: str):
    self.prob, self.sensor = float(prob), sensor

  def random_map(self, element: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    return element | {f"{self.sensor}_hidden": np.bool_(rng.random() < self.prob)}


def finalize_batch(batch: dict[str, np.ndarray], sensors: tuple[str, ...], fill: str = "window"
                   ) -> dict[str, np.ndarray]:
  """Stacked raw records -> model batch (see the module docstring for the keys)."""
  out: dict[str, np.ndarray] = {}
  for s in sensors:
    raw = batch[s]
    target, target_mask = preprocess.fill_patches(raw, fill)
    hidden = np.asarray(batch.get(f"{s}_hidden", np.zeros(len(raw), bool)), bool)
    if hidden.any():
      masked = np.array(raw)
      masked[hidden, schema.CENTRE_FRAME] = np.nan
      x, mask = preprocess.fill_patches(masked, fill)
    else:
      x, mask = target, target_mask
    days = np.asarray(batch[f"{s}_days"], np.int32)
    out |= {f"{s}_x": x.astype(np.float32, copy=False), f"{s}_mask": mask,
            f"{s}_target": target.astype(np.float32, copy=False), f"{s}_target_mask": target_mask,
            f"{s}_hidden": hidden, f"{s}_gaps": preprocess.time_gaps(days), f"{s}_days": days}
  if "delta_days" in batch:
    out["delta_days"] = np.asarray(batch["delta_days"], np.int32).reshape(-1, 1)
  for k in ("cube_index", "y0", "x0"):   # provenance, where the layout has it
    if k in batch:
      out[k] = np.asarray(batch[k], np.int32)
  return out


class FinalizeBatch(grain.MapTransform):

  def __init__(self, sensors: tuple[str, ...], fill: str):
    self.sensors, self.fill = sensors, fill

  def map(self, element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return finalize_batch(element, self.sensors, self.fill)


def _check_hide(shards: ShardSet, hide_centre_prob: float, hide_sensor: str) -> None:
  if not 0.0 <= hide_centre_prob <= 1.0:
    raise ValueError(f"hide_centre_prob {hide_centre_prob}: expected a probability in [0, 1]")
  if hide_centre_prob > 0 and hide_sensor not in shards.sensors:
    raise ValueError(f"hide_sensor {hide_sensor!r}: not in {shards.modality!r} data "
                     f"(sensors {shards.sensors})")


def make_loader(data_dir: str | Path, split: str, *, global_batch_size: int, seed: int,
                shuffle: bool = True, num_epochs: int | None = None, worker_count: int = 0,
                worker_buffer_size: int = 2, drop_remainder: bool = True, shard_index: int | None = None,
                shard_count: int | None = None, hide_centre_prob: float = 0.0, hide_sensor: str = "s2",
                read_options: grain.ReadOptions | None = None, fill: str = "window") -> grain.DataLoader:
  """Grain loader of `split`: seeded global shuffle, repeats forever when `num_epochs` is None.

  Each of `shard_count` hosts (default: JAX processes) reads a disjoint 1/shard_count of the records
  and yields batches of `global_batch_size // shard_count`.
  """
  shards = open_shards(data_dir, split)
  _check_hide(shards, hide_centre_prob, hide_sensor)
  schema.check_fill(fill, "fill")
  if shard_index is None or shard_count is None:
    import jax
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if global_batch_size <= 0 or global_batch_size % shard_count:
    raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of the "
                     f"{shard_count} data shards (hosts)")
  per_host = global_batch_size // shard_count
  if drop_remainder and num_epochs is not None and num_epochs * (shards.count // shard_count) < per_host:
    raise ValueError(f"{data_dir} split {split!r}: {num_epochs} epoch(s) of {shards.count} records give no "
                     f"full batch of {per_host} on each of {shard_count} hosts")
  if worker_count > 0 and not flags.FLAGS.is_parsed():
    # Grain's worker start-up reads its absl flags. Parsing them is the program's business (absl.app.run
    # does it; a notebook or test calls `absl.flags.FLAGS.mark_as_parsed()`), not this library's.
    raise ValueError(f"worker_count={worker_count}: Grain worker processes need parsed absl flags; run under "
                     "absl.app.run or call absl.flags.FLAGS.mark_as_parsed() before building the loader")
  shard_options = grain.ShardOptions(shard_index=shard_index, shard_count=shard_count, drop_remainder=True)
  source = grain.ArrayRecordDataSource([str(p) for p in shards.paths])
  sampler = grain.IndexSampler(num_records=len(source), shard_options=shard_options, shuffle=shuffle,
                               num_epochs=num_epochs, seed=seed)
  operations: list[Any] = [DecodeRecord(shards.spec)]
  if hide_centre_prob > 0:
    operations.append(HideCentre(hide_centre_prob, hide_sensor))
  operations += [grain.Batch(batch_size=per_host, drop_remainder=drop_remainder),
                 FinalizeBatch(shards.sensors, fill)]
  return grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                          worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                          shard_options=shard_options, read_options=read_options or DEFAULT_READ_OPTIONS)


def eval_batches(data_dir: str | Path, split: str, batch_size: int, *, hide_centre_prob: float = 0.0,
                 hide_sensor: str = "s2", seed: int = 0, fill: str = "window"
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Every record of `split` exactly once, in file order, in batches of `batch_size` (the last one
  padded with copies of its last record, `weight` 0). Hiding, if asked, is drawn from the stream
  SeedSequence([seed, record index]) (independent streams for every seed and record), so it is the same
  on every call and every host."""
  shards = open_shards(data_dir, split)
  _check_hide(shards, hide_centre_prob, hide_sensor)
  schema.check_fill(fill, "fill")
  if batch_size <= 0:
    raise ValueError(f"batch_size {batch_size} must be positive")
  source = grain.ArrayRecordDataSource([str(p) for p in shards.paths])
  spec, sensors, n = shards.spec, shards.sensors, len(source)
  for start in range(0, n, batch_size):
    keys = list(range(start, min(start + batch_size, n)))
    records = [spec.decode(r, where=f"{data_dir} {split} record {k}")
               for k, r in zip(keys, source.__getitems__(keys))]
    n_real = len(records)
    records += [records[-1]] * (batch_size - n_real)
    batch = {k: np.stack([r[k] for r in records]) for k in records[0]}
    if hide_centre_prob > 0:
      draws = [np.random.default_rng(np.random.SeedSequence([seed, k])).random() for k in keys]
      batch[f"{hide_sensor}_hidden"] = np.array(draws + [1.0] * (batch_size - n_real)) < hide_centre_prob
    out = finalize_batch(batch, sensors, fill)
    out["weight"] = (np.arange(batch_size) < n_real).astype(np.float32)
    yield out
