"""Daily vegetation state of the units of a synthetic demo site: crop rotations, mowing, forest phenology.

Each unit (see `demo_landscape`) gets a daily series of cover fractions (green leaves, dry/senescent
matter, bark, rapeseed flowers, open water, built surfaces; bare soil is the remainder), vegetation water
content (kg m-2, drives C-band backscatter), soil roughness (dB added to soil backscatter) and the
light-use efficiency of what grows there (gC per MJ of absorbed PAR). Crops follow per-field rotations of
winter wheat, winter barley, winter oilseed rape, maize and sugar beet with double-logistic green curves,
abrupt harvests, stubble, ploughing and catch crops; grassland greens up, is mown 2-4 times (abrupt drops,
hay left for a few days) or grazed, and browns under drought; deciduous forest flushes and colours,
evergreen forest keeps its needles. Timing varies per field and year, and spring timing follows latitude
and the spring temperature anomaly of the site's weather (Hopkins' law and ~4 days per deg C).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from data_prep.demo_landscape import CROP, DBF, ENF, GRASS, ROAD, URBAN, WATER, Landscape

GREEN, DRY, BARK, FLOWER, OPEN_WATER, BUILT, VWC, ROUGHNESS, LUE = range(9)
N_CHANNELS = 9
COVER_CHANNELS = (GREEN, DRY, BARK, FLOWER, OPEN_WATER, BUILT)   # bare soil = 1 - their sum


@dataclasses.dataclass(frozen=True)
class Crop:
  """Calendar (days from 1 January of the harvest year; negative = previous autumn) and canopy of a crop."""
  sow: float
  autumn_green: float     # green cover reached before winter (winter crops)
  green_up: float         # inflection of the spring rise
  k_up: float
  peak: float
  senescence: float       # inflection of the decline of green cover
  k_down: float
  harvest: float
  dry_peak: float         # straw cover at harvest
  vwc_max: float          # kg m-2 at peak
  lue: float              # gC MJ-1 APAR
  flowering: float = 0.0
  flower_amp: float = 0.0


CROPS: dict[str, Crop] = {
    "winter_wheat": Crop(-70, 0.22, 95, 9, 0.92, 180, 7, 213, 0.75, 2.5, 1.8),
    "winter_barley": Crop(-80, 0.28, 85, 8, 0.88, 165, 6, 192, 0.70, 2.2, 1.8),
    "rapeseed": Crop(-120, 0.50, 80, 8, 0.90, 170, 6, 200, 0.60, 3.0, 1.7, flowering=118, flower_amp=0.5),
    "maize": Crop(115, 0.0, 170, 7, 0.90, 258, 8, 282, 0.55, 4.0, 2.1),
    "sugar_beet": Crop(100, 0.0, 160, 9, 0.93, 320, 10, 288, 0.10, 3.5, 2.0),
}
ROTATIONS: tuple[tuple[str, ...], ...] = (
    ("rapeseed", "winter_wheat", "winter_barley"),
    ("winter_wheat", "maize", "maize"),
    ("sugar_beet", "winter_wheat", "maize", "winter_wheat"),
    ("maize", "winter_wheat", "rapeseed", "winter_wheat"),
)
CATCH_CROP_LUE, GRASS_LUE, DBF_LUE, ENF_LUE = 1.7, 1.9, 2.0, 1.5


def _sig(x: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * x))   # logistic, without overflow warnings


def _crop_unit(rng: np.random.Generator, t: np.ndarray, year_starts: dict[int, int],
               spring_shift: dict[int, float]) -> np.ndarray:
  """(D, C) state of one field through its rotation, one season per harvest year."""
  state = np.zeros((t.size, N_CHANNELS), np.float32)
  state[:, ROUGHNESS] = 1.0
  rotation = ROTATIONS[rng.integers(len(ROTATIONS))]
  phase = rng.integers(len(rotation))
  years = sorted(year_starts)
  seasons = []
  for i, year in enumerate(years):
    crop = CROPS[rotation[(phase + i) % len(rotation)]]
    jitter, shift = rng.normal(0, 5), spring_shift[year]
    seasons.append((crop, year_starts[year], jitter, shift, rng.uniform(0.88, 1.04), rng.normal(0, 4)))
  previous_harvest = -np.inf
  for i, (crop, day0, jitter, shift, amp, late) in enumerate(seasons):
    sow = max(day0 + crop.sow + jitter, previous_harvest + 8)
    up, down = day0 + crop.green_up + jitter + shift, day0 + crop.senescence + jitter + 0.5 * shift
    harvest = day0 + crop.harvest + jitter + 0.6 * shift + late
    active = (t >= sow) & (t < harvest)
    rise = np.maximum(crop.autumn_green * _sig((t - sow - 25) / 7), crop.peak * amp * _sig((t - up) / crop.k_up))
    green = rise * (1 - _sig((t - down) / crop.k_down))
    dry = crop.dry_peak * _sig((t - down) / crop.k_down)
    flower = crop.flower_amp * np.exp(-0.5 * ((t - (day0 + crop.flowering + jitter + shift)) / 9.0) ** 2)
    state[active, GREEN] = green[active]
    state[active, DRY] = dry[active]
    state[active, FLOWER] = flower[active] if crop.flower_amp else 0.0
    state[active, VWC] = (crop.vwc_max * (green / crop.peak) + 0.25 * crop.vwc_max * dry)[active]
    state[active, LUE] = crop.lue
    state[active, ROUGHNESS] = 0.5
    # Between harvest and the next sowing: stubble, ploughing, and a catch crop before spring crops.
    next_sow = (seasons[i + 1][1] + seasons[i + 1][0].sow + seasons[i + 1][2]) if i + 1 < len(seasons) else np.inf
    fallow = (t >= harvest) & (t < max(next_sow, harvest + 8))
    state[fallow, DRY] = (0.35 * np.exp(-(t - harvest) / 25.0))[fallow]
    state[fallow & (t >= harvest + 12), ROUGHNESS] = 3.0
    if next_sow - harvest > 120:
      c_sow, c_end = harvest + 15 + rng.normal(0, 3), next_sow - 45 + rng.normal(0, 5)
      catch = (t >= c_sow) & (t < c_end)
      c_green = rng.uniform(0.35, 0.6) * _sig((t - c_sow - 28) / 6)
      state[catch, GREEN] = c_green[catch]
      state[catch, VWC] = 1.2 * c_green[catch]
      state[catch, LUE] = CATCH_CROP_LUE
      state[catch, ROUGHNESS] = 1.0
      mulch = (t >= c_end) & (t < next_sow)
      state[mulch, DRY] = (0.4 * np.exp(-(t - c_end) / 40.0))[mulch]
      state[mulch, ROUGHNESS] = 2.0
    previous_harvest = harvest
  return state


def _leaf_on(t: np.ndarray, ups: list[float], downs: list[float], k_up: float, k_down: float) -> np.ndarray:
  """Sum of one double-logistic season per year (seasons do not overlap)."""
  return sum(_sig((t - u) / k_up) * (1 - _sig((t - d) / k_down)) for u, d in zip(ups, downs))


def _grass_unit(rng: np.random.Generator, t: np.ndarray, year_starts: dict[int, int],
                spring_shift: dict[int, float], water_supply: np.ndarray) -> np.ndarray:
  state = np.zeros((t.size, N_CHANNELS), np.float32)
  years = sorted(year_starts)
  ups = [year_starts[y] + 95 + spring_shift[y] + rng.normal(0, 4) for y in years]
  downs = [year_starts[y] + 305 + rng.normal(0, 6) for y in years]
  season = _leaf_on(t, ups, downs, 10.0, 15.0)
  g_min, g_max = rng.uniform(0.4, 0.5), rng.uniform(0.82, 0.92)
  green = g_min + (g_max - g_min) * season
  cuts = []
  if rng.uniform() < 0.7:   # meadow, mown; else pasture, grazed
    for y in years:
      n_cuts = rng.choice([2, 3, 4], p=[0.35, 0.45, 0.2])
      cut = year_starts[y] + 135 + spring_shift[y] + rng.normal(0, 6)
      for _ in range(n_cuts):
        if cut > year_starts[y] + 285:
          break
        cuts.append(cut)
        cut += rng.uniform(35, 50)
  else:
    green = green * (1 - 0.1 * season)
  dry = 0.12 * (1 - season)
  if cuts:
    cuts = np.array(cuts)
    last = np.searchsorted(cuts, t, side="right") - 1
    since = np.where(last >= 0, t - cuts[np.maximum(last, 0)], np.inf)
    green = green * (1 - 0.72 * np.exp(-since / 16.0))
    dry = dry + np.where(since < 12, 0.45 * np.exp(-since / 3.5), 0.0)
  browned = green * 0.45 * (1 - water_supply)
  state[:, GREEN], state[:, DRY] = green - browned, dry + 0.8 * browned
  state[:, VWC], state[:, LUE], state[:, ROUGHNESS] = 1.3 * state[:, GREEN] + 0.2, GRASS_LUE, 1.0
  return state


def _forest_unit(rng: np.random.Generator, t: np.ndarray, year_starts: dict[int, int],
                 spring_shift: dict[int, float], lat: float, evergreen: bool) -> np.ndarray:
  state = np.zeros((t.size, N_CHANNELS), np.float32)
  years = sorted(year_starts)
  amp = rng.uniform(0.92, 1.02)
  if evergreen:   # new shoots in early summer on a permanent needle canopy
    ups = [year_starts[y] + 140 + spring_shift[y] + rng.normal(0, 3) for y in years]
    shoots = _leaf_on(t, ups, [year_starts[y] + 300 for y in years], 10.0, 12.0)
    state[:, GREEN], state[:, BARK], state[:, DRY] = 0.6 * amp + 0.1 * shoots, 0.12, 0.10
    state[:, VWC], state[:, LUE] = 4.0 + 0.6 * shoots, ENF_LUE
    return state
  ups = [year_starts[y] + 112 + spring_shift[y] + rng.normal(0, 2) for y in years]
  downs = [year_starts[y] + 290 - 1.2 * (lat - 48) + rng.normal(0, 3) for y in years]
  leaves = _leaf_on(t, ups, downs, 6.0, 8.0)
  colouring = sum(np.exp(-0.5 * ((t - d + 8) / 9.0) ** 2) for d in downs)
  state[:, GREEN] = 0.05 + 0.85 * amp * leaves
  state[:, BARK] = 0.06 + 0.4 * (1 - leaves)
  state[:, DRY] = 0.32 * (1 - leaves) + 0.22 * colouring
  state[:, VWC], state[:, LUE] = 2.5 + 2.0 * leaves, DBF_LUE
  return state


def unit_states(rng: np.random.Generator, landscape: Landscape, first_day: np.datetime64, n_days: int,
                lat: float, spring_anomaly_c: dict[int, float], water_supply: np.ndarray) -> np.ndarray:
  """(D, U, C) float32 daily state of every unit from `first_day` (day index 0) on.

  `spring_anomaly_c` maps each year to its March-April temperature anomaly (deg C); `water_supply` (D,)
  is the root-zone water factor in [0, 1] (1 = no stress) from `demo_weather`.
  """
  t = np.arange(n_days, dtype=np.float64)
  last_day = first_day + np.timedelta64(n_days - 1, "D")
  first_year, last_year = int(str(first_day)[:4]), int(str(last_day)[:4])
  year_starts = {y: int((np.datetime64(f"{y}-01-01") - first_day).astype(int))
                 for y in range(first_year - 1, last_year + 2)}
  spring_shift = {y: float(np.clip(2.5 * (lat - 48) - 4.0 * spring_anomaly_c.get(y, 0.0), -15, 30))
                  for y in year_starts}
  leaf_on_urban = _leaf_on(t, [year_starts[y] + 100 for y in year_starts],
                           [year_starts[y] + 300 for y in year_starts], 8.0, 10.0)
  states = np.zeros((n_days, landscape.unit_kind.size, N_CHANNELS), np.float32)
  for unit, kind in enumerate(landscape.unit_kind):
    if kind == CROP:
      states[:, unit] = _crop_unit(rng, t, year_starts, spring_shift)
    elif kind == GRASS:
      states[:, unit] = _grass_unit(rng, t, year_starts, spring_shift, water_supply)
    elif kind in (DBF, ENF):
      states[:, unit] = _forest_unit(rng, t, year_starts, spring_shift, lat, kind == ENF)
    elif kind == WATER:
      states[:, unit, OPEN_WATER] = 1.0
    elif kind == URBAN:   # roofs and pavement with some garden greenery
      states[:, unit, BUILT], states[:, unit, GREEN] = 0.8, 0.08 + 0.08 * leaf_on_urban
      states[:, unit, VWC] = 0.3
    elif kind == ROAD:
      states[:, unit, BUILT] = 1.0
  return states


def pixel_states(unit_state: np.ndarray, landscape: Landscape, day_index: np.ndarray,
                 window: tuple[slice, slice] = (slice(None), slice(None))) -> np.ndarray:
  """(T, h, w, C) state of the pixels in `window` on days `day_index` (T,), with per-pixel texture."""
  shift = landscape.shift_days[window]
  days = np.clip(np.asarray(day_index)[:, None, None] - shift[None], 0, unit_state.shape[0] - 1)
  state = unit_state[days, landscape.unit_map[window][None]]
  vigour = landscape.vigour[window][None]
  state[..., GREEN] = np.minimum(state[..., GREEN] * vigour, 0.97)
  state[..., VWC] *= vigour
  others = [c for c in COVER_CHANNELS if c != GREEN]
  room = np.maximum(1.0 - state[..., GREEN], 0.0)
  rest = state[..., others].sum(axis=-1)
  scale = np.where(rest > room, room / np.maximum(rest, 1e-6), 1.0)
  state[..., others] *= scale[..., None]
  return state
