"""Feature cubes: the 7-d fused embedding of every pixel and date of a site cube, written to Zarr.

  python -m earthrep.embed --model runs/fusion --cube data/XX/cube.zarr --out out/XX_features.zarr \
      [--dates clear|daily|2019-06-01,2019-07-15] [--geotiff DIR] [--batch N] [--resume|--overwrite] \
      [--scheduler tcp://host:8786] [--quicklook 2019-06-01] [--naive] [--tile 32]

`--dates clear` is the reference feature-cube algorithm (ARCHITECTURE.md section g, `windows.clear_windows`);
`daily` embeds every day with 5 merged S2 dates on each side and a list embeds those days, both through the
any-day windows (centre frame hidden; `windows.anyday_windows`). The fast path (default) and the naive
reference path (`--naive`) are in `embed_core`; they agree to float32 rounding.
Output Zarr (xarray-readable): `features` float32 (feature=F01..F07, time, y, x), NaN where no valid
embedding, chunks (7, all times, tile, tile); `time` = the target days (00:00 UTC); x/y = pixel centres of
the cube grid WITHOUT its 7-px border (patch centres need 7 px of context, section g); CF grid mapping
`spatial_ref` (crs_wkt, spatial_ref, GeoTransform of the output grid) named by `features.grid_mapping`;
provenance attributes (model dir and config, code version, input cube, dates mode, creation time).
Writing: the store is built as `.<out>.partial` and renamed to `<out>` when complete; tiles aligned to the
chunks are written one region each and recorded afterwards as files in `.<out>.tiles/`, so `--resume`
skips finished tiles of a kept partial store; without `--resume` a failed run removes its partial store.
`--scheduler` spreads tiles over a dask.distributed cluster; each worker writes its own chunks.
`--geotiff DIR` writes one COG per date (`<YYYY-MM-DD>.tif`, 7 bands); `--quicklook DATE` writes
`<out>.<DATE>.png`: the PCA (3 components) of that date's embedding beside the S2 true-colour image
(`--quicklook auto`: the date with the most valid pixels).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from earthrep import provenance
from earthrep import windows as windows_lib
from earthrep.schema import CENTRE_PX

FEATURES = "features"
GRID_MAPPING = "spatial_ref"
DEFAULT_TILE = 32


class EmbedError(ValueError):
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


_STATE: dict[Job, Any] = {}


def _state(job: Job):
  """(engine, merged, windows) of a job, built once per process."""
  if job not in _STATE:
    from earthrep import cube as cube_lib
    from earthrep import embed_core
    model, params = embed_core.load_fusion(job.model_dir)
    embed_core.check_model(model, job.model_dir)
    cube = cube_lib.read_cube(job.cube_path)
    merged = windows_lib.merge(cube, job.cube_path, with_s1="s1" in model.sensors)
    windows = make_windows(merged, job.dates)
    batch = job.batch or embed_core.default_batch(model)
    _STATE.clear()
    _STATE[job] = (embed_core.Engine(model, params, batch), merged, windows, cube)
  return _STATE[job]


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


def _write_region(store: str, block: np.ndarray, y0: int, x0: int) -> None:
  import zarr
  array = zarr.open_array(Path(store) / FEATURES, mode="r+")
  array[:, :, y0:y0 + block.shape[2], x0:x0 + block.shape[3]] = block


def _mark_done(done_dir: str, y0: int, x0: int) -> None:
  path = Path(done_dir) / f"{y0}_{x0}"
  tmp = path.with_suffix(".tmp")
  tmp.write_text("done\n")
  os.replace(tmp, path)


def run_tile(job: Job, tile: tuple[int, int, int, int]) -> int:
  """Embeds and writes one tile (output-grid origin y0, x0 and size ty, tx); returns its pixel count."""
  from earthrep import embed_core
  engine, merged, windows, _ = _state(job)
  y0, x0, ty, tx = tile
  halo = 2 * CENTRE_PX
  local = windows_lib.Merged(
      merged.s2_thwc[:, y0:y0 + ty + halo, x0:x0 + tx + halo], merged.s2_time,
      None if merged.s1_uhwc is None else merged.s1_uhwc[:, y0:y0 + ty + halo, x0:x0 + tx + halo],
      merged.s1_time, merged.source)
  fn = embed_core.naive_tile if job.naive else embed_core.fast_tile
  zf_nyxf = fn(engine, local, windows, ty, tx)
  try:
    _write_region(job.store, np.moveaxis(zf_nyxf, -1, 0), y0, x0)
  except OSError as e:
    raise EmbedError(f"{job.store}: writing tile ({y0}, {x0}) failed: {e}") from e
  _mark_done(job.done_dir, y0, x0)
  return ty * tx


code_version = provenance.code_version


def _template(job: Job, cube, windows, attrs: dict) -> None:
  import dask.array as da
  import xarray as xr
  from earthrep.cube import _grid_mapping_attrs, pixel_centre_coords
  h, w = cube.shape_hw
  ny, nx = h - 2 * CENTRE_PX, w - 2 * CENTRE_PX
  a, b, c, d, e, f = cube.transform
  transform = (a, b, c + CENTRE_PX * a, d, e, f + CENTRE_PX * e)
  x, y = pixel_centre_coords(transform, ny, nx)
  bottleneck = 7
  features = da.full((bottleneck, len(windows), ny, nx), np.nan, dtype=np.float32,
                     chunks=(bottleneck, max(len(windows), 1), job.tile, job.tile))
  ds = xr.Dataset(
      {FEATURES: (("feature", "time", "y", "x"), features,
                  {"grid_mapping": GRID_MAPPING, "long_name": "fused S1/S2 embedding zf"})},
      coords={"feature": np.array([f"F{i + 1:02d}" for i in range(bottleneck)], dtype=object),
              "time": windows.target_days.astype("datetime64[D]").astype("datetime64[ns]"),
              "y": ("y", y, {"standard_name": "projection_y_coordinate", "units": "m"}),
              "x": ("x", x, {"standard_name": "projection_x_coordinate", "units": "m"}),
              GRID_MAPPING: ((), np.int32(0), _grid_mapping_attrs(cube.crs, transform))},
      attrs=attrs)
  ds.to_zarr(job.store, mode="w", compute=False, consolidated=False,
             encoding={FEATURES: {"chunks": features.chunksize, "_FillValue": np.float32(np.nan)}})


def _tiles(ny: int, nx: int, tile: int) -> list[tuple[int, int, int, int]]:
  return [(y0, x0, min(tile, ny - y0), min(tile, nx - x0)) for y0 in range(0, ny, tile) for x0 in range(0, nx, tile)]


def embed_cube(model_dir: str, cube_path: str, out: str, *, dates: str = "clear", naive: bool = False,
               batch: int | None = None, tile: int = DEFAULT_TILE, resume: bool = False, overwrite: bool = False,
               scheduler: str | None = None, geotiff: str | None = None, quicklook: str | None = None,
               log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> Path:
  out_path = Path(out).absolute()
  store = out_path.with_name(f".{out_path.name}.partial")
  done_dir = out_path.with_name(f".{out_path.name}.tiles")
  if out_path.exists() and not overwrite:
    if resume:
      log(f"{out_path}: complete, nothing to resume")
      return out_path
    raise EmbedError(f"{out_path}: exists; pass --overwrite to replace it or --resume to finish a partial run")
  job = Job(str(Path(model_dir).absolute()), str(Path(cube_path).absolute()), dates, naive, batch,
            str(store), str(done_dir), tile)
  _, merged, windows, cube = _state(job)
  h, w = cube.shape_hw
  ny, nx = h - 2 * CENTRE_PX, w - 2 * CENTRE_PX
  if ny <= 0 or nx <= 0:
    raise windows_lib.WindowError(f"{cube_path}: grid {h}x{w} is too small for the 7-px border")
  if not windows.valid.any():
    raise windows_lib.WindowError(
        f"{cube_path}: s2_reflectance: no valid window for --dates {dates} ({len(merged.s2_time)} merged S2 "
        "dates with any clear pixel; a window needs 5 on each side of its target)")
  from earthrep import checkpoint
  attrs = {"model_dir": job.model_dir, "model_config": json.dumps(checkpoint.read_model_config(model_dir)),
           "code_version": code_version(), "input_cube": job.cube_path, "dates_mode": dates,
           "path": "naive" if naive else "fast", "created": datetime.datetime.now(datetime.UTC).isoformat(),
           "output_grid": "input cube grid without its 7-pixel border (patch centres)",
           "Conventions": "CF-1.8"}
  if not (resume and store.exists()):
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(done_dir, ignore_errors=True)
    _template(job, cube, windows, attrs)
  else:   # the kept partial store must come from the same inputs
    import zarr
    stored = dict(zarr.open_group(store, mode="r").attrs)
    for key in ("model_dir", "input_cube", "dates_mode", "path"):
      if stored.get(key) != attrs[key]:
        raise EmbedError(f"{store}: attribute {key}: partial store has {stored.get(key)!r}, this run "
                         f"{attrs[key]!r}; rerun with --overwrite")
  done_dir.mkdir(exist_ok=True)
  finished = {p.name for p in done_dir.iterdir() if not p.name.endswith(".tmp")}
  todo = [t for t in _tiles(ny, nx, tile) if f"{t[0]}_{t[1]}" not in finished]
  log(f"{out_path}: {len(windows)} dates x {ny}x{nx} px, {len(todo)} of {len(_tiles(ny, nx, tile))} tiles to do")
  try:
    _run_tiles(job, todo, scheduler, log)
  except BaseException:
    if not resume:
      shutil.rmtree(store, ignore_errors=True)
      shutil.rmtree(done_dir, ignore_errors=True)
    else:
      log(f"{out_path}: failed; partial store kept at {store}, rerun with --resume")
    raise
  shutil.rmtree(done_dir, ignore_errors=True)
  if out_path.exists():
    shutil.rmtree(out_path) if out_path.is_dir() else out_path.unlink()
  os.replace(store, out_path)
  if geotiff:
    write_geotiffs(out_path, geotiff)
  if quicklook:
    quicklook = best_date(out_path) if quicklook == "auto" else quicklook
    write_quicklook(out_path, cube, quicklook, out_path.with_name(f"{out_path.name}.{quicklook}.png"))
  return out_path


def _run_tiles(job: Job, todo: list, scheduler: str | None, log) -> None:
  start, pixels, total = time.perf_counter(), 0, sum(t[2] * t[3] for t in todo)
  def progress(n_px: int, i: int):
    nonlocal pixels
    pixels += n_px
    rate = pixels / max(time.perf_counter() - start, 1e-9)
    log(f"tile {i}/{len(todo)}: {rate:,.0f} px/s, ETA {(total - pixels) / max(rate, 1e-9):,.0f} s")
  if scheduler:
    from distributed import Client, as_completed
    with Client(scheduler) as client:
      futures = [client.submit(run_tile, job, t, pure=False) for t in todo]
      for i, fut in enumerate(as_completed(futures), 1):
        progress(fut.result(), i)
    return
  for i, t in enumerate(todo, 1):
    progress(run_tile(job, t), i)


def write_geotiffs(store: Path, out_dir: str) -> list[Path]:
  """One 7-band COG (or tiled GeoTIFF with overviews) per date, each written atomically."""
  import rasterio
  import xarray as xr
  from affine import Affine
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  ds = xr.open_zarr(store, consolidated=False)
  gt = [float(v) for v in ds[GRID_MAPPING].attrs["GeoTransform"].split()]
  transform = Affine(gt[1], gt[2], gt[0], gt[4], gt[5], gt[3])
  cog = _has_driver("COG")
  written = []
  for i, t in enumerate(ds["time"].values):
    data = ds[FEATURES].isel(time=i).values.astype(np.float32)
    path = out / f"{np.datetime_as_string(t, unit='D')}.tif"
    tmp = path.with_name(f".{path.name}.tmp")
    profile = dict(driver="COG" if cog else "GTiff", width=data.shape[2], height=data.shape[1], count=7,
                   dtype="float32", crs=ds[GRID_MAPPING].attrs["crs_wkt"], transform=transform, nodata=np.nan,
                   compress="deflate")
    if not cog:
      profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(tmp, "w", **profile) as dst:
      dst.write(data)
      dst.descriptions = tuple(str(f) for f in ds["feature"].values)
      if not cog:
        dst.build_overviews([2, 4, 8])
    os.replace(tmp, path)
    written.append(path)
  return written


def best_date(store: Path) -> str:
  """The ISO date of the store's time step with the most valid embeddings (the quick-look's `auto`)."""
  import xarray as xr
  with xr.open_zarr(store, consolidated=False) as ds:
    counts = np.isfinite(ds[FEATURES].isel(feature=0).values).sum(axis=(1, 2))
    return str(ds["time"].values[int(np.argmax(counts))].astype("datetime64[D]"))


def _has_driver(name: str) -> bool:
  import rasterio
  with rasterio.Env() as env:
    return name in env.drivers()


def write_quicklook(store: Path, cube, date: str, png: Path) -> Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import xarray as xr
  ds = xr.open_zarr(store, consolidated=False)
  day = np.datetime64(date, "D")
  i = int(np.argmin(np.abs(ds["time"].values.astype("datetime64[D]") - day).astype(np.int64)))
  z_fyx = ds[FEATURES].isel(time=i).values
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
  axes[0].set_title(f"embedding PCA {np.datetime_as_string(ds['time'].values[i], unit='D')}")
  axes[1].imshow(tc)
  axes[1].set_title(f"S2 B04/B03/B02 {np.datetime_as_string(cube.s2_time[j], unit='D')}")
  for ax in axes:
    ax.axis("off")
  fig.tight_layout()
  tmp = png.with_name(f".{png.name}.tmp.png")
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, png)
  return png


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m earthrep.embed", description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True, help="fusion workdir or converted checkpoint")
  parser.add_argument("--cube", required=True, help="site cube (.zarr, site dir or GeoTIFF stack)")
  parser.add_argument("--out", required=True, help="output .zarr")
  parser.add_argument("--dates", default="clear", help="clear | daily | comma-separated ISO days")
  parser.add_argument("--geotiff", help="also write one COG per date into this directory")
  parser.add_argument("--batch", type=int, help="windows per batch (default: from available memory)")
  parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help="tile / chunk size in output pixels")
  group = parser.add_mutually_exclusive_group()
  group.add_argument("--resume", action="store_true")
  group.add_argument("--overwrite", action="store_true")
  parser.add_argument("--scheduler", help="address of a dask.distributed scheduler")
  parser.add_argument("--quicklook", help="ISO date of a PNG quick-look, or auto (the clearest date)")
  parser.add_argument("--naive", action="store_true", help="reference path: full forward per window")
  args = parser.parse_args(argv)
  from earthrep.checkpoint import CheckpointError
  from earthrep.cube import CubeError
  from earthrep.embed_core import ModelError
  try:
    embed_cube(args.model, args.cube, args.out, dates=args.dates, naive=args.naive, batch=args.batch,
               tile=args.tile, resume=args.resume, overwrite=args.overwrite, scheduler=args.scheduler,
               geotiff=args.geotiff, quicklook=args.quicklook)
  except (EmbedError, CubeError, ModelError, CheckpointError, windows_lib.WindowError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
