"""Shard directories as `build_shards` writes them: split files, staged builds and the output checks.

`SplitWriter` writes one split's records into ArrayRecord files of `records_per_shard` (group_size 1 for
random access), under temporary names renamed on close. `write_split_records` feeds (split, record)
pairs into a staged build folder and turns a write failure (a full disk) into a BuildError naming it.
`check_output` checks an output folder before a build: it must not overlap the inputs, and an existing one
is replaced only with `overwrite` and only if `is_shard_dir` (a finished build, or the split folders of
one). `write_records` writes ready-made records (sensors beyond S1/S2) the same way, with its metadata.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, Iterator

from array_record.python.array_record_module import ArrayRecordWriter

from earthrep import schema
from earthrep.data.shards import SPLITS, is_shard_file, shard_filename
from earthrep.errors import EarthrepError
from earthrep.io import atomic, provenance

DEFAULT_RECORDS_PER_SHARD = 1024
WRITER_OPTIONS = "group_size:1"


class BuildError(EarthrepError):
  """A bad argument, cube or output of a shard build; the message names it."""


class SplitWriter:
  """Writes one split's records into files of `records_per_shard`, renamed to final names on close."""

  def __init__(self, out_dir: Path, modality: str, split: str, records_per_shard: int):
    self.dir = out_dir / split
    self.dir.mkdir(parents=True, exist_ok=True)
    self.modality, self.split, self.per_shard = modality, split, records_per_shard
    self.temp_paths: list[Path] = []
    self.counts: list[int] = []
    self._writer: ArrayRecordWriter | None = None

  def write(self, record: bytes) -> None:
    if self._writer is None or self.counts[-1] >= self.per_shard:
      self._close_current()
      path = self.dir / f".{self.modality}-{self.split}.{len(self.temp_paths):05d}.partial"
      self._writer = ArrayRecordWriter(str(path), WRITER_OPTIONS)
      if not self._writer.ok():
        raise BuildError(f"{path}: cannot open for writing")
      self.temp_paths.append(path)
      self.counts.append(0)
    self._writer.write(record)
    self.counts[-1] += 1

  def _close_current(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def close(self, out_dir: Path) -> list[dict[str, Any]]:
    self._close_current()
    files = []
    for i, (temp, n) in enumerate(zip(self.temp_paths, self.counts)):
      final = self.dir / shard_filename(self.modality, self.split, i, len(self.temp_paths))
      os.replace(temp, final)
      files.append({"path": str(final.relative_to(out_dir)), "num_records": n})
    return files

  def abort(self) -> None:
    self._close_current()
    for temp in self.temp_paths:
      temp.unlink(missing_ok=True)


def is_shard_dir(path: Path) -> bool:
  """A finished build (metadata.json) or the files of one: split folders of shard files and partials."""
  path = Path(path)
  if (path / schema.SHARD_METADATA).is_file():
    return True
  for entry in path.iterdir():
    if entry.name.startswith("."):
      continue
    if entry.name not in SPLITS or not entry.is_dir():
      return False
    if any(not (is_shard_file(p) or p.name.startswith(".")) for p in entry.iterdir()):
      return False
  return True


def check_output(out: Path, inputs: dict[str, Any], overwrite: bool) -> bool:
  """Raises OutputError unless `out` may be built (see the module docstring); True if it will be replaced."""
  atomic.check_apart(out, inputs)
  return atomic.check_target(out, overwrite=overwrite, kind="shard directory", is_kind=is_shard_dir)


def write_split_records(stage: Path, modality: str, records_per_shard: int,
                        records: Iterator[tuple[str, bytes]]) -> dict[str, list[dict[str, Any]]]:
  """Writes (split, encoded record) pairs into `stage`; returns the files of each split."""
  writers = {s: SplitWriter(stage, modality, s, records_per_shard) for s in SPLITS}
  try:
    for split, record in records:
      writers[split].write(record)
    return {s: w.close(stage) for s, w in writers.items()}
  except OSError as e:
    raise BuildError(f"{stage}: writing shards failed ({e.strerror or e})") from e
  finally:
    for w in writers.values():
      w.abort()


def write_records(out: str | Path, spec: schema.RecordSpec, records: dict[str, Iterator[dict[str, Any]]],
                  *, records_per_shard: int = DEFAULT_RECORDS_PER_SHARD, extra: dict[str, Any] | None = None,
                  overwrite: bool = False) -> dict[str, Any]:
  """Writes ready-made records per split into a shard directory (data of sensors beyond S1/S2).

  The layout of `spec` is stored in the metadata and is what readers decode with, so a new sensor
  needs no change here or in `earthrep.data`. Written as `build_shards` writes (staged, `overwrite`).
  """
  if records_per_shard < 1:
    raise BuildError(f"records_per_shard {records_per_shard}: expected >= 1")
  out = Path(out)
  check_output(out, {}, overwrite)
  unknown = sorted(set(records) - set(SPLITS))
  if unknown:
    raise BuildError(f"splits {unknown}: expected some of {SPLITS}")
  pairs = ((split, spec.encode(record)) for split, split_records in records.items() for record in split_records)
  with atomic.staged_dir(out) as stage:
    files = write_split_records(stage, spec.modality, records_per_shard, pairs)
    splits = {s: {"num_records": int(sum(f["num_records"] for f in files[s])), "files": files[s]}
              for s in SPLITS}
    meta = {"format_version": schema.SHARD_FORMAT_VERSION, "modality": spec.modality,
            "layout": spec.layout(), "record_nbytes": spec.nbytes, "splits": splits,
            "counts": {s: splits[s]["num_records"] for s in SPLITS},
            "provenance": {"code_version": provenance.code_version(),
                           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
            **(extra or {})}
    atomic.write_text(stage / schema.SHARD_METADATA, schema.dumps_metadata(meta))
  return meta
