"""Shard directories: file naming (shared with `data_prep.build_shards`) and validated opening.

A shard directory holds `metadata.json` (written last by the builder, so its presence marks a
finished build) and one folder per split with ArrayRecord files named
`<split>/<modality>-<split>.array_record-<i:05d>-of-<n:05d>`. `open_shards` checks everything the
loader relies on before any training starts: the metadata's format version and record layout against
`earthrep.schema.RecordSpec`, that every listed file exists, opens, holds the listed number of records
of the right size, and that no unlisted shard file lies beside them. Every error names the file.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from array_record.python.array_record_module import ArrayRecordReader

from earthrep import schema
from earthrep.errors import EarthrepError

SPLITS = ("train", "validation", "test")
_SHARD_RE = re.compile(r".*\.array_record-\d{5}-of-\d{5}$")


class ShardError(EarthrepError):
  """A shard directory is missing, incomplete, corrupt, or was written with another layout."""


def shard_filename(modality: str, split: str, index: int, count: int) -> str:
  return f"{modality}-{split}.array_record-{index:05d}-of-{count:05d}"


def is_shard_file(path: Path) -> bool:
  return bool(_SHARD_RE.match(path.name))


@dataclasses.dataclass(frozen=True)
class ShardSet:
  """One split of a validated shard directory."""
  data_dir: Path
  split: str
  metadata: dict[str, Any]
  spec: schema.RecordSpec
  paths: tuple[Path, ...]
  file_counts: tuple[int, ...]

  @property
  def modality(self) -> str:
    return self.spec.modality

  @property
  def count(self) -> int:
    return int(sum(self.file_counts))

  @property
  def sensors(self) -> tuple[str, ...]:
    return self.spec.sensors


def read_metadata(data_dir: str | Path) -> dict[str, Any]:
  path = Path(data_dir) / schema.SHARD_METADATA
  if not path.is_file():
    raise ShardError(f"{path}: shard metadata not found (not a shard directory, or the build did not "
                     f"finish; run `python -m data_prep.build_shards`)")
  try:
    meta = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ShardError(f"{path}: unreadable shard metadata: {e}") from e
  version = meta.get("format_version")
  if version != schema.SHARD_FORMAT_VERSION:
    raise ShardError(f"{path}: format_version {version!r}, this code reads "
                     f"{schema.SHARD_FORMAT_VERSION}; rebuild the shards")
  return meta


def _check_layout(meta: dict[str, Any], spec: schema.RecordSpec, where: Path) -> None:
  stored = meta.get("layout")
  if not isinstance(stored, list):
    raise ShardError(f"{where}: no record layout in the metadata")
  expected = spec.layout()
  stored_by_name = {f.get("name"): f for f in stored}
  for field in expected:
    got = stored_by_name.get(field["name"])
    if got is None:
      raise ShardError(f"{where}: layout mismatch: field {field['name']!r} missing from the shards "
                       f"(modality {spec.modality!r}); rebuild them")
    for key in ("dtype", "shape"):
      if got.get(key) != field[key]:
        raise ShardError(f"{where}: layout mismatch in field {field['name']!r}: {key} "
                         f"{got.get(key)!r} in the shards, {field[key]!r} expected by this code")
  extra = [f.get("name") for f in stored if f.get("name") not in {f["name"] for f in expected}]
  if extra or [f.get("name") for f in stored] != [f["name"] for f in expected]:
    raise ShardError(f"{where}: layout mismatch: fields {[f.get('name') for f in stored]} in the "
                     f"shards, {[f['name'] for f in expected]} expected (extra: {extra})")


def _check_file(path: Path, expected_records: int, spec: schema.RecordSpec) -> None:
  if not path.is_file():
    raise ShardError(f"{path}: shard file listed in the metadata is missing")
  reader = ArrayRecordReader(str(path))
  try:
    if not reader.ok():
      raise ShardError(f"{path}: not a readable ArrayRecord file (truncated or corrupt)")
    n = reader.num_records()
    if n != expected_records:
      raise ShardError(f"{path}: {n} records, metadata lists {expected_records} (truncated or stale)")
    for i in sorted({0, n - 1}):  # the first and last record exercise the chunk index end to end
      try:
        record = reader.read([i])[0]
      except Exception as e:  # pylint: disable=broad-except
        raise ShardError(f"{path}: record {i} unreadable (corrupt file): {e}") from e
      if len(record) != spec.nbytes:
        raise ShardError(f"{path}: record {i} has {len(record)} bytes, layout of modality "
                         f"{spec.modality!r} needs {spec.nbytes} (written with another layout?)")
  finally:
    try:
      reader.close()
    except RuntimeError:   # a reader of a corrupt file reports its error again on close
      pass


def open_shards(data_dir: str | Path, split: str) -> ShardSet:
  """Validates `data_dir` for `split` and returns its files, counts and record spec."""
  data_dir = Path(data_dir)
  meta = read_metadata(data_dir)
  meta_path = data_dir / schema.SHARD_METADATA
  modality = meta.get("modality")
  if modality in schema.MODALITIES:
    spec = schema.RecordSpec(modality)
    _check_layout(meta, spec, meta_path)
  else:  # data of other sensors: the stored layout is the contract
    try:
      spec = schema.RecordSpec.from_layout(str(modality), meta["layout"])
    except (KeyError, TypeError, ValueError) as e:
      raise ShardError(f"{meta_path}: modality {modality!r} needs a valid 'layout' ({e})") from e
    if not spec.sensors:
      raise ShardError(f"{meta_path}: modality {modality!r}: the layout has no sensor field "
                       f"(a patch field `<name>` with a `<name>_days` companion)")
  splits = meta.get("splits", {})
  if split not in splits:
    raise ShardError(f"{meta_path}: no split {split!r}; available: {sorted(splits)}")
  files = splits[split].get("files", [])
  if not files:
    raise ShardError(f"{meta_path}: split {split!r} has no records")
  paths = tuple(data_dir / f["path"] for f in files)
  counts = tuple(int(f["num_records"]) for f in files)
  split_dir = data_dir / split
  if split_dir.is_dir():
    listed = {p.resolve() for p in paths}
    extra = sorted(p for p in split_dir.iterdir() if is_shard_file(p) and p.resolve() not in listed)
    if extra:
      raise ShardError(f"{extra[0]}: shard file not listed in {meta_path} (left over from another "
                       f"build?); remove it or rebuild")
  for path, n in zip(paths, counts):
    _check_file(path, n, spec)
  return ShardSet(data_dir, split, meta, spec, paths, counts)
