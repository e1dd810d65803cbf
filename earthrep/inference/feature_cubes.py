"""Feature cubes: the fused embedding of every pixel and date of a site cube, written to Zarr.

`embed_cube` is what `python -m earthrep.embed` runs. `dates="clear"` is the reference feature-cube
algorithm (ARCHITECTURE.md section g, `data.windows.clear_windows`); `daily` embeds every day with 5 merged
S2 dates on each side and a list embeds those days, both through the any-day windows (centre frame hidden;
`data.windows.anyday_windows`). The fast path (default) and the naive reference path (`naive=True`) are in
`inference.engine`; they agree to float32 rounding.
Output: the feature-cube format of `earthrep.io.feature_cube` (features F01.. = the embedding's width, time
= the target days, the cube grid without its 7-px border), with provenance attributes (model dir and config,
code version, input cube, dates mode, embedding, creation time). `embedding="fused"` (default) writes the
fused embedding zf; a sensor name writes that sensor's own stage-1 autoencoder code (a single-sensor
embedding, e.g. for the evaluation's baselines).
Provenance paths are the ones the user gave; `model_fingerprint` and `cube_fingerprint` (hashes of the model
config and params, and of the cube's grid, times and values) key the store, with `dates_mode`, `embedding`,
`path` and `tile`. Suspect inputs (days outside the cube, days without a window, all-NaN S1) are logged as
warnings and counted in the attributes `warning_count` / `warnings`.
Checks: every argument and output is checked before the first tile (`check_arguments`; `_check_paths`
before any input is read, `_check_resume` once the inputs' fingerprints are known, `_check_days`); an
existing output (store, GeoTIFFs, quick-look) is replaced only with `overwrite`, and only if it is a feature
cube; the output may not overlap the model or cube.
Writing: the store is built as `.<out>.partial` and renamed to `<out>` when complete; tiles aligned to the
chunks are written one region each and recorded afterwards as files in `.<out>.tiles/`, so `resume=True`
skips finished tiles of a kept partial store, after checking that it was started with the same model,
cube, dates, embedding, path and tile (else it refuses, naming the differences); without it a failed run
removes its partial store, and a partial store left by a killed run is refused unless `resume` or
`overwrite`. `check_reusable` tells a caller that caches feature cubes whether one was made from given
inputs. `scheduler` spreads tiles over a dask.distributed cluster: one `TileRunner` actor per worker owns
that worker's model and cube, and every worker writes its own chunks.
`geotiff=DIR` and `quicklook=DATE|auto` write the views of `earthrep.inference.feature_cube_views`.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from earthrep.data import windows as windows_lib
from earthrep.errors import EarthrepError
from earthrep.inference import engine as engine_lib
from earthrep.inference.feature_cube_views import best_date, write_geotiffs, write_quicklook  # noqa: F401
from earthrep.io import atomic, checkpoint, feature_cube, provenance
from earthrep.io import cube as cube_lib
from earthrep.schema import CENTRE_PX

DEFAULT_TILE = 32


class EmbedError(EarthrepError):
  """Bad arguments or output state; the message names the path."""


@dataclasses.dataclass(frozen=True)
class Job:
  """Everything a (possibly remote) tile worker needs; picklable."""
  model_dir: str
  cube_path: str
  dates: str
  naive: bool
  batch: int | None
  store: str
  done_dir: str
  tile: int
  embedding: str = "fused"


class TileRunner:
  """Embeds and writes the tiles of one job; builds (engine, merged series, windows, cube) once, on first
  use. Locally one runner serves every tile; on a dask cluster each worker holds one as an actor."""

  def __init__(self, job: Job):
    self.job = job
    self._state: tuple | None = None
    self._cube = None

  def use_cube(self, cube) -> None:
    """The job's cube, already read (locally, to read it once); workers read their own."""
    self._cube = cube

  @property
  def state(self) -> tuple[engine_lib.Engine, windows_lib.Merged, windows_lib.Windows, Any]:
    if self._state is None:
      job = self.job
      model, params = load_model(job.model_dir)
      if job.embedding != "fused" and job.embedding not in model.sensors:
        raise EmbedError(f"--embedding {job.embedding!r}: expected fused or one of the model's sensors "
                         f"{list(model.sensors)}")
      cube = self._cube if self._cube is not None else cube_lib.read_cube(job.cube_path)
      merged = windows_lib.merge(cube, job.cube_path, with_s1="s1" in model.sensors)
      windows = make_windows(merged, job.dates)
      batch = job.batch or engine_lib.default_batch(model)
      self._state = (engine_lib.Engine(model, params, batch, embedding=job.embedding), merged, windows, cube)
    return self._state

  def run_tile(self, tile: tuple[int, int, int, int]) -> int:
    """Embeds and writes one tile (output-grid origin y0, x0 and size ty, tx); returns its pixel count."""
    job = self.job
    engine, merged, windows, _ = self.state
    y0, x0, ty, tx = tile
    halo = 2 * CENTRE_PX
    local = windows_lib.Merged(
        merged.s2_thwc[:, y0:y0 + ty + halo, x0:x0 + tx + halo], merged.s2_time,
        None if merged.s1_uhwc is None else merged.s1_uhwc[:, y0:y0 + ty + halo, x0:x0 + tx + halo],
        merged.s1_time, merged.source)
    fn = engine_lib.naive_tile if job.naive else engine_lib.fast_tile
    zf_nyxf = fn(engine, local, windows, ty, tx)
    try:
      feature_cube.write_region(job.store, np.moveaxis(zf_nyxf, -1, 0), y0, x0)
    except OSError as e:
      raise EmbedError(f"{job.store}: writing tile ({y0}, {x0}) failed: {e}") from e
    atomic.write_text(Path(job.done_dir) / f"{y0}_{x0}", "done\n")
    return ty * tx


def load_model(model_dir: str) -> tuple[Any, Any]:
  """(FusionModel, params) of a model directory; a model_config.json that describes no fusion model, or a
  model that does not fit site cubes, raises ModelError naming the file."""
  try:
    model, params = engine_lib.load_fusion(model_dir)
  except EarthrepError:
    raise
  except (KeyError, TypeError, ValueError) as e:
    raise engine_lib.ModelError(f"{model_dir}: {checkpoint.MODEL_CONFIG}: not a fusion model's config "
                                f"({type(e).__name__}: {e})") from None
  engine_lib.check_model(model, model_dir)
  return model, params


def parse_dates(dates: str) -> list[np.datetime64] | None:
  """`--dates`: None for `clear` / `daily`, else the listed days; raises EmbedError for anything else."""
  if dates in ("clear", "daily"):
    return None
  parts = [d.strip() for d in str(dates).split(",") if d.strip()]
  try:
    if not parts or any(not re.fullmatch(r"\d{4}-\d{2}-\d{2}", d) for d in parts):
      raise ValueError("not YYYY-MM-DD")
    return [np.datetime64(d, "D") for d in parts]
  except ValueError:
    raise EmbedError(f"--dates {dates!r}: expected clear, daily or ISO dates like 2019-06-01,2019-07-15") from None


def make_windows(merged: windows_lib.Merged, dates: str) -> windows_lib.Windows:
  days = parse_dates(dates)
  if days is None:
    return windows_lib.clear_windows(merged) if dates == "clear" else \
        windows_lib.anyday_windows(merged, windows_lib.daily_days(merged))
  return windows_lib.anyday_windows(merged, days)


def _tiles(ny: int, nx: int, tile: int) -> list[tuple[int, int, int, int]]:
  return [(y0, x0, min(tile, ny - y0), min(tile, nx - x0)) for y0 in range(0, ny, tile) for x0 in range(0, nx, tile)]


# ---------------------------------------------------------------------------------------------
# Checks before anything is written, and what keys a store (resume, reuse).
# ---------------------------------------------------------------------------------------------
def check_arguments(*, dates: str, tile: int, batch: int | None, quicklook: str | None, resume: bool,
                    overwrite: bool) -> None:
  """Raises EmbedError naming the argument unless every one is valid."""
  parse_dates(dates)
  if tile < 1:
    raise EmbedError(f"--tile {tile}: expected a positive number of output pixels")
  if batch is not None and batch < 1:
    raise EmbedError(f"--batch {batch}: expected a positive number of windows")
  if quicklook not in (None, "auto") and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", quicklook):
    raise EmbedError(f"--quicklook {quicklook!r}: expected auto or an ISO day like 2019-06-01")
  if quicklook not in (None, "auto"):
    try:
      np.datetime64(quicklook, "D")
    except ValueError:
      raise EmbedError(f"--quicklook {quicklook!r}: not a calendar day") from None
  if resume and overwrite:
    raise EmbedError("--resume and --overwrite: choose one")


def model_fingerprint(model_dir: str) -> str:
  """The model config and every file of the params that the model directory gives (its best checkpoint)."""
  return provenance.fingerprint(checkpoint.read_model_config(model_dir),
                                provenance.files_fingerprint(checkpoint.find_params_dir(model_dir)))


def cube_fingerprint(cube) -> str:
  return provenance.fingerprint(cube.crs, [float(v) for v in cube.transform], cube.s2_time, cube.s1_time,
                                cube.cloud_mask, cube.s2_reflectance, cube.s1_gamma0)


RESUME_KEYS = ("model_fingerprint", "cube_fingerprint", "dates_mode", "embedding", "path", "tile")
REUSE_KEYS = ("model_fingerprint", "cube_fingerprint", "dates_mode", "embedding")


def differences(store: Path, attrs: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
  """`key: stored -> wanted` for each of `keys` on which the store's attributes differ from `attrs`."""
  try:
    stored = feature_cube.attributes(store)
  except Exception as e:   # noqa: BLE001 - an unreadable store cannot be matched
    return [f"store unreadable ({type(e).__name__})"]
  return [f"{k}: {stored.get(k)!r} -> {attrs[k]!r}" for k in keys if stored.get(k) != attrs[k]]


def check_reusable(store: str | Path, model_dir: str, cube_path: str, *, dates: str = "clear",
                   embedding: str = "fused") -> None:
  """Raises EmbedError unless the feature cube `store` was made from this model, cube, dates and embedding
  (for callers that cache feature cubes, e.g. a report folder)."""
  cube = cube_lib.read_cube(cube_path)
  wanted = {"model_fingerprint": model_fingerprint(model_dir), "cube_fingerprint": cube_fingerprint(cube),
            "dates_mode": dates, "embedding": embedding}
  diff = differences(Path(store), wanted, REUSE_KEYS)
  if diff:
    raise EmbedError(f"{store}: made from other inputs ({'; '.join(diff)}); remove it or embed again")


def _is_feature_cube(path: Path) -> bool:
  return path.is_dir() and (path / feature_cube.FEATURES).is_dir()


def _check_paths(out_path: Path, store: Path, *, resume: bool, overwrite: bool, geotiff: str | None,
                 quicklook: str | None) -> None:
  """The output checks that need no input read: existing outputs, partial runs, the views' targets."""
  if out_path.exists() and not resume:
    atomic.check_target(out_path, overwrite=overwrite, kind="feature cube", is_kind=_is_feature_cube)
  if store.exists() and not (resume or overwrite):
    raise EmbedError(f"{out_path}: an interrupted run left {store.name}; pass --resume to finish it or "
                     "--overwrite to start afresh")
  if resume and out_path.exists():   # complete: nothing will be written (`_check_resume` checks its inputs)
    return
  if geotiff:
    if Path(geotiff).exists() and not Path(geotiff).is_dir():
      raise EmbedError(f"--geotiff {geotiff}: is a file; expected a folder for the GeoTIFFs")
    atomic.check_writable(geotiff, "--geotiff")
  if quicklook and not overwrite:
    pngs = (sorted(out_path.parent.glob(f"{out_path.name}.*.png")) if quicklook == "auto" else
            [p for p in [out_path.with_name(f"{out_path.name}.{quicklook}.png")] if p.exists()])
    if pngs:
      raise EmbedError(f"--quicklook: {pngs[0]} exists; pass --overwrite to replace it")


def _check_resume(out_path: Path, store: Path, key: dict[str, Any], resume: bool) -> bool:
  """Refuses to resume what other inputs or arguments started; True if the output is already complete."""
  if resume and out_path.exists():
    diff = differences(out_path, key, RESUME_KEYS[:-1])   # any tile size gives the same complete store
    if diff:
      raise EmbedError(f"--resume {out_path}: complete, but made with other inputs or arguments "
                       f"({'; '.join(diff)}); pass --overwrite to replace it")
    return True
  if resume and store.exists():
    diff = differences(store, key, RESUME_KEYS)
    if diff:
      raise EmbedError(f"--resume {out_path}: the interrupted run ({store.name}) used other inputs or "
                       f"arguments ({'; '.join(diff)}); rerun with those, or pass --overwrite to start afresh")
  return False


def _check_days(days: np.ndarray, *, overwrite: bool, geotiff: str | None, quicklook: str | None) -> None:
  """The output checks that need the target days: GeoTIFFs of these dates, the quick-look's date."""
  if geotiff and not overwrite:
    clash = [d for d in days if (Path(geotiff) / f"{np.datetime_as_string(d, unit='D')}.tif").exists()]
    if clash:
      raise EmbedError(f"--geotiff {geotiff}: holds {len(clash)} GeoTIFF(s) of these dates (first "
                       f"{np.datetime_as_string(clash[0], unit='D')}.tif); pass --overwrite to replace them")
  if quicklook not in (None, "auto") and len(days):
    day = np.datetime64(quicklook, "D")
    if not days.min() <= day <= days.max():
      raise EmbedError(f"--quicklook {quicklook}: outside the output's days ({days.min()} to {days.max()})")


def _warnings(merged: windows_lib.Merged, windows: windows_lib.Windows, dates: str) -> list[str]:
  """Suspect but usable inputs; logged and counted into the store's attributes."""
  out = []
  listed = parse_dates(dates)
  if listed is not None and len(merged.s2_time):
    first, last = merged.s2_time.min().astype("datetime64[D]"), merged.s2_time.max().astype("datetime64[D]")
    outside = [d for d in listed if not first <= d <= last]
    if outside:
      out.append(f"--dates: {len(outside)} of {len(listed)} day(s) outside the cube's S2 dates ({first} to "
                 f"{last}), first {outside[0]}")
  no_window = int((~windows.valid).sum())
  if no_window:
    out.append(f"{no_window} of {len(windows)} target day(s) have no window (fewer than 5 merged S2 dates on "
               "a side): their embeddings are NaN")
  if merged.s1_uhwc is not None and np.isnan(merged.s1_uhwc).all():
    out.append("s1_gamma0: all NaN (no S1 data): every S1 input is empty, the fused embedding rests on S2 alone")
  return out


def embed_cube(model_dir: str, cube_path: str, out: str, *, dates: str = "clear", naive: bool = False,
               batch: int | None = None, tile: int = DEFAULT_TILE, resume: bool = False, overwrite: bool = False,
               scheduler: str | None = None, geotiff: str | None = None, quicklook: str | None = None,
               embedding: str = "fused", log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> Path:
  check_arguments(dates=dates, tile=tile, batch=batch, quicklook=quicklook, resume=resume, overwrite=overwrite)
  out_path = Path(out).absolute()
  store = atomic.partial_sibling(out_path)
  done_dir = out_path.with_name(f".{out_path.name}.tiles")
  inputs = {"--model": model_dir, "--cube": cube_path}
  atomic.check_apart(out_path, inputs)
  if geotiff:
    atomic.check_apart(geotiff, inputs, "--geotiff")
  atomic.check_writable(out_path)
  _check_paths(out_path, store, resume=resume, overwrite=overwrite, geotiff=geotiff, quicklook=quicklook)
  cube = cube_lib.read_cube(cube_path)
  key = {"model_fingerprint": model_fingerprint(model_dir), "cube_fingerprint": cube_fingerprint(cube),
         "dates_mode": dates, "embedding": embedding, "path": "naive" if naive else "fast", "tile": tile}
  if _check_resume(out_path, store, key, resume):
    log(f"{out_path}: complete, nothing to resume")
    return out_path
  job = Job(str(Path(model_dir).absolute()), str(Path(cube_path).absolute()), dates, naive, batch,
            str(store), str(done_dir), tile, embedding)
  h, w = cube.shape_hw
  _, ny, nx = feature_cube.output_grid(cube.transform, h, w)
  if ny <= 0 or nx <= 0:
    raise windows_lib.WindowError(f"{cube_path}: grid {h}x{w} is too small for the 7-px border")
  runner = TileRunner(job)
  runner.use_cube(cube)
  engine, merged, windows, _ = runner.state
  if not windows.valid.any():
    raise windows_lib.WindowError(
        f"{cube_path}: s2_reflectance: no valid window for --dates {dates} ({len(merged.s2_time)} merged S2 "
        "dates with any clear pixel; a window needs 5 on each side of its target)")
  _check_days(windows.target_days.astype("datetime64[D]"), overwrite=overwrite, geotiff=geotiff,
              quicklook=quicklook)
  warnings = _warnings(merged, windows, dates)
  attrs = {"model_dir": provenance.user_path(model_dir), "input_cube": provenance.user_path(cube_path),
           "model_config": json.dumps(checkpoint.read_model_config(model_dir)), **key,
           "code_version": provenance.code_version(), "created": datetime.datetime.now(datetime.UTC).isoformat(),
           "warning_count": len(warnings), "warnings": json.dumps(warnings),
           "output_grid": "input cube grid without its 7-pixel border (patch centres)"}
  for message in warnings:
    log(f"warning: {message}")
  if not (resume and store.exists()):
    atomic.remove(store)
    atomic.remove(done_dir)
    feature_cube.create(store, crs=cube.crs, cube_transform=cube.transform, cube_hw=(h, w),
                        days=windows.target_days, width=engine.width, tile=tile, attrs=attrs,
                        long_name="fused embedding zf" if embedding == "fused" else
                        f"{embedding} autoencoder code z_{embedding}")
  done_dir.mkdir(exist_ok=True)
  finished = {p.name for p in done_dir.iterdir() if not p.name.startswith(".")}
  todo = [t for t in _tiles(ny, nx, tile) if f"{t[0]}_{t[1]}" not in finished]
  log(f"{out_path}: {len(windows)} dates x {ny}x{nx} px, {len(todo)} of {len(_tiles(ny, nx, tile))} tiles to do")
  try:
    _run_tiles(runner, todo, scheduler, log)
  except BaseException:
    if not resume:
      atomic.remove(store)
      atomic.remove(done_dir)
    else:
      log(f"{out_path}: failed; partial store kept at {store}, rerun with --resume")
    raise
  atomic.remove(done_dir)
  atomic.replace(store, out_path)
  if geotiff:
    write_geotiffs(out_path, geotiff)
  if quicklook:
    quicklook = best_date(out_path) if quicklook == "auto" else quicklook
    write_quicklook(out_path, cube, quicklook, out_path.with_name(f"{out_path.name}.{quicklook}.png"))
  return out_path


def _run_tiles(runner: TileRunner, todo: list, scheduler: str | None, log) -> None:
  start, pixels, total = time.perf_counter(), 0, sum(t[2] * t[3] for t in todo)
  def progress(n_px: int, i: int):
    nonlocal pixels
    pixels += n_px
    rate = pixels / max(time.perf_counter() - start, 1e-9)
    log(f"tile {i}/{len(todo)}: {rate:,.0f} px/s, ETA {(total - pixels) / max(rate, 1e-9):,.0f} s")
  if scheduler:
    from distributed import Client
    try:
      client = Client(scheduler)
    except (OSError, TimeoutError, ValueError) as e:   # unreachable or malformed address
      raise EmbedError(f"--scheduler {provenance.redact(scheduler)}: cannot connect "
                       f"({provenance.redact(str(e))})") from None
    with client:
      workers = sorted(client.scheduler_info()["workers"])
      actors = [client.submit(TileRunner, runner.job, actor=True, workers=[w]).result() for w in workers]
      futures = [actors[i % len(actors)].run_tile(t) for i, t in enumerate(todo)]
      for i, fut in enumerate(futures, 1):
        progress(fut.result(), i)
    return
  for i, t in enumerate(todo, 1):
    progress(runner.run_tile(t), i)
