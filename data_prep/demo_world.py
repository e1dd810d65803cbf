"""A deterministic synthetic world of flux-tower sites in the files a real pipeline writes.

`python -m data_prep.demo_world --out DIR --seed N [--size 64] [--sites 6] [--start 2019-01-01 --days 730]`
writes `DIR/sites.csv` (site_id, lon, lat, land_cover, utm_epsg, flux_file relative to DIR), one Sentinel
cube per site at `DIR/cubes/<site_id>/cube.zarr` (via `earthrep.io.cube.write_zarr`), daily FLUXNET2015
FULLSET files under `DIR/flux/` and `DIR/world.json` (the arguments). Sites sit at plausible European
places with their UTM grid; the tower is the centre pixel of its cube and the land cover of the tower
pixel is the site's. Each site combines `demo_landscape` (parcels, texture), `demo_weather` (meteorology,
soil water, LUE GPP, flux file), `demo_phenology` (daily vegetation state) and `demo_sensors` (S2, S1);
every random stream is seeded from (seed, site id, component), so the same seed gives bitwise identical
files. data_prep/README.md documents every modelling choice. `make_site_cube` builds one cube in memory.
Arguments are checked before anything is written; the world is built in `DIR/.world.partial` and moved into
place when complete. A folder that already holds a world's files is replaced only with `--overwrite`
(which also removes demo sites, `XX-*`, of the old world that the new one does not have).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from data_prep import demo_landscape, demo_phenology, demo_sensors, demo_weather
from earthrep.errors import EarthrepError, run_tool
from earthrep.io import atomic
from earthrep.schema import PATCH_PX, PIXEL_SIZE_M, SiteCube, SiteMeta

S2_REVISIT_DAYS = 5
S1_REPEAT_DAYS = 12               # per satellite and relative orbit
S1B_LAST_DAY = np.datetime64("2021-12-23")
S2_SOLAR_HOUR, S1_ASCENDING_SOLAR_HOUR, S1_DESCENDING_SOLAR_HOUR = 11.0, 18.08, 6.17
FOOTPRINT_SIGMA_PX = 1.5
LAND_COVER_CODES = {"CRO": "Cr", "DBF": "Db", "ENF": "En", "GRA": "Gr", "MF": "Mf"}
# (lon, lat, land cover): regions where such towers stand; the default 6 sites are the first six.
SITE_TEMPLATES: tuple[tuple[float, float, str], ...] = (
    (10.90, 51.10, "CRO"),   # Thuringian Basin, DE
    (2.78, 48.48, "DBF"),    # Ile-de-France, FR
    (17.48, 60.09, "ENF"),   # Uppland, SE
    (8.54, 47.21, "GRA"),    # Swiss Plateau, CH
    (4.52, 51.31, "MF"),     # Campine, BE
    (1.24, 43.55, "CRO"),    # Garonne valley, FR
    (16.95, 49.00, "DBF"),   # South Moravia, CZ
    (13.55, 49.05, "ENF"),   # Bavarian Forest, DE
    (6.45, 50.50, "GRA"),    # Eifel, DE
    (23.80, 56.50, "CRO"),   # Zemgale, LV
)
LANDSCAPE, WEATHER, PHENOLOGY, CLOUDS, S2, S1, FLUX, SCHEDULE = range(1, 9)


@dataclasses.dataclass(frozen=True)
class SiteSpec:
  site_id: str
  lon: float
  lat: float
  land_cover: str

  @property
  def utm_epsg(self) -> int:
    return 32600 + int((self.lon + 180.0) // 6.0) + 1


@dataclasses.dataclass
class SiteSimulation:
  """One simulated site: the cube plus the truth behind it (for tests, diagnostics and evaluation).

  The truth methods (noise-free, cloud-free S2 reflectance and speckle-free S1 gamma0 on any day, per-pixel
  land-cover kind, parcel, green cover, vegetation water content, surface soil moisture) are for evaluation
  only: nothing of them is written into cubes or shards (data_prep/README.md, "Truth for evaluation").
  `day_index` arguments index `weather.dates` (`day_index(dates)` converts). `cube` is None when simulated
  with `sensors=False`."""
  spec: SiteSpec
  cube: SiteCube | None
  landscape: demo_landscape.Landscape
  weather: demo_weather.Weather       # daily, full calendar years around the cube period
  gpp: np.ndarray                     # (D,) noise-free tower GPP, gC m-2 d-1
  fapar: np.ndarray                   # (D,) of the tower footprint
  flux: dict[str, np.ndarray]         # FLUXNET columns
  s2_day_index: np.ndarray            # (t2,) into weather.dates
  s1_day_index: np.ndarray            # (t1,)
  shadow_offset_px: np.ndarray        # (t2, 2) row, col displacement of shadows from their clouds
  s1_incidence_deg: np.ndarray        # (t1,)
  unit_state: np.ndarray | None = None        # (D, U, C) daily state of the landscape's units
  s1_direction: np.ndarray | None = None      # (t1,) "ascending" / "descending"
  s1_wind: np.ndarray | None = None           # (t1,) open-water roughness of each acquisition (0..1)
  s1_built_db: np.ndarray | None = None       # (h, w) built-up double-bounce level (dB at 37 deg)

  KIND_NAMES = ("crop", "grass", "deciduous", "evergreen", "water", "urban", "road")   # demo_landscape.KINDS

  @property
  def flux_file(self) -> str:
    years = self.weather.dates.astype("datetime64[Y]").astype(int) + 1970
    return demo_weather.flux_file_name(self.spec.site_id, int(years[0]), int(years[-1]))

  @property
  def land_cover_kind(self) -> np.ndarray:
    """(h, w) int8 index into KIND_NAMES of every pixel."""
    return self.landscape.pixel_kind

  @property
  def parcel_id(self) -> np.ndarray:
    """(h, w) int32 parcel of every pixel (a road is one parcel of its own)."""
    return self.landscape.parcel_map

  def day_index(self, days: Sequence | np.ndarray) -> np.ndarray:
    """Calendar days (datetime64 or ISO strings) -> indices into `weather.dates`; raises outside them."""
    index = (np.asarray(days, "datetime64[D]") - self.weather.dates[0]).astype(np.int64)
    if index.size and (index.min() < 0 or index.max() >= len(self.weather.dates)):
      raise ValueError(f"days outside the simulated {self.weather.dates[0]}..{self.weather.dates[-1]}")
    return index

  def pixel_state(self, day_index: np.ndarray) -> np.ndarray:
    """(n, h, w, C) per-pixel vegetation state (channels of `demo_phenology`) on the days."""
    return demo_phenology.pixel_states(self.unit_state, self.landscape, np.asarray(day_index))

  def green_cover(self, day_index: np.ndarray) -> np.ndarray:
    """(n, h, w) green-leaf cover fraction (fAPAR / 0.95 of a pixel)."""
    return self.pixel_state(day_index)[..., demo_phenology.GREEN]

  def vegetation_water_content(self, day_index: np.ndarray) -> np.ndarray:
    """(n, h, w) kg m-2."""
    return self.pixel_state(day_index)[..., demo_phenology.VWC]

  def surface_soil_moisture(self, day_index: np.ndarray) -> np.ndarray:
    """(n,) m3 m-3 of the 0-5 cm layer: one value per site and day (the weather is the site's)."""
    return self.weather.surface_soil_moisture[np.asarray(day_index)]

  def truth_s2(self, day_index: np.ndarray) -> np.ndarray:
    """(n, 10, h, w) noise-free, cloud-free surface reflectance at 11:00 solar time on the days."""
    day_index = np.asarray(day_index)
    wetness = np.clip((self.weather.surface_soil_moisture[day_index] - 0.1) / 0.3, 0, 1)
    return demo_sensors.noise_free_s2(demo_sensors.surface_reflectance(self.pixel_state(day_index),
                                                                       self.landscape, wetness))

  def truth_s1(self, day_index: np.ndarray, direction: str | np.ndarray) -> np.ndarray:
    """(n, 2, h, w) speckle-free gamma0 (linear) on the days, seen by the site's ascending or descending
    track (a str, or one per day); at the acquisitions (`s1_day_index`, `s1_direction`) it is exactly the
    cube's S1 before speckle. Other days take the track's incidence and a mean open-water roughness 0.25."""
    day_index = np.asarray(day_index).reshape(-1)
    return demo_sensors.s1_truth_on_days(
        self.pixel_state(day_index), self.landscape, self.weather, day_index,
        np.broadcast_to(np.asarray(direction), day_index.shape), self.s1_day_index, self.s1_direction,
        self.s1_incidence_deg, self.s1_wind, self.s1_built_db)


def _rng(seed: int, site_id: str, component: int) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(site_id.encode()), component])


def site_specs(seed: int, n_sites: int) -> list[SiteSpec]:
  """`n_sites` towers cycling through the templates; later rounds move ~1.3 deg away; small seed jitter."""
  rng = np.random.default_rng([seed, 0, 0])
  counts: dict[str, int] = {}
  specs = []
  for i in range(n_sites):
    lon, lat, land_cover = SITE_TEMPLATES[i % len(SITE_TEMPLATES)]
    ring = i // len(SITE_TEMPLATES)
    lon, lat = lon + 1.3 * ring * math.cos(ring), lat + 0.9 * ring * math.sin(ring)
    counts[land_cover] = counts.get(land_cover, 0) + 1
    site_id = f"XX-{LAND_COVER_CODES[land_cover]}{counts[land_cover]}"
    specs.append(SiteSpec(site_id, round(lon + rng.uniform(-0.03, 0.03), 5),
                          round(lat + rng.uniform(-0.03, 0.03), 5), land_cover))
  return specs


def utm_transform(spec: SiteSpec, size: int) -> tuple[str, tuple[float, float, float, float, float, float]]:
  """CRS and the 10 m north-up affine placing the tower inside pixel (size // 2, size // 2)."""
  import rasterio.warp   # imported here: only needed for the grid, and slow to import
  crs = f"EPSG:{spec.utm_epsg}"
  xs, ys = rasterio.warp.transform("EPSG:4326", crs, [spec.lon], [spec.lat])
  centre = size // 2
  left = math.floor(xs[0] / PIXEL_SIZE_M) * PIXEL_SIZE_M - centre * PIXEL_SIZE_M
  top = (math.floor(ys[0] / PIXEL_SIZE_M) + 1) * PIXEL_SIZE_M + centre * PIXEL_SIZE_M
  return crs, (PIXEL_SIZE_M, 0.0, float(left), 0.0, -PIXEL_SIZE_M, float(top))


def _utc(days: np.ndarray, solar_hour: float, lon: float, jitter_s: np.ndarray) -> np.ndarray:
  seconds = np.rint((solar_hour - lon / 15.0) * 3600.0 + jitter_s).astype(np.int64)
  return days.astype("datetime64[D]").astype("datetime64[ns]") + seconds.astype("timedelta64[s]")


def s1_schedule(rng: np.random.Generator, start: np.datetime64, n_days: int,
                lon: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Ascending and descending tracks, 6-day repeat with S1A + S1B (until S1B failed), 12-day otherwise.

  One of the two tracks of a site is acquired by S1A only (12 days), as in the observation scenario.
  Returns (times (t1,) ns, day offsets from start, direction (t1,) str, relative orbit, incidence deg).
  """
  phases = rng.choice(S1_REPEAT_DAYS, 2, replace=False)
  orbits = rng.choice(np.arange(1, 176), 2, replace=False)
  incidence = rng.uniform(30.0, 45.0, 2)
  s1a_only = rng.integers(2)
  day = np.arange(n_days)
  dates = start + day.astype("timedelta64[D]")
  rows = []
  for track, (direction, hour) in enumerate((("ascending", S1_ASCENDING_SOLAR_HOUR),
                                             ("descending", S1_DESCENDING_SOLAR_HOUR))):
    cycle = (day - phases[track]) % S1_REPEAT_DAYS
    take = (cycle == 0) | ((cycle == S1_REPEAT_DAYS // 2) & (dates < S1B_LAST_DAY) & (track != s1a_only))
    times = _utc(dates[take], hour, lon, rng.normal(0, 5, int(take.sum())))
    rows += [(t, d, direction, orbits[track], incidence[track]) for t, d in zip(times, day[take])]
  rows.sort(key=lambda r: r[0])
  if not rows:
    return (np.zeros(0, "datetime64[ns]"), np.zeros(0, int), np.zeros(0, "<U10"), np.zeros(0, np.int16),
            np.zeros(0))
  times, offsets, directions, rel_orbits, inc = zip(*rows)
  return (np.array(times, "datetime64[ns]"), np.array(offsets), np.array(directions, dtype=str),
          np.array(rel_orbits, np.int16), np.array(inc, np.float64))


def _doy(days: np.ndarray) -> np.ndarray:
  return (days - days.astype("datetime64[Y]")).astype(int) + 1.0


def simulate_site(spec: SiteSpec, seed: int, size: int = 64, start: str = "2019-01-01",
                  days: int = 730, sensors: bool = True) -> SiteSimulation:
  """Simulates one site for `days` days from `start` (cube) and the full calendar years around it (flux).

  `sensors=False` skips the S2 and S1 images (cube None; everything else, truth included, is the same)."""
  if days < 1:
    raise ValueError(f"days must be >= 1, got {days}")
  start_day = np.datetime64(start, "D")
  last_day = start_day + np.timedelta64(days - 1, "D")
  first_day = start_day.astype("datetime64[Y]").astype("datetime64[D]")
  n_calendar = int(((last_day.astype("datetime64[Y]") + np.timedelta64(1, "Y")).astype("datetime64[D]")
                    - first_day).astype(int))
  offset = int((start_day - first_day).astype(int))
  landscape = demo_landscape.make_landscape(_rng(seed, spec.site_id, LANDSCAPE), size, spec.land_cover)
  weather = demo_weather.make_weather(_rng(seed, spec.site_id, WEATHER), spec.lat, spec.lon, first_day, n_calendar)
  units = demo_phenology.unit_states(_rng(seed, spec.site_id, PHENOLOGY), landscape, first_day, n_calendar,
                                     spec.lat, weather.spring_anomaly_c, weather.water_supply)
  # Tower GPP from the footprint's daily vegetation state.
  window = landscape.footprint()
  footprint = demo_phenology.pixel_states(units, landscape, np.arange(n_calendar), window)
  r = np.arange(-demo_landscape.FOOTPRINT_RADIUS_PX, demo_landscape.FOOTPRINT_RADIUS_PX + 1)
  weights = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * FOOTPRINT_SIGMA_PX ** 2))
  weights /= weights.sum()
  green = np.einsum("dhw,hw->d", footprint[..., demo_phenology.GREEN], weights)
  lue = np.einsum("dhw,hw->d", footprint[..., demo_phenology.GREEN] * footprint[..., demo_phenology.LUE],
                  weights) / np.maximum(green, 1e-6)
  fapar = np.clip(0.95 * green, 0.0, 0.95)
  gpp = demo_weather.light_use_efficiency_gpp(weather, fapar, lue, spec.land_cover)
  flux = demo_weather.flux_table(_rng(seed, spec.site_id, FLUX), weather, gpp, spec.land_cover)
  # Sentinel-2: every 5 days from start.
  schedule_rng = _rng(seed, spec.site_id, SCHEDULE)
  s2_offsets = np.arange(0, days, S2_REVISIT_DAYS)
  s2_days = start_day + s2_offsets.astype("timedelta64[D]")
  s2_time = _utc(s2_days, S2_SOLAR_HOUR, spec.lon, schedule_rng.normal(0, 20, s2_offsets.size))
  s2_index = offset + s2_offsets
  s1_time, s1_offsets, direction, rel_orbit, incidence = s1_schedule(schedule_rng, start_day, days, spec.lon)
  s1_index = offset + s1_offsets
  s1_rng = _rng(seed, spec.site_id, S1)
  wind = np.minimum(s1_rng.exponential(0.25, s1_index.size), 1.0)
  built_db = demo_sensors.built_up_db(s1_rng, landscape)
  truth = dict(unit_state=units, s1_direction=direction, s1_wind=wind, s1_built_db=built_db)
  if not sensors:
    return SiteSimulation(spec, None, landscape, weather, gpp, fapar, flux, s2_index, s1_index,
                          np.zeros((len(s2_index), 2), np.int64), incidence, **truth)
  states = demo_phenology.pixel_states(units, landscape, s2_index)
  soil_wetness = np.clip((weather.surface_soil_moisture[s2_index] - 0.1) / 0.3, 0, 1)
  surface = demo_sensors.surface_reflectance(states, landscape, soil_wetness)
  del states
  cloud_rng = _rng(seed, spec.site_id, CLOUDS)
  shadow_offset = demo_sensors.shadow_offsets_px(cloud_rng, spec.lat, _doy(s2_days))
  opacity, density, shadow = demo_sensors.cloud_fields(cloud_rng, weather.cloudiness[s2_index], size, shadow_offset)
  cloud_mask = demo_sensors.cloud_mask_classes(opacity, density, shadow)
  s2 = demo_sensors.s2_reflectance(_rng(seed, spec.site_id, S2), surface, opacity, density, shadow)
  del surface, opacity, density, shadow
  # Sentinel-1: morning (descending) passes see the soil before that day's rain.
  before_rain = np.maximum(s1_index - (direction == "descending"), 0)
  states = demo_phenology.pixel_states(units, landscape, s1_index)
  wet_canopy = (weather.precip[s1_index] > 1.0) | (weather.precip[np.maximum(s1_index - 1, 0)] > 1.0)
  s1 = demo_sensors.s1_gamma0(s1_rng, states, landscape, incidence, weather.surface_soil_moisture[before_rain],
                              weather.ta[s1_index] < -1.0, wet_canopy.astype(np.float32), wind, built_db)
  crs, transform = utm_transform(spec, size)
  cube = SiteCube(SiteMeta(spec.site_id, spec.lon, spec.lat, spec.land_cover), crs, transform, s2, cloud_mask,
                  s2_time, s1, s1_time, direction, rel_orbit)
  return SiteSimulation(spec, cube, landscape, weather, gpp, fapar, flux, s2_index, s1_index, shadow_offset,
                        incidence, **truth)


def make_site_cube(seed: int, size: int = 24, days: int = 120, land_cover: str = "CRO",
                   start: str = "2019-01-01") -> SiteCube:
  """One site's cube in memory (no disk), for tests of other modules; tower land cover `land_cover`."""
  templates = [t for t in SITE_TEMPLATES if t[2] == land_cover]
  if not templates:
    raise ValueError(f"land cover {land_cover!r}: expected one of {sorted(LAND_COVER_CODES)}")
  lon, lat, _ = templates[0]
  spec = SiteSpec(f"XX-{LAND_COVER_CODES[land_cover]}1", lon, lat, land_cover)
  return simulate_site(spec, seed, size, start, days).cube


def evaluation_truth(world_dir: str | Path):
  """The truth provider of a world written by `make_world` (`earthrep.evaluation.truth.TruthProvider`):
  `provider(site_id, cube)` re-simulates the site from `world.json` (no sensors, ~0.05 s) and returns its
  `SiteTruth` (daily GPP and fAPAR, kinds, parcels, per-pixel green cover, VWC, soil moisture); raises
  TruthError if the cube's grid is not the simulated one. Truth is never written into cubes or shards."""
  from earthrep.evaluation.truth import SiteTruth, TruthError   # evaluation only; data_prep builds on earthrep
  world_dir = Path(world_dir)
  world = json.loads((world_dir / "world.json").read_text())
  args = {k: world[k] for k in ("size", "start", "days")}
  specs = {spec.site_id: spec for spec in site_specs(int(world["seed"]), int(world["sites"]))}

  def provider(site_id: str, cube: SiteCube) -> SiteTruth:
    if site_id not in specs:
      raise TruthError(f"{world_dir / 'world.json'}: sites: {site_id} is not a site of this world")
    sim = simulate_site(specs[site_id], int(world["seed"]), sensors=False, **args)
    if tuple(cube.transform) != utm_transform(sim.spec, int(args["size"]))[1]:
      raise TruthError(f"{world_dir / 'world.json'}: size: the cube of {site_id} is not on the simulated grid")

    def pixel_values(days: np.ndarray) -> dict[str, np.ndarray]:
      index = sim.day_index(days)
      state = sim.pixel_state(index)
      moisture = sim.surface_soil_moisture(index)[:, None, None]
      return {"green_cover": state[..., demo_phenology.GREEN],
              "vegetation_water_content": state[..., demo_phenology.VWC],
              "surface_soil_moisture": np.broadcast_to(moisture, state.shape[:3]).astype(np.float32)}

    import pandas as pd
    return SiteTruth(site_id, days=pd.DatetimeIndex(sim.weather.dates), gpp=sim.gpp, fapar=sim.fapar,
                     kind=sim.land_cover_kind.astype(np.int64), kind_names=SiteSimulation.KIND_NAMES,
                     parcel=sim.parcel_id.astype(np.int64), pixel_values=pixel_values,
                     flux_gpp=np.where(sim.flux["GPP_NT_VUT_REF"] == demo_weather.MISSING, np.nan,
                                       sim.flux["GPP_NT_VUT_REF"]).astype(np.float64),
                     source=f"data_prep.demo_world seed {world['seed']}, size {args['size']}")
  return provider


class WorldError(EarthrepError):
  """A bad argument of the demo world, or an output folder that already holds one."""


PROG = "python -m data_prep.demo_world"
MIN_SIZE = PATCH_PX                # a smaller cube yields no training patch and no feature-cube pixel
BYTES_PER_PX_DAY = 0.5e9 / (64 * 64 * 730)   # peak memory of one site (measured: < 0.5 GB at 64 px, 730 days)


def check_arguments(seed: int, size: int, sites: int, start: str, days: int) -> None:
  """Raises WorldError naming the argument unless the world can be generated."""
  if seed < 0:
    raise WorldError(f"--seed {seed}: expected a non-negative integer (numpy seeds)")
  if sites < 1:
    raise WorldError(f"--sites {sites}: expected at least 1 site")
  if size < MIN_SIZE:
    raise WorldError(f"--size {size}: expected at least {MIN_SIZE} px (one {PATCH_PX}x{PATCH_PX} patch)")
  if days < 1:
    raise WorldError(f"--days {days}: expected at least 1 day")
  if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(start)):
    raise WorldError(f"--start {start!r}: expected a day as YYYY-MM-DD")
  try:
    np.datetime64(start, "D")
  except ValueError as e:
    raise WorldError(f"--start {start!r}: not a calendar day ({e})") from None
  need = BYTES_PER_PX_DAY * size * size * days
  try:
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    have = None
  if have and need > have:
    raise WorldError(f"--size {size} --days {days}: one site needs about {need / 1e9:.0f} GB of memory, this "
                     f"machine has {have / 1e9:.0f} GB; choose a smaller --size or fewer --days")


def _world_files(out_dir: Path, site_ids: list[str], flux_files: list[str]) -> tuple[list[Path], list[Path]]:
  """(paths this world writes that exist already, demo files (`XX-*`) of an earlier world it would drop)."""
  ours = [out_dir / "sites.csv", out_dir / "world.json"]
  ours += [out_dir / "cubes" / s for s in site_ids] + [out_dir / "flux" / f for f in flux_files]
  stale = [p for p in (out_dir / "cubes").glob("XX-*") if p.name not in site_ids]
  stale += [p for p in (out_dir / "flux").glob("FLX_XX-*_FLUXNET2015_FULLSET_DD_*.csv")
            if p.name not in flux_files]
  return [p for p in ours if p.exists() or p.is_symlink()], sorted(stale)


def make_world(out_dir: str | Path, seed: int, size: int = 64, sites: int = 6, start: str = "2019-01-01",
               days: int = 730, *, overwrite: bool = False) -> list[str]:
  """Writes the world described in the module docstring; returns the site ids.

  Raises WorldError before writing anything if an argument is out of range, `out_dir` cannot be written,
  or it already holds files of a world (unless `overwrite`)."""
  from earthrep.io.cube import write_zarr   # the cube writer pulls in xarray/zarr
  check_arguments(seed, size, sites, start, days)
  out_dir = Path(out_dir)
  atomic.check_writable(out_dir)
  if out_dir.exists() and not out_dir.is_dir():
    raise WorldError(f"--out {out_dir}: is a file; expected a folder for the world")
  specs = site_specs(seed, sites)
  years = range(int(str(start)[:4]), int(str(np.datetime64(start, "D") + np.timedelta64(days - 1, "D"))[:4]) + 1)
  flux_files = [demo_weather.flux_file_name(spec.site_id, years[0], years[-1]) for spec in specs]
  existing, stale = _world_files(out_dir, [spec.site_id for spec in specs], flux_files)
  if (existing or stale) and not overwrite:
    shown = ", ".join(str(p.relative_to(out_dir)) for p in (existing + stale)[:4])
    raise WorldError(f"--out {out_dir}: holds a demo world ({shown}{', ...' if len(existing + stale) > 4 else ''})"
                     "; pass --overwrite to replace it")
  stage = atomic.partial_sibling(out_dir / "world")
  atomic.remove(stage)
  rows, written = [], []
  try:
    for spec in specs:
      sim = simulate_site(spec, seed, size, start, days)
      write_zarr(sim.cube, stage / "cubes" / spec.site_id)
      demo_weather.write_flux_csv(sim.flux, stage / "flux" / sim.flux_file)
      written += [Path("cubes") / spec.site_id, Path("flux") / sim.flux_file]
      rows.append(f"{spec.site_id},{spec.lon:.5f},{spec.lat:.5f},{spec.land_cover},{spec.utm_epsg},"
                  f"flux/{sim.flux_file}")
    # Complete: move it into place (renames), drop the old world's extra demo sites, then the tables.
    for rel in written:
      (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
      atomic.replace(stage / rel, out_dir / rel)
    for path in stale:
      atomic.remove(path)
    atomic.write_text(out_dir / "sites.csv",
                      "site_id,lon,lat,land_cover,utm_epsg,flux_file\n" + "\n".join(rows) + "\n")
    atomic.write_text(out_dir / "world.json", json.dumps(
        {"generator": "data_prep.demo_world", "seed": seed, "size": size, "sites": sites, "start": start,
         "days": days}, indent=2) + "\n")
  finally:
    atomic.remove(stage)
  return [spec.site_id for spec in specs]


def _main(argv: Sequence[str] | None) -> int:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--seed", type=int, required=True)
  parser.add_argument("--size", type=int, default=64, help=f"cube side in 10 m pixels (>= {MIN_SIZE})")
  parser.add_argument("--sites", type=int, default=6)
  parser.add_argument("--start", default="2019-01-01", help="first acquisition day (YYYY-MM-DD)")
  parser.add_argument("--days", type=int, default=730)
  parser.add_argument("--overwrite", action="store_true", help="replace the world already in --out")
  args = parser.parse_args(argv)
  tic = time.perf_counter()
  site_ids = make_world(args.out, args.seed, args.size, args.sites, args.start, args.days,
                        overwrite=args.overwrite)
  print(f"wrote {len(site_ids)} sites ({', '.join(site_ids)}) to {args.out} in {time.perf_counter() - tic:.1f} s")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return run_tool(_main, argv, PROG)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
