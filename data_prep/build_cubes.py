"""Builds one Sentinel-1/2 site cube per site from a STAC catalogue (`earthrep.schema` contract).

  python -m data_prep.build_cubes --sites SITES.csv --start 2019-01-01 --end 2020-12-31 --out DIR \
      [--size-px 90] [--catalog earth-search|planetary-computer|cdse|URL|catalog.json] [--s1-catalog ...] \
      [--scheduler ADDRESS | --workers N] [--resume | --overwrite] [--max-cloud 80] [--cloud-detector scl] \
      [--auth ...]

SITES.csv: site_id, lon, lat[, land_cover]. Writes `DIR/cubes/<site_id>/cube.zarr` atomically with
`earthrep.io.cube.write_zarr` and `DIR/build_report.json` (the settings; per site: status built / skipped /
failed with the reason, dates, dropped items), rewritten after every site so that an interrupted run
leaves its settings behind. A failing site is reported and the run goes on; the exit status is 1 when any
site failed, 2 for a bad set-up (arguments, sites file, catalogue, output folder), checked before anything
is written. A folder holding an earlier build is refused unless `--resume` (which skips sites whose cube
reads back with `earthrep.io.cube.read_cube`, and refuses when the earlier run used other settings) or
`--overwrite` (which rebuilds every site). Catalogue URLs are logged and reported with any credentials and
query values redacted (`earthrep.io.provenance.redact`).
Search, grid, scaling and cloud mask: `stac_catalogs` and `stac_load`. S1 comes from `--s1-catalog`
(default: the S2 catalogue where it has an RTC collection, else planetary-computer; `none` for none).
Dask: `--scheduler ADDRESS` uses that dask.distributed cluster; else `--workers N` starts a LocalCluster
(N processes, 2 threads each); the default `--workers 0` computes in-process with Dask's threaded
scheduler, which suits reading a few small tiles (GDAL releases the GIL). A site is computed as one
graph (one task per date and band), sites one after another.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from data_prep import stac_catalogs as cat
from data_prep import stac_load
from earthrep.errors import run_tool
from earthrep.io import atomic
from earthrep.io import cube as cube_lib
from earthrep.io import provenance
from earthrep.schema import CLOUD_CLEAR, PATCH_PX, SiteCube, SiteMeta

log = logging.getLogger("build_cubes")
PROG = "python -m data_prep.build_cubes"
REPORT = "build_report.json"
S1_MARGIN_DAYS = 7   # S1 is searched a week beyond the period (build_shards matches S1 within +-7 days)
MAX_SIZE_PX = 10_000  # 100 km: beyond that a "site" is a region; split it into sites
UTM_LATITUDES = (-80.0, 84.0)
# Settings that must be the same when a run is resumed (the report keys).
RESUME_KEYS = ("catalog", "s2_collection", "s1_catalog", "start", "end", "size_px", "max_cloud",
               "cloud_detector")


@dataclasses.dataclass(frozen=True)
class BuildConfig:
  start: str
  end: str
  size_px: int = 90
  max_cloud: float | None = 80.0
  detector: str = "scl"


def read_sites(path: str | Path) -> list[SiteMeta]:
  try:
    with open(path, newline="", encoding="utf-8") as f:
      rows = list(csv.DictReader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise cat.BuildError(f"--sites {path}: unreadable as a UTF-8 CSV file ({e})") from e
  sites, seen = [], set()
  for i, row in enumerate(rows, start=2):
    try:
      site = SiteMeta(str(row["site_id"]).strip(), float(row["lon"]), float(row["lat"]),
                      str(row.get("land_cover") or "").strip())
    except (KeyError, TypeError, ValueError) as e:
      raise cat.BuildError(f"{path}:{i}: expected columns site_id, lon, lat[, land_cover] ({e!r})") from e
    if not site.site_id or "/" in site.site_id or site.site_id.startswith(".") or site.site_id in seen:
      raise cat.BuildError(f"{path}:{i}: site_id {site.site_id!r} is empty, has a '/', starts with '.' or "
                           "is repeated")
    if not (-180.0 <= site.lon <= 180.0 and UTM_LATITUDES[0] <= site.lat <= UTM_LATITUDES[1]):
      raise cat.BuildError(f"{path}:{i}: lon {site.lon:g}, lat {site.lat:g}: expected degrees with lon in "
                           f"[-180, 180] and lat in [{UTM_LATITUDES[0]:g}, {UTM_LATITUDES[1]:g}] (UTM zones)")
    seen.add(site.site_id)
    sites.append(site)
  if not sites:
    raise cat.BuildError(f"--sites {path}: no sites")
  return sites


def _shift(day: str, days: int) -> str:
  return str(np.datetime64(day[:10], "D") + np.timedelta64(days, "D"))


def build_site(site: SiteMeta, config: BuildConfig, s2_search: cat.Searcher, s1_search: cat.Searcher | None
               ) -> tuple[SiteCube, dict[str, Any]]:
  """Searches, loads and computes one site's cube; raises BuildError with the reason."""
  import dask
  grid = stac_load.site_grid(site.lon, site.lat, config.size_px)
  bbox = grid.bbox_lonlat()
  collection = s2_search.spec.s2_collection
  s2_items = s2_search.search(collection, bbox, config.start, config.end, config.max_cloud)
  if not s2_items:
    raise cat.BuildError(f"no S2 L2A items in {s2_search.spec.name} collection {collection!r} for bbox "
                         f"{tuple(round(v, 5) for v in bbox)} between {config.start} and {config.end} "
                         f"(eo:cloud_cover <= {config.max_cloud})")
  s2 = stac_load.load_s2(s2_items, grid, site.lon, stac_load.DETECTORS[config.detector])
  s1 = stac_load.empty_s1(grid)
  if s1_search is not None and s1_search.spec.s1_collection:
    s1_items = s1_search.search(s1_search.spec.s1_collection, bbox, _shift(config.start, -S1_MARGIN_DAYS),
                                _shift(config.end, S1_MARGIN_DAYS))
    s1 = stac_load.load_s1(s1_items, grid, site.lon) if s1_items else s1
  reflectance, cloud, gamma0 = dask.compute(s2.s2_reflectance.data, s2.cloud_mask.data, s1.s1_gamma0.data)
  clear = (cloud == CLOUD_CLEAR).reshape(len(cloud), -1).any(axis=1)
  if not clear.any():
    raise cat.BuildError(f"no clear S2 scene: none of {len(cloud)} dates has a clear pixel in the site box")
  cube = SiteCube(site, grid.crs, grid.transform, np.asarray(reflectance, np.float32), np.asarray(cloud, np.uint8),
                  s2.time, np.asarray(gamma0, np.float32), s1.time, s1.orbit_direction, s1.relative_orbit)
  info = {"s2_items": len(s2_items), "s2_dates": int(len(s2.time)), "s2_dates_with_clear_pixels": int(clear.sum()),
          "s1_dates": int(len(s1.time)), "dropped_s2_items": s2.dropped_items, "dropped_s1_items": s1.dropped_items,
          "crs": grid.crs, "transform": list(grid.transform)}
  return cube, info


def _finished(site_dir: Path) -> bool:
  try:
    cube_lib.read_cube(site_dir)
    return True
  except (cube_lib.CubeError, OSError):
    return False


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int, auth: str) -> Iterator[Any]:
  """The distributed Client to compute on (None: in-process threaded scheduler), with GDAL options set."""
  import odc.stac
  options, environment = cat.gdal_auth_options(auth), cat.auth_environment(auth)
  os.environ.update(environment)   # this process only; never written anywhere
  if scheduler is None and workers <= 0:
    odc.stac.configure_rio(cloud_defaults=True, **options)
    yield None
    return
  import distributed
  cluster = None
  if scheduler is None:
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=2, processes=True,
                                       dashboard_address=":0")
  try:
    client = distributed.Client(scheduler or cluster)
  except (OSError, TimeoutError) as e:   # an unreachable scheduler is a set-up error, not a site failure
    if cluster is not None:
      cluster.close()
    raise cat.BuildError(f"--scheduler {provenance.redact(str(scheduler))}: cannot connect "
                         f"({provenance.redact(str(e))})") from None
  try:
    odc.stac.configure_rio(cloud_defaults=True, client=client, **options)
    if environment:
      client.run(os.environ.update, environment)   # sent to the workers in memory, as configure_rio does
    yield client
  finally:
    client.close()
    if cluster is not None:
      cluster.close()


def check_config(config: BuildConfig, workers: int = 0) -> None:
  """Raises BuildError naming the argument unless every setting is valid."""
  days = {}
  for name, value in (("--start", config.start), ("--end", config.end)):
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(value)):
      raise cat.BuildError(f"{name} {value!r}: expected a day as YYYY-MM-DD")
    try:
      days[name] = np.datetime64(value, "D")
    except ValueError as e:
      raise cat.BuildError(f"{name} {value!r}: not a calendar day ({e})") from None
  if days["--end"] < days["--start"]:
    raise cat.BuildError(f"--end {config.end} is before --start {config.start}")
  if not PATCH_PX <= config.size_px <= MAX_SIZE_PX:
    raise cat.BuildError(f"--size-px {config.size_px}: expected {PATCH_PX} to {MAX_SIZE_PX} pixels (10 m)")
  if config.max_cloud is not None and not 0.0 <= config.max_cloud <= 100.0:
    raise cat.BuildError(f"--max-cloud {config.max_cloud:g}: expected a percentage in [0, 100]")
  if config.detector not in stac_load.DETECTORS:
    raise cat.BuildError(f"--cloud-detector {config.detector!r}: expected one of {sorted(stac_load.DETECTORS)}")
  if workers < 0:
    raise cat.BuildError(f"--workers {workers}: expected 0 (threaded scheduler) or a number of processes")


def _check_output(out: Path, sites: Sequence[SiteMeta], settings: dict[str, Any], resume: bool,
                  overwrite: bool) -> dict[str, Any] | None:
  """Checks OUT before anything is written; returns the earlier report when resuming."""
  atomic.check_writable(out)
  if out.exists() and not out.is_dir():
    raise cat.BuildError(f"--out {out}: is a file; expected a folder")
  report_path = out / REPORT
  existing = [s.site_id for s in sites if (out / "cubes" / s.site_id).exists()]
  if not (report_path.exists() or existing) or overwrite:
    return None
  if not resume:
    what = [REPORT] if report_path.exists() else []
    what += [f"cubes of {', '.join(existing[:3])}{', ...' if len(existing) > 3 else ''}"] if existing else []
    raise cat.BuildError(f"--out {out}: holds an earlier build ({' and '.join(what)}); pass --resume to finish "
                         "it or --overwrite to rebuild every site")
  try:
    earlier = json.loads(report_path.read_text())
  except FileNotFoundError:
    raise cat.BuildError(f"--out {out}: has cubes but no {REPORT}, so the settings that built them are "
                         "unknown; pass --overwrite to rebuild every site") from None
  except (OSError, ValueError) as e:
    raise cat.BuildError(f"{report_path}: unreadable ({e}); pass --overwrite to rebuild every site") from None
  changed = [f"{k} {earlier.get(k)!r} -> {settings[k]!r}" for k in RESUME_KEYS if earlier.get(k) != settings[k]]
  if changed:
    raise cat.BuildError(f"--resume {out}: the earlier run used other settings ({'; '.join(changed)}); "
                         "rerun it with those, or pass --overwrite to rebuild every site")
  return earlier


def _write_report(out: Path, report: dict[str, Any]) -> None:
  atomic.write_text(out / REPORT, json.dumps(provenance.redact_tree(report), indent=2, default=str) + "\n")


def run(sites: Sequence[SiteMeta], out: str | Path, config: BuildConfig, catalog: str, *,
        s1_catalog: str | None = None, auth: str | None = None, scheduler: str | None = None, workers: int = 0,
        resume: bool = False, s2_collection: str | None = None, overwrite: bool = False) -> dict[str, Any]:
  """Builds every site; returns (and writes to OUT/build_report.json) the report."""
  check_config(config, workers)
  if resume and overwrite:
    raise cat.BuildError("--resume and --overwrite: choose one")
  spec = cat.resolve_catalog(catalog, s2_collection=s2_collection)
  auth = auth or spec.auth
  cat.gdal_auth_options(auth)   # missing credentials stop the run before anything is written
  s1_name = s1_catalog or cat.default_s1_catalog(spec)
  s1_spec = None if s1_name == "none" else cat.resolve_catalog(s1_name)
  out = Path(out)
  report: dict[str, Any] = {"catalog": spec.name, "s2_collection": spec.s2_collection,
                            "s1_catalog": s1_spec.name if s1_spec else None, "start": config.start,
                            "end": config.end, "size_px": config.size_px, "max_cloud": config.max_cloud,
                            "cloud_detector": config.detector}
  report = provenance.redact_tree(report)
  _check_output(out, sites, report, resume, overwrite)
  log.info("S2 from %s (%s), S1 from %s; credentials: %s", spec.name, spec.s2_collection,
           s1_spec.name if s1_spec else "none", cat.describe_auth(auth))
  t_run = time.time()
  with dask_client(scheduler, workers, auth):
    s2_search = cat.Searcher(spec, auth)
    s1_search = None
    if s1_spec is not None:
      s1_search = s2_search if s1_spec == spec else cat.Searcher(s1_spec)
    (out / "cubes").mkdir(parents=True, exist_ok=True)
    report |= {"status": "running", "sites": {}}
    _write_report(out, report)
    for site in sites:
      site_dir = out / "cubes" / site.site_id
      t0 = time.time()
      if resume and _finished(site_dir):
        report["sites"][site.site_id] = {"status": "skipped", "reason": "finished cube (--resume)"}
        log.info("%s: skipped (finished)", site.site_id)
        continue
      try:
        cube, info = build_site(site, config, s2_search, s1_search)
        cube_lib.write_zarr(cube, site_dir, overwrite=True)
        report["sites"][site.site_id] = {"status": "built", **info, "seconds": round(time.time() - t0, 2)}
        log.info("%s: built (%d S2 dates, %d S1 dates) in %.1f s", site.site_id, info["s2_dates"],
                 info["s1_dates"], time.time() - t0)
      except Exception as e:   # one site's failure (bad items, unreadable asset, ...) must not stop the run
        reason = provenance.redact(f"{type(e).__name__}: {e}")
        report["sites"][site.site_id] = {"status": "failed", "reason": reason}
        log.warning("%s: failed: %s", site.site_id, reason)
      _write_report(out, report)
  statuses = [s["status"] for s in report["sites"].values()]
  report["summary"] = {k: statuses.count(k) for k in ("built", "skipped", "failed")}
  report["status"] = "finished"
  report["seconds"] = round(time.time() - t_run, 2)
  _write_report(out, report)
  return report


def _main(argv: Sequence[str] | None) -> int:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
  parser.add_argument("--sites", required=True, help="CSV with site_id, lon, lat[, land_cover]")
  parser.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
  parser.add_argument("--end", required=True, help="last day (inclusive), YYYY-MM-DD")
  parser.add_argument("--out", required=True, help="output dir: OUT/cubes/<site_id>/cube.zarr")
  parser.add_argument("--size-px", type=int, default=90)
  parser.add_argument("--catalog", default="earth-search",
                      help=f"one of {sorted(cat.CATALOGS)}, a STAC API URL or a local catalog.json")
  parser.add_argument("--s2-collection", default=None, help="override the catalogue's S2 L2A collection id")
  parser.add_argument("--s1-catalog", default=None, help="catalogue for S1 RTC (default: see module doc; 'none')")
  parser.add_argument("--auth", default=None, choices=cat.AUTH_MODES, help="default: the catalogue's own")
  parser.add_argument("--scheduler", default=None, help="dask.distributed scheduler address")
  parser.add_argument("--workers", type=int, default=0, help="LocalCluster processes (0: threaded scheduler)")
  group = parser.add_mutually_exclusive_group()
  group.add_argument("--resume", action="store_true", help="skip sites whose cube is finished")
  group.add_argument("--overwrite", action="store_true", help="rebuild every site of an earlier build in --out")
  parser.add_argument("--max-cloud", type=float, default=80.0, help="max eo:cloud_cover of S2 items (%%)")
  parser.add_argument("--cloud-detector", default="scl", choices=sorted(stac_load.DETECTORS))
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
  logging.getLogger("distributed").setLevel(logging.WARNING)
  provenance.redact_logs()   # catalogue URLs and signed asset hrefs reach libraries' log lines too
  report = run(read_sites(args.sites), args.out,
               BuildConfig(args.start, args.end, args.size_px, args.max_cloud, args.cloud_detector),
               args.catalog, s1_catalog=args.s1_catalog, auth=args.auth, scheduler=args.scheduler,
               workers=args.workers, resume=args.resume, s2_collection=args.s2_collection,
               overwrite=args.overwrite)
  summary = report["summary"]
  log.info("done in %.1f s: %d built, %d skipped, %d failed; report %s", report["seconds"], summary["built"],
           summary["skipped"], summary["failed"], Path(args.out) / REPORT)
  for site_id, entry in report["sites"].items():
    if entry["status"] == "failed":
      log.info("  %s failed: %s", site_id, entry["reason"])
  return 1 if summary["failed"] else 0


def main(argv: Sequence[str] | None = None) -> int:
  return run_tool(_main, argv, PROG)


if __name__ == "__main__":
  sys.exit(main())
