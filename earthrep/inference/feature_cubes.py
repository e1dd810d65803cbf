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
Writing: the store is built as `.<out>.partial` and renamed to `<out>` when complete; tiles aligned to the
chunks are written one region each and recorded afterwards as files in `.<out>.tiles/`, so `resume=True`
skips finished tiles of a kept partial store; without it a failed run removes its partial store.
`scheduler` spreads tiles over a dask.distributed cluster: one `TileRunner` actor per worker owns that
worker's model and cube, and every worker writes its own chunks.
`geotiff=DIR` writes one COG per date (`<YYYY-MM-DD>.tif`, one band per feature); `quicklook=DATE` writes
`<out>.<DATE>.png`: the PCA (3 components) of that date's embedding beside the S2 true-colour image
(`quicklook="auto"`: the date with the most valid pixels).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from earthrep.data import windows as windows_lib
from earthrep.errors import EarthrepError
from earthrep.inference import engine as engine_lib
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

  @property
  def state(self) -> tuple[engine_lib.Engine, windows_lib.Merged, windows_lib.Windows, Any]:
    if self._state is None:
      job = self.job
      model, params = engine_lib.load_fusion(job.model_dir)
      engine_lib.check_model(model, job.model_dir)
      cube = cube_lib.read_cube(job.cube_path)
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


def make_windows(merged: windows_lib.Merged, dates: str) -> windows_lib.Windows:
  if dates == "clear":
    return windows_lib.clear_windows(merged)
  if dates == "daily":
    return windows_lib.anyday_windows(merged, windows_lib.daily_days(merged))
  try:
    days = [np.datetime64(d.strip(), "D") for d in dates.split(",") if d.strip()]
  except ValueError as e:
    raise EmbedError(f"--dates {dates!r}: expected clear, daily or ISO dates like 2019-06-01,2019-07-15") from e
  return windows_lib.anyday_windows(merged, days)


def _tiles(ny: int, nx: int, tile: int) -> list[tuple[int, int, int, int]]:
  return [(y0, x0, min(tile, ny - y0), min(tile, nx - x0)) for y0 in range(0, ny, tile) for x0 in range(0, nx, tile)]


def embed_cube(model_dir: str, cube_path: str, out: str, *, dates: str = "clear", naive: bool = False,
               batch: int | None = None, tile: int = DEFAULT_TILE, resume: bool = False, overwrite: bool = False,
               scheduler: str | None = None, geotiff: str | None = None, quicklook: str | None = None,
               embedding: str = "fused", log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> Path:
  out_path = Path(out).absolute()
  store = out_path.with_name(f".{out_path.name}.partial")
  done_dir = out_path.with_name(f".{out_path.name}.tiles")
  if out_path.exists() and not overwrite:
    if resume:
      log(f"{out_path}: complete, nothing to resume")
      return out_path
    raise EmbedError(f"{out_path}: exists; pass --overwrite to replace it or --resume to finish a partial run")
  job = Job(str(Path(model_dir).absolute()), str(Path(cube_path).absolute()), dates, naive, batch,
            str(store), str(done_dir), tile, embedding)
  runner = TileRunner(job)
  engine, merged, windows, cube = runner.state
  h, w = cube.shape_hw
  _, ny, nx = feature_cube.output_grid(cube.transform, h, w)
  if ny <= 0 or nx <= 0:
    raise windows_lib.WindowError(f"{cube_path}: grid {h}x{w} is too small for the 7-px border")
  if not windows.valid.any():
    raise windows_lib.WindowError(
        f"{cube_path}: s2_reflectance: no valid window for --dates {dates} ({len(merged.s2_time)} merged S2 "
        "dates with any clear pixel; a window needs 5 on each side of its target)")
  attrs = {"model_dir": job.model_dir, "model_config": json.dumps(checkpoint.read_model_config(model_dir)),
           "code_version": provenance.code_version(), "input_cube": job.cube_path, "dates_mode": dates,
           "path": "naive" if naive else "fast", "embedding": embedding,
           "created": datetime.datetime.now(datetime.UTC).isoformat(),
           "output_grid": "input cube grid without its 7-pixel border (patch centres)"}
  if not (resume and store.exists()):
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(done_dir, ignore_errors=True)
    feature_cube.create(store, crs=cube.crs, cube_transform=cube.transform, cube_hw=(h, w),
                        days=windows.target_days, width=engine.width, tile=tile, attrs=attrs,
                        long_name="fused embedding zf" if embedding == "fused" else
                        f"{embedding} autoencoder code z_{embedding}")
  else:   # the kept partial store must come from the same inputs
    stored = feature_cube.attributes(store)
    for key in ("model_dir", "input_cube", "dates_mode", "path", "embedding"):
      if stored.get(key) != attrs[key]:
        raise EmbedError(f"{store}: attribute {key}: partial store has {stored.get(key)!r}, this run "
                         f"{attrs[key]!r}; rerun with --overwrite")
  done_dir.mkdir(exist_ok=True)
  finished = {p.name for p in done_dir.iterdir() if not p.name.startswith(".")}
  todo = [t for t in _tiles(ny, nx, tile) if f"{t[0]}_{t[1]}" not in finished]
  log(f"{out_path}: {len(windows)} dates x {ny}x{nx} px, {len(todo)} of {len(_tiles(ny, nx, tile))} tiles to do")
  try:
    _run_tiles(runner, todo, scheduler, log)
  except BaseException:
    if not resume:
      shutil.rmtree(store, ignore_errors=True)
      shutil.rmtree(done_dir, ignore_errors=True)
    else:
      log(f"{out_path}: failed; partial store kept at {store}, rerun with --resume")
    raise
  shutil.rmtree(done_dir, ignore_errors=True)
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
    with Client(scheduler) as client:
      workers = sorted(client.scheduler_info()["workers"])
      actors = [client.submit(TileRunner, runner.job, actor=True, workers=[w]).result() for w in workers]
      futures = [actors[i % len(actors)].run_tile(t) for i, t in enumerate(todo)]
      for i, fut in enumerate(futures, 1):
        progress(fut.result(), i)
    return
  for i, t in enumerate(todo, 1):
    progress(runner.run_tile(t), i)


def write_geotiffs(store: Path, out_dir: str) -> list[Path]:
  """One COG (or tiled GeoTIFF with overviews) per date, one band per feature, each written atomically."""
  import rasterio
  from affine import Affine
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  fc = feature_cube.read(store)
  transform = Affine(*fc.transform)
  cog = _has_driver("COG")
  written = []
  for i, t in enumerate(fc.time):
    data = fc.values_fthw[:, i]
    path = out / f"{np.datetime_as_string(t, unit='D')}.tif"
    profile = dict(driver="COG" if cog else "GTiff", width=data.shape[2], height=data.shape[1],
                   count=data.shape[0], dtype="float32", crs=fc.crs_wkt, transform=transform, nodata=np.nan,
                   compress="deflate")
    if not cog:
      profile.update(tiled=True, blockxsize=256, blockysize=256)
    with atomic.atomic_path(path) as tmp:
      with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = tuple(fc.names)
        if not cog:
          dst.build_overviews([2, 4, 8])
    written.append(path)
  return written


def best_date(store: Path) -> str:
  """The ISO date of the store's time step with the most valid embeddings (the quick-look's `auto`)."""
  fc = feature_cube.read(store)
  counts = np.isfinite(fc.values_fthw[0]).sum(axis=(1, 2))
  return str(fc.time[int(np.argmax(counts))].astype("datetime64[D]"))


def _has_driver(name: str) -> bool:
  import rasterio
  with rasterio.Env() as env:
    return name in env.drivers()


def write_quicklook(store: Path, cube, date: str, png: Path) -> Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fc = feature_cube.read(store)
  day = np.datetime64(date, "D")
  i = int(np.argmin(np.abs(fc.time.astype("datetime64[D]") - day).astype(np.int64)))
  z_fyx = fc.values_fthw[:, i]
  f, ny, nx = z_fyx.shape
  flat = z_fyx.reshape(f, -1).T
  ok = np.isfinite(flat).all(axis=1)
  rgb = np.zeros((ny * nx, 3))
  if ok.sum() >= 3:
    centred = flat[ok] - flat[ok].mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    pcs = centred @ vt[:3].T
    lo, hi = np.percentile(pcs, 2, axis=0), np.percentile(pcs, 98, axis=0)
    rgb[ok, :pcs.shape[1]] = np.clip((pcs - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
  j = int(np.argmin(np.abs(cube.s2_time.astype("datetime64[D]") - day).astype(np.int64)))
  tc = np.moveaxis(cube.s2_reflectance[j, [2, 1, 0], CENTRE_PX:-CENTRE_PX, CENTRE_PX:-CENTRE_PX], 0, -1)
  finite = tc[np.isfinite(tc)]
  lo, hi = (np.percentile(finite, 2), np.percentile(finite, 98)) if finite.size else (0.0, 1.0)
  tc = np.nan_to_num(np.clip((tc - lo) / max(hi - lo, 1e-12), 0, 1))
  fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
  axes[0].imshow(rgb.reshape(ny, nx, 3))
  axes[0].set_title(f"embedding PCA {np.datetime_as_string(fc.time[i], unit='D')}")
  axes[1].imshow(tc)
  axes[1].set_title(f"S2 B04/B03/B02 {np.datetime_as_string(cube.s2_time[j], unit='D')}")
  for ax in axes:
    ax.axis("off")
  fig.tight_layout()
  with atomic.atomic_path(png) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
  plt.close(fig)
  return png
