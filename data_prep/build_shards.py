"""Cuts training patches out of site cubes and writes them as ArrayRecord shards plus metadata.json.

  python -m data_prep.build_shards --cubes demo/cubes --out demo/shards/fused --modality fused

Sampling is the reference's `extract_sentinel_patches` in training mode (ARCHITECTURE.md section f),
with a seeded RNG per cube (`SeedSequence([seed, cube_index])`) where the reference used unseeded
`np.random`, so a build is reproducible and independent of how many cubes precede a cube's split:
* fused / s2: S2 dates kept by the training cloud filter (valid count over (h, w, c) >=
  int(0.03*h*w*c)); windows of 20 consecutive kept dates, stride 17 (a cube with 11..19 dates gives one
  window of all of them, as in the reference's `time_win = T`; fewer than 11 gives none); 15x15 crops,
  stride 9; 11 of the 20 dates drawn uniformly without replacement and sorted, one draw per candidate
  in the reference's (t, y, x) order, drawn before filtering. S1 frame = the S1 acquisition nearest to
  each S2 date (repeats allowed) among those in [first S2 date - 7 d, last S2 date + 7 d] (calendar
  days, all S2 dates before the cloud filter), preprocessed (rolling mean, dB, scaling) on that range.
  The s2 modality uses exactly the fused sampling (same RNG stream), so its records are the S2 half of
  the fused ones: the reference's S2-only branch crashes (contradiction 6) and its intended default
  arguments are the fused ones. Fused records whose matched S1 dates span >= 200 days are kept, as in
  the reference (contradiction 9), and counted in the metadata.
* gap windows (earthrep's, `--gap-share`; the reference has none): a share of the fused / s2 candidates
  becomes the any-day query with its answer kept: the centre date, the 5 last dates before a gap of
  G ~ U[0, --max-gap-days] days around it and the 5 first after (`gap_windows`), so that a model learns
  to answer for a day whose nearest observations are weeks away, as in `benchmarks.anyday_reconstruction`.
  Their draws follow all of the reference sampling's, so --gap-share 0 cuts exactly the reference's records.
* s1: the native S1 acquisitions in that same range; windows of 40 consecutive acquisitions, stride 40;
  15x15 crops, stride 15; 11 of 40, sorted.
Filters: centre pixel of the centre frame valid in some channel of 0..9 (S2, fused) or of either S1
channel (s1), and frame span (last - first calendar day) < 200 days (S2 dates; S1 dates for s1).

Split by cube: `random.Random(seed)`, `sample(range(n), int(f_train*n))` -> train, the rest shuffled with
the same stream, first `int(f_val/(f_val+f_test) * rest)` -> validation, the remainder -> test (the
reference with n=500, fractions 0.75/0.1667/0.0833). With n >= 3 every split with a positive fraction
gets at least one cube, taken from the largest split; n = 2 gives one train and one validation cube,
n = 1 only a train cube.

Files: `OUT/<split>/<modality>-<split>.array_record-<i:05d>-of-<n:05d>` (group_size 1 for random
access) and `OUT/metadata.json`, written last, so a directory with metadata.json is a finished build.
Arguments are checked first; the build is written into `.OUT.partial` beside OUT and takes OUT's place
only when complete, so a failed or killed build (a truncated cube, a full disk, SIGKILL) leaves an earlier
build untouched; the next build removes the leftover partial. An existing build is replaced only with
`--overwrite`, and a folder that is not a shard directory never. Cubes are read one at a time. Suspect but
usable data (a cube without any valid window, without S1 in range, or with all-NaN S1) is skipped or kept
with a warning, counted in the metadata's `warnings`. Provenance records paths as given, never resolved.
The shard files and the output checks are in `data_prep.shard_files`.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import random
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from data_prep.shard_files import (  # noqa: F401 (SplitWriter, write_records, is_shard_dir: re-exported)
    DEFAULT_RECORDS_PER_SHARD, BuildError, SplitWriter, check_output, is_shard_dir, write_records,
    write_split_records)
from earthrep import schema
from earthrep.data import preprocess, windows
from earthrep.errors import run_tool
from earthrep.io import atomic
from earthrep.io import cube as cube_lib
from earthrep.io import provenance
from earthrep.data.shards import SPLITS

log = logging.getLogger("build_shards")
PROG = "python -m data_prep.build_shards"

DEFAULT_SPLIT_FRACTIONS = (0.75, 1 / 6, 1 / 12)
S1_MARGIN_DAYS = 7
_CHUNK = 256   # candidates cut at a time (bounds memory for large cubes)


@dataclasses.dataclass(frozen=True)
class Sampling:
  time_window: int
  time_stride: int
  spatial_stride: int
  frames: int = schema.PATCH_FRAMES
  patch_px: int = schema.PATCH_PX
  max_span_days: int = schema.MAX_SPAN_DAYS
  min_valid_fraction: float = preprocess.TRAIN_MIN_VALID_FRACTION
  s1_margin_days: int = S1_MARGIN_DAYS
  gap_share: float = 0.0      # fused / s2: share of the candidates turned into gap windows (earthrep's)
  max_gap_days: int = 90


SAMPLING = {"fused": Sampling(20, 17, 9), "s2": Sampling(20, 17, 9), "s1": Sampling(40, 40, 15)}


# ---------------------------------------------------------------------------------------------
# Split by cube.
# ---------------------------------------------------------------------------------------------
def split_cubes(n: int, seed: int, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS
                ) -> dict[str, list[int]]:
  """Cube indices per split (sorted), the reference's scheme generalised (see module docstring)."""
  f = np.asarray(list(fractions) + [0.0] * (3 - len(fractions)), np.float64)
  if len(fractions) > 3 or not np.isfinite(f).all() or (f < 0).any() or f.sum() <= 0:
    raise BuildError(f"--split-fractions {','.join(f'{x:g}' for x in fractions)}: expected up to 3 "
                     "non-negative numbers (train,validation,test) with a positive sum")
  f = f / f.sum()
  n_train = int(f[0] * n + 1e-9)
  rest = n - n_train
  n_val = int(f[1] / (f[1] + f[2]) * rest + 1e-9) if f[1] + f[2] > 0 else 0
  counts = [n_train, n_val, rest - n_val]
  if n >= 3:  # few cubes: no split with a positive fraction stays empty
    for i in range(3):
      if f[i] > 0 and counts[i] == 0:
        counts[int(np.argmax(counts))] -= 1
        counts[i] = 1
  elif n == 2 and f[0] > 0 and f[1] > 0:  # a trainer needs train and validation more than test
    counts = [1, 1, 0]
  elif n == 1 and f[0] > 0:
    counts = [1, 0, 0]
  rng = random.Random(seed)
  train = rng.sample(range(n), counts[0])
  remaining = [i for i in range(n) if i not in set(train)]
  rng.shuffle(remaining)
  return {"train": sorted(train), "validation": sorted(remaining[:counts[1]]),
          "test": sorted(remaining[counts[1]:])}


# ---------------------------------------------------------------------------------------------
# Sampling one cube.
# ---------------------------------------------------------------------------------------------
def s1_in_range(cube: schema.SiteCube, margin_days: int = S1_MARGIN_DAYS) -> np.ndarray:
  """Indices of S1 acquisitions within [first S2 day - margin, last S2 day + margin] (calendar days)."""
  s2_days = schema.datetime_to_days(cube.s2_time)
  s1_days = schema.datetime_to_days(cube.s1_time)
  if s2_days.size == 0:
    return np.zeros(0, np.int64)
  return np.flatnonzero((s1_days >= s2_days[0] - margin_days) & (s1_days <= s2_days[-1] + margin_days))


def candidates(n_t: int, h: int, w: int, sampling: Sampling, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """All candidate patches in the reference's (t, y, x) order: (frame indices (N, 11), y0 (N,), x0 (N,))."""
  window = min(sampling.time_window, n_t)
  p, s = sampling.patch_px, sampling.spatial_stride
  if window < sampling.frames or h < p or w < p:
    return np.zeros((0, sampling.frames), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
  t0 = np.arange(0, n_t - window + 1, sampling.time_stride)
  t0, y0, x0 = (a.reshape(-1) for a in np.meshgrid(t0, np.arange(0, h - p + 1, s),
                                                    np.arange(0, w - p + 1, s), indexing="ij"))
  # A uniform `frames`-subset of the window per candidate: the first columns of a random permutation.
  chosen = np.sort(np.argsort(rng.random((t0.size, window)), axis=1)[:, :sampling.frames], axis=1)
  return t0[:, None] + chosen, y0, x0


def gap_windows(frames: np.ndarray, days: np.ndarray, share: float, max_gap_days: int,
                rng: np.random.Generator) -> np.ndarray:
  """Turns a `share` of the candidates into gap windows (the any-day query with its answer kept).

  A chosen candidate keeps its centre date c; a gap G ~ U[0, max_gap_days] is drawn and its frames become
  the 5 last dates of the whole series before day(c) - G/2, c, and the 5 first after day(c) + G/2, so the
  centre's nearest neighbours lie up to G/2 + the revisit away, as in `benchmarks.anyday_reconstruction`
  (where every observation within G/2 of the target is masked). A candidate without 5 such dates on either
  side keeps its frames. Draws (for every candidate, after `candidates`' own): one uniform for the choice,
  one for G."""
  frames = frames.copy()
  pick = rng.random(len(frames)) < share
  half = rng.random(len(frames)) * max_gap_days / 2
  c = frames[:, schema.CENTRE_FRAME]
  before, after, valid = windows.context_dates(days, days[c] - half, days[c] + half)
  ok = pick & valid
  frames[ok] = np.concatenate([before, c[:, None], after], axis=1)[ok]
  return frames


def cut(series_thwc: np.ndarray, frames_bt: np.ndarray, y0_b: np.ndarray, x0_b: np.ndarray,
        patch_px: int = schema.PATCH_PX) -> np.ndarray:
  """(b, t, p, p, c) patches at the given frames and top-left corners."""
  offs = np.arange(patch_px)
  yy = (y0_b[:, None] + offs)[:, None, :, None]
  xx = (x0_b[:, None] + offs)[:, None, None, :]
  return series_thwc[frames_bt[:, :, None, None], yy, xx]


def sampling_for(modality: str, spatial_stride: int | None = None, time_stride: int | None = None,
                 gap_share: float = 0.0, max_gap_days: int = 90) -> Sampling:
  """The reference sampling of `modality`, with optional denser (or sparser) strides and gap windows."""
  sampling = SAMPLING[modality]
  for name, value in (("spatial_stride", spatial_stride), ("time_stride", time_stride)):
    if value is not None and value < 1:
      raise BuildError(f"--{name.replace('_', '-')} {value}: expected a positive number of pixels / dates")
  if not 0.0 <= gap_share <= 1.0:
    raise BuildError(f"--gap-share {gap_share}: expected a share in [0, 1]")
  if gap_share > 0 and modality == "s1":
    raise BuildError("--gap-share: gap windows are cut around S2 dates (fused and s2 modalities), not s1")
  if max_gap_days < 0:
    raise BuildError(f"--max-gap-days {max_gap_days}: expected a non-negative number of days")
  return dataclasses.replace(sampling, spatial_stride=spatial_stride or sampling.spatial_stride,
                             time_stride=time_stride or sampling.time_stride, gap_share=float(gap_share),
                             max_gap_days=int(max_gap_days))


def cube_records(cube: schema.SiteCube, modality: str, cube_index: int, seed: int,
                 delta_rule: str = "calendar", stats: dict[str, int] | None = None,
                 sampling: Sampling | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Yields the records (dicts of `RecordSpec(modality)` fields, NaN = invalid) of one cube."""
  sampling = sampling or SAMPLING[modality]
  stats = {} if stats is None else stats
  rng = np.random.default_rng(np.random.SeedSequence([seed, cube_index]))
  s1_idx = s1_in_range(cube, sampling.s1_margin_days)
  if modality == "s1":
    driver = preprocess.prepare_s1(cube.s1_gamma0[s1_idx])
    driver_time = cube.s1_time[s1_idx]
    centre_channels = slice(0, len(schema.S1_BANDS))
  else:
    s2_all = preprocess.prepare_s2(cube.s2_reflectance, cube.cloud_mask)
    keep = preprocess.clear_dates(s2_all, sampling.min_valid_fraction)
    driver, driver_time = s2_all[keep], cube.s2_time[keep]
    del s2_all
    centre_channels = slice(0, len(schema.S2_BANDS))
    if modality == "fused":
      if s1_idx.size == 0:
        stats["no_s1"] = 1
        return
      s1_series = preprocess.prepare_s1(cube.s1_gamma0[s1_idx])
      s1_time = cube.s1_time[s1_idx]
      nearest = preprocess.nearest_s1_index(driver_time, s1_time)
      s1_days_all = schema.datetime_to_days(s1_time)
  driver_days = schema.datetime_to_days(driver_time)
  h, w = driver.shape[1:3]
  frames, y0, x0 = candidates(len(driver), h, w, sampling, rng)
  if sampling.gap_share > 0:
    frames = gap_windows(frames, driver_days, sampling.gap_share, sampling.max_gap_days, rng)
  stats["candidates"] = stats.get("candidates", 0) + len(frames)
  for start in range(0, len(frames), _CHUNK):
    f_b, y_b, x_b = frames[start:start + _CHUNK], y0[start:start + _CHUNK], x0[start:start + _CHUNK]
    patches = cut(driver, f_b, y_b, x_b)
    days = driver_days[f_b]
    centre_ok = preprocess.centre_valid(patches, centre_channels)
    span_ok = preprocess.span_ok(days, sampling.max_span_days)
    stats["dropped_centre"] = stats.get("dropped_centre", 0) + int((~centre_ok).sum())
    stats["dropped_span"] = stats.get("dropped_span", 0) + int((centre_ok & ~span_ok).sum())
    keep = np.flatnonzero(centre_ok & span_ok)
    if keep.size == 0:
      continue
    patches, days, f_b, y_b, x_b = patches[keep], days[keep], f_b[keep], y_b[keep], x_b[keep]
    if modality == "s1":
      fields = {"s1": patches, "s1_days": days}
    else:
      fields = {"s2": patches, "s2_days": days}
    if modality == "fused":
      s1_frames = nearest[f_b]
      s1_days = s1_days_all[s1_frames]
      c = schema.CENTRE_FRAME
      fields |= {"s1": cut(s1_series, s1_frames, y_b, x_b), "s1_days": s1_days,
                 "delta_days": preprocess.delta_days(s1_time[s1_frames[:, c]], driver_time[f_b[:, c]],
                                                     delta_rule)}
      stats["s1_span_ge_max"] = stats.get("s1_span_ge_max", 0) + int(
          (~preprocess.span_ok(s1_days, sampling.max_span_days)).sum())
    for i in range(len(keep)):
      record = {k: v[i] for k, v in fields.items()}
      record |= {"cube_index": np.int32(cube_index), "y0": np.int32(y_b[i]), "x0": np.int32(x_b[i])}
      yield record


# ---------------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------------
_code_version = provenance.code_version


def check_arguments(modality: str, seed: int, split_fractions: Sequence[float], records_per_shard: int,
                    delta_rule: str, spatial_stride: int | None, time_stride: int | None,
                    gap_share: float = 0.0, max_gap_days: int = 90) -> Sampling:
  """Raises BuildError naming the argument unless every one is valid; returns the sampling."""
  if modality not in schema.MODALITIES:
    raise BuildError(f"--modality {modality!r}: expected one of {schema.MODALITIES}")
  if delta_rule not in preprocess.DELTA_DAYS_RULES:
    raise BuildError(f"--delta-rule {delta_rule!r}: expected one of {preprocess.DELTA_DAYS_RULES}")
  if records_per_shard < 1:
    raise BuildError(f"--records-per-shard {records_per_shard}: expected >= 1")
  if seed < 0:
    raise BuildError(f"--seed {seed}: expected a non-negative integer (numpy seeds)")
  split_cubes(3, seed, split_fractions)   # raises on bad fractions
  return sampling_for(modality, spatial_stride, time_stride, gap_share, max_gap_days)


def parse_fractions(text: str | None) -> Sequence[float]:
  """`--split-fractions` text -> numbers (None: the reference's default)."""
  if text is None:
    return DEFAULT_SPLIT_FRACTIONS
  try:
    return [float(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise BuildError(f"--split-fractions {text!r}: expected up to 3 comma-separated numbers, e.g. "
                     "0.75,0.17,0.08") from None


def _scaling() -> dict[str, str]:
  return {"s2": "L2A reflectance, clipped to [0, 1]; NaN where the cloud class != clear or no data",
          "s1": (f"gamma0 linear power: centred rolling mean of {schema.S1_ROLLING_WINDOW} acquisitions "
                 f"(min_periods 1), dB = 10 log10, clip [{schema.S1_DB_MIN}, {schema.S1_DB_MAX}] dB, "
                 f"(dB + 30) / 35 -> [0, 1]; NaN = no data"),
          "stored": "before filling: NaN = invalid; the loader fills and builds masks"}


def _read(path: Path) -> schema.SiteCube:
  try:
    return cube_lib.read_cube(path)
  except Exception as e:   # any unreadable cube stops the build with its name (the old build is kept)
    raise BuildError(f"cannot read cube {path}: {e}") from e


def build_shards(cubes: str | Path, out: str | Path, modality: str, *, seed: int = 42,
                 split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
                 records_per_shard: int = DEFAULT_RECORDS_PER_SHARD, delta_rule: str = "calendar",
                 spatial_stride: int | None = None, time_stride: int | None = None, gap_share: float = 0.0,
                 max_gap_days: int = 90, overwrite: bool = False, command: str | None = None
                 ) -> dict[str, Any]:
  """Builds the shard directory `out` from the site cubes under `cubes`; returns the metadata.

  `spatial_stride` / `time_stride` override the reference's crop and window strides (None keeps them;
  the demo samples its few cubes more densely); `gap_share` > 0 turns that share of the candidates into gap
  windows (`gap_windows`). An existing build is replaced only with `overwrite`;
  `command` (the command line, as typed) is recorded in the provenance."""
  sampling = check_arguments(modality, seed, split_fractions, records_per_shard, delta_rule, spatial_stride,
                             time_stride, gap_share, max_gap_days)
  out = Path(out)
  check_output(out, {"--cubes": cubes}, overwrite)
  paths = cube_lib.find_cubes(cubes)
  assignment = split_cubes(len(paths), seed, split_fractions)
  split_of = {i: s for s, ids in assignment.items() for i in ids}
  spec = schema.RecordSpec(modality)
  cube_rows: list[dict[str, Any]] = []
  warnings: list[str] = []

  def warn(message: str) -> None:
    warnings.append(message)
    log.warning("%s", message)

  def records() -> Iterator[tuple[str, bytes]]:
    for index, path in enumerate(paths):
      cube = _read(path)
      stats: dict[str, int] = {}
      n = 0
      cube_id = path.parent.name if path.suffix == ".zarr" else path.name
      s1_idx = s1_in_range(cube, sampling.s1_margin_days)
      if modality != "s2" and s1_idx.size and np.isnan(cube.s1_gamma0[s1_idx]).all():
        warn(f"cube {cube_id} ({path}): s1_gamma0: all NaN in the S2 period (no S1 data); no record has S1 "
             "values")
      for record in cube_records(cube, modality, index, seed, delta_rule, stats, sampling):
        yield split_of[index], spec.encode(record)
        n += 1
      cube_rows.append({"index": index, "cube_id": cube_id, "site_id": cube.meta.site_id,
                        "path": provenance.user_path(path), "split": split_of[index], "num_records": n, **stats})
      if n == 0:
        reason = "no S1 acquisition in range" if stats.get("no_s1") else "no valid window"
        warn(f"cube {cube_id} ({path}): {reason}, skipped")
      else:
        log.info("cube %d/%d %s -> %s: %d records", index + 1, len(paths), cube_id, split_of[index], n)
      del cube

  with atomic.staged_dir(out) as stage:
    files = write_split_records(stage, modality, records_per_shard, records())
    if not any(row["num_records"] for row in cube_rows):
      raise BuildError(f"no cube under {cubes} yields a valid {modality} patch (too few clear dates, "
                       f"S1 acquisitions or pixels for the sampling {dataclasses.asdict(sampling)})")
    splits = {}
    for s in SPLITS:
      ids = assignment[s]
      splits[s] = {"num_records": int(sum(f["num_records"] for f in files[s])), "files": files[s],
                   "cube_indices": ids, "cube_ids": [cube_rows[i]["cube_id"] for i in ids]}
    meta = {
        "format_version": schema.SHARD_FORMAT_VERSION,
        "modality": modality,
        "layout": spec.layout(),
        "record_nbytes": spec.nbytes,
        "band_order": {"s2": list(schema.S2_BANDS), "s1": list(schema.S1_BANDS),
                       "channels": list(schema.channel_names(modality))},
        "scaling": _scaling(),
        "days": "days since 1970-01-01 of the acquisition's calendar day (UTC), int32",
        "delta_days_rule": delta_rule if modality == "fused" else None,
        "splits": splits,
        "counts": {s: splits[s]["num_records"] for s in SPLITS},
        "cubes": cube_rows,
        "warnings": {"count": len(warnings), "messages": warnings},
        "sampling": dataclasses.asdict(sampling) | {
            "rng": "numpy default_rng(SeedSequence([seed, cube_index])); 11-of-window subsets drawn for every "
                   "candidate in (t, y, x) order before filtering" + (
                       "; then, per candidate, the gap-window choice and gap (gap_windows)"
                       if sampling.gap_share > 0 else ""),
            "s2_modality": "same sampling (and draws) as fused" if modality == "s2" else None},
        "split_scheme": {"fractions": [float(x) for x in split_fractions], "seed": seed,
                         "rule": "random.Random(seed): sample(range(n), int(f_train n)) -> train; rest shuffled,"
                                 " first int(f_val/(f_val+f_test) rest) -> validation, remainder -> test; n >= 3:"
                                 " each split with a positive fraction gets >= 1 cube; n = 2: train + validation"},
        "seed": seed,
        "provenance": {"cubes_dir": provenance.user_path(cubes),
                       "cube_paths": [provenance.user_path(p) for p in paths],
                       "site_ids": [row["site_id"] for row in cube_rows], "code_version": _code_version(),
                       "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       **({"command": command} if command else {})},
    }
    atomic.write_text(stage / schema.SHARD_METADATA, schema.dumps_metadata(meta))
  return meta


def _main(argv: Sequence[str] | None) -> int:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  parser.add_argument("--cubes", required=True, help="cubes dir (DIR/cubes/<site>) or one site folder")
  parser.add_argument("--out", required=True, help="output shard directory")
  parser.add_argument("--modality", required=True, choices=schema.MODALITIES)
  parser.add_argument("--seed", type=int, default=42)
  parser.add_argument("--split-fractions", default=None,
                      help="train,validation,test fractions of the cubes, normalised (default 0.75,1/6,1/12: "
                           "the reference's 375/83/42 of 500)")
  parser.add_argument("--records-per-shard", type=int, default=DEFAULT_RECORDS_PER_SHARD)
  parser.add_argument("--spatial-stride", type=int, default=None,
                      help="crop stride in pixels (default: the reference's, 9 for s2/fused, 15 for s1)")
  parser.add_argument("--time-stride", type=int, default=None,
                      help="window stride in dates (default: the reference's, 17 for s2/fused, 40 for s1)")
  parser.add_argument("--gap-share", type=float, default=0.0,
                      help="fused/s2: share of the windows cut as gap windows (5 dates before and 5 after a "
                           "gap of up to --max-gap-days around the centre date; earthrep's any-day training; "
                           "default 0, the reference's sampling)")
  parser.add_argument("--max-gap-days", type=int, default=90)
  parser.add_argument("--delta-rule", choices=preprocess.DELTA_DAYS_RULES, default="calendar",
                      help="fused delta_days: calendar days (inference rule) or the reference's training "
                           "rule (floored nanosecond difference)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing build in --out")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  meta = build_shards(args.cubes, args.out, args.modality, seed=args.seed,
                      split_fractions=parse_fractions(args.split_fractions),
                      records_per_shard=args.records_per_shard, delta_rule=args.delta_rule,
                      spatial_stride=args.spatial_stride, time_stride=args.time_stride,
                      gap_share=args.gap_share, max_gap_days=args.max_gap_days, overwrite=args.overwrite,
                      command=provenance.command_line("data_prep.build_shards",
                                                      sys.argv[1:] if argv is None else argv))
  print(f"{args.out}: {args.modality} records " +
        ", ".join(f"{s} {meta['counts'][s]} ({len(meta['splits'][s]['cube_ids'])} cubes)" for s in SPLITS))
  if meta["warnings"]["count"]:
    print(f"{args.out}: {meta['warnings']['count']} warning(s), listed in {schema.SHARD_METADATA}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return run_tool(_main, argv, PROG)


if __name__ == "__main__":
  sys.exit(main())
