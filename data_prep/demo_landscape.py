"""Random fields and the land-cover map of one synthetic demo site (see data_prep/README.md).

A site is a square of `size` x `size` 10 m pixels with the flux tower at its centre. Parcels are cells of
an anisotropic Voronoi partition (straight, sharp field boundaries); natural parcels (forest, grassland,
water) take their cells from a domain-warped copy of the partition so their edges are irregular. Each
parcel carries a land cover (IGBP code); each pixel belongs to a *unit* (parcel x stand type: mixed
forest is a crown-scale mosaic of deciduous and evergreen pixels) whose daily vegetation state comes from
`demo_phenology`. Per-pixel texture (timing shift, vigour, soil brightness, canopy shading) makes fields
and stands non-uniform. Everything is drawn from the generator passed in, so the map is deterministic.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy.special import ndtri

# Parcel land covers (IGBP codes) and pixel kinds (what drives phenology, spectra and backscatter).
LAND_COVERS: tuple[str, ...] = ("CRO", "GRA", "DBF", "ENF", "MF", "WAT", "URB")
KINDS: tuple[str, ...] = ("crop", "grass", "dbf", "enf", "water", "urban", "road")
CROP, GRASS, DBF, ENF, WATER, URBAN, ROAD = range(len(KINDS))

# Share of the landscape by parcel land cover, for each tower land cover (the dominant one).
COMPOSITION: dict[str, dict[str, float]] = {
    "CRO": {"CRO": .72, "GRA": .10, "DBF": .05, "MF": .03, "URB": .06, "WAT": .04},
    "DBF": {"DBF": .60, "MF": .12, "ENF": .08, "GRA": .10, "CRO": .10},
    "ENF": {"ENF": .66, "MF": .12, "DBF": .04, "GRA": .08, "WAT": .10},
    "GRA": {"GRA": .62, "CRO": .14, "DBF": .10, "ENF": .04, "URB": .06, "WAT": .04},
    "MF": {"MF": .50, "DBF": .18, "ENF": .17, "GRA": .10, "WAT": .05},
}
MEAN_PARCEL_HA = {"CRO": 2.5, "GRA": 2.0, "DBF": 5.0, "ENF": 5.0, "MF": 5.0}
# (main kind, second kind, share of second kind's pixels) per parcel land cover.
UNIT_KINDS = {"CRO": (CROP, CROP, 0.0), "GRA": (GRASS, GRASS, 0.0), "DBF": (DBF, ENF, 0.08),
              "ENF": (ENF, DBF, 0.08), "MF": (DBF, ENF, 0.5), "WAT": (WATER, WATER, 0.0),
              "URB": (URBAN, GRASS, 0.2)}
NATURAL = ("GRA", "DBF", "ENF", "MF", "WAT")
# Canopy shading (multiplies all bands): dark conifer crowns, bright flat crop canopies.
CANOPY_BRIGHTNESS = np.array([1.0, 0.96, 0.82, 0.58, 1.0, 1.0, 0.75], np.float32)
FOOTPRINT_RADIUS_PX = 2   # the tower footprint is the 5 x 5 pixels around the tower


def gaussian_field(rng: np.random.Generator, batch: int, h: int, w: int, length_px: float) -> np.ndarray:
  """(batch, h, w) float32 periodic Gaussian random field, zero mean and unit std per field."""
  white = rng.standard_normal((batch, h, w), dtype=np.float32)
  fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
  transfer = np.exp(-2.0 * (np.pi * length_px) ** 2 * (fy ** 2 + fx ** 2)).astype(np.float32)
  return _standardise(np.fft.irfft2(np.fft.rfft2(white) * transfer, s=(h, w)))


def fractal_field(rng: np.random.Generator, batch: int, n: int, slope: float, outer_px: float) -> np.ndarray:
  """(batch, n, n) float32 periodic field with power spectrum (k^2 + k0^2)^(-slope/2), like cloud fields."""
  white = rng.standard_normal((batch, n, n), dtype=np.float32)
  fy, fx = np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None, :]
  transfer = ((fy ** 2 + fx ** 2 + outer_px ** -2) ** (-slope / 4.0)).astype(np.float32)
  return _standardise(np.fft.irfft2(np.fft.rfft2(white) * transfer, s=(n, n)))


def _standardise(field: np.ndarray) -> np.ndarray:
  field = field - field.mean(axis=(-2, -1), keepdims=True)
  return (field / (field.std(axis=(-2, -1), keepdims=True) + 1e-12)).astype(np.float32)


@dataclasses.dataclass
class Landscape:
  """Land-cover map of one site; units index the rows of the unit-state table of `demo_phenology`."""
  parcel_map: np.ndarray        # (h, w) int32 parcel index
  parcel_cover: list[str]       # (P,) IGBP code per parcel
  unit_map: np.ndarray          # (h, w) int32 unit index = 2 * parcel + (second stand type)
  unit_kind: np.ndarray         # (U,) int8 index into KINDS
  unit_parcel: np.ndarray       # (U,) int32
  shift_days: np.ndarray        # (h, w) int32 local phenology delay (wet hollows, crowns)
  vigour: np.ndarray            # (h, w) float32 multiplies green cover
  soil_brightness: np.ndarray   # (h, w) float32 multiplies the soil spectrum
  canopy_brightness: np.ndarray  # (h, w) float32 multiplies the whole spectrum
  tower_rc: tuple[int, int]

  @property
  def pixel_kind(self) -> np.ndarray:
    return self.unit_kind[self.unit_map]

  def footprint(self) -> tuple[slice, slice]:
    r, c = self.tower_rc
    return slice(r - FOOTPRINT_RADIUS_PX, r + FOOTPRINT_RADIUS_PX + 1), \
        slice(c - FOOTPRINT_RADIUS_PX, c + FOOTPRINT_RADIUS_PX + 1)


def _voronoi(seeds_yx: np.ndarray, yy: np.ndarray, xx: np.ndarray, metric: np.ndarray) -> np.ndarray:
  """Nearest seed under the quadratic form `metric` (anisotropic cells, still straight edges)."""
  dy = yy[None] - seeds_yx[:, 0, None, None]
  dx = xx[None] - seeds_yx[:, 1, None, None]
  dist = metric[0, 0] * dy * dy + 2 * metric[0, 1] * dy * dx + metric[1, 1] * dx * dx
  return np.argmin(dist, axis=0).astype(np.int32)


def _parcel_seeds(rng: np.random.Generator, size: int, n: int, tower: tuple[int, int]) -> np.ndarray:
  """Parcel centres; the first is the tower, the others keep 6 px away so the footprint is one parcel."""
  seeds = [np.array(tower, np.float64)]
  while len(seeds) < n:
    candidates = rng.uniform(-0.5, size - 0.5, (4 * n, 2))
    far = np.hypot(*(candidates - seeds[0]).T) > 6.0
    seeds.extend(candidates[far][: n - len(seeds)])
  return np.stack(seeds)


def _parcel_covers(rng: np.random.Generator, land_cover: str, n: int) -> list[str]:
  shares = COMPOSITION[land_cover]
  names = list(shares)
  p = np.array([shares[k] for k in names])
  covers = [land_cover] + [names[i] for i in rng.choice(len(names), size=n - 1, p=p / p.sum())]
  return covers


def _road(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray, tower: tuple[int, int]) -> np.ndarray:
  """A straight 10 m road passing 25-45 % of the tile away from the tower."""
  angle = rng.uniform(0, np.pi)
  normal = np.array([np.cos(angle), np.sin(angle)])
  offset = rng.choice([-1, 1]) * rng.uniform(0.25, 0.45) * size
  signed = (yy - tower[0]) * normal[0] + (xx - tower[1]) * normal[1] - offset
  return np.abs(signed) < 0.55


def make_landscape(rng: np.random.Generator, size: int, land_cover: str) -> Landscape:
  """Draws the parcels, units and per-pixel texture of a site whose tower pixel has `land_cover`."""
  if land_cover not in COMPOSITION:
    raise ValueError(f"land cover {land_cover!r}: expected one of {sorted(COMPOSITION)}")
  if size < 2 * FOOTPRINT_RADIUS_PX + 3:
    raise ValueError(f"size {size} px is too small for a {2 * FOOTPRINT_RADIUS_PX + 1} px tower footprint")
  tower = (size // 2, size // 2)
  area_ha = (size * 0.01) ** 2 * 100.0
  n_parcels = int(np.clip(round(area_ha / MEAN_PARCEL_HA[land_cover]), 4, 80))
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  seeds = _parcel_seeds(rng, size, n_parcels, tower)
  # Fields are elongated along one direction per site (ploughing/ownership pattern).
  angle, stretch = rng.uniform(0, np.pi), rng.uniform(1.3, 2.2)
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  metric = rot @ np.diag([1.0, 1.0 / stretch ** 2]) @ rot.T
  straight = _voronoi(seeds, yy, xx, metric)
  warp = gaussian_field(rng, 2, size, size, max(3.0, size / 10)) * max(1.5, size / 25)
  warped = _voronoi(seeds, yy + warp[0], xx + warp[1], metric)
  covers = _parcel_covers(rng, land_cover, n_parcels)
  natural = np.array([c in NATURAL for c in covers])
  parcel_map = np.where(natural[warped], warped, straight).astype(np.int32)
  if land_cover in ("CRO", "GRA") and size >= 32 and rng.uniform() < 0.7:
    covers.append("URB")
    parcel_map[_road(rng, size, yy, xx, tower)] = len(covers) - 1
  fp = (slice(tower[0] - FOOTPRINT_RADIUS_PX - 1, tower[0] + FOOTPRINT_RADIUS_PX + 2),
        slice(tower[1] - FOOTPRINT_RADIUS_PX - 1, tower[1] + FOOTPRINT_RADIUS_PX + 2))
  parcel_map[fp] = 0   # the tower stands in one homogeneous parcel (a 7 x 7 px guard around the footprint)

  n_units = 2 * len(covers)
  unit_kind = np.zeros(n_units, np.int8)
  share = np.zeros(len(covers), np.float32)
  for p, cover in enumerate(covers):
    main, second, share[p] = UNIT_KINDS[cover]
    unit_kind[2 * p], unit_kind[2 * p + 1] = main, second
  if len(covers) > n_parcels:   # the road parcel
    unit_kind[-2:] = ROAD
  crowns = gaussian_field(rng, 1, size, size, 1.0)[0]     # crown-scale mosaic of stand types
  fine = gaussian_field(rng, 1, size, size, 0.6)[0]       # single crowns and gaps
  smooth = gaussian_field(rng, 1, size, size, 3.0)[0]     # within-field growth patterns
  soil = gaussian_field(rng, 1, size, size, 6.0)[0]       # soil patches
  second_stand = crowns > ndtri(np.clip(1.0 - share[parcel_map], 1e-6, 1 - 1e-6))
  unit_map = (2 * parcel_map + second_stand).astype(np.int32)
  kind = unit_kind[unit_map]
  forest = (kind == DBF) | (kind == ENF)
  shift_days = np.rint(np.where(forest, 4.0 * fine, 3.0 * smooth)).astype(np.int32)
  gaps = forest & (fine < -1.9)   # canopy gaps, windthrow
  vigour = np.where(forest, 1.0 + 0.07 * crowns - 0.25 * gaps, 1.0 + 0.06 * smooth).astype(np.float32)
  parcel_soil = rng.normal(1.0, 0.06, len(covers)).astype(np.float32)
  soil_brightness = (parcel_soil[parcel_map] * (1.0 + 0.06 * soil)).astype(np.float32)
  canopy = CANOPY_BRIGHTNESS[kind] * np.where(forest, 1.0 + 0.08 * fine, 1.0)
  return Landscape(parcel_map, covers, unit_map, unit_kind, np.repeat(np.arange(len(covers)), 2).astype(np.int32),
                   shift_days, vigour, soil_brightness, canopy.astype(np.float32), tower)
