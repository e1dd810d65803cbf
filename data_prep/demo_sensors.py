"""Sentinel-2 reflectance with clouds and Sentinel-1 gamma0 with speckle for the synthetic demo world.

S2: linear mixing of seven endmember spectra (green leaves, senescent matter, bark, rapeseed flowers,
water, built surfaces, soil darkened by surface moisture) weighted by the pixel cover fractions, shaded
per canopy, with per-date atmospheric-correction residuals, sensor noise, 20 m bands resampled bilinearly
as xcube-stac does, and L2A quantisation (1e-4). Clouds are thresholded fractal fields whose cover follows
the weather's cloudiness; thin halos and cirrus haze add a blue-heavy path signal; shadows are the thick
cloud field shifted by the sun-geometry displacement of the date (cloud-top height x tan(zenith), away
from the sun azimuth at ~11:00 local solar time). The mask follows CloudSEN12 classes; haze too faint to
detect (opacity < 0.06) stays labelled clear, as in real masks. S1: a water-cloud model (vegetation volume
term + two-way attenuated soil term whose dielectric rises with surface soil moisture) in linear gamma0,
incidence-angle slopes, frozen soil, wet canopies after rain, wind-roughened open water, bright built-up
double bounce, then multiplicative Gamma speckle with ENL 4.4. `noise_free_s2` and `s1_gamma0_noise_free`
give the truth behind both (for evaluation only; never written into cubes or shards).
"""
from __future__ import annotations

import numpy as np

from data_prep.demo_landscape import KINDS, ROAD, URBAN, WATER, Landscape, fractal_field
from data_prep.demo_phenology import COVER_CHANNELS, ROUGHNESS, VWC

# Endmember reflectance, bands B02 B03 B04 B05 B06 B07 B08 B8A B11 B12 (schema.S2_BANDS order).
ENDMEMBERS = np.array([
    [0.030, 0.070, 0.032, 0.120, 0.330, 0.420, 0.470, 0.490, 0.220, 0.100],   # green leaves
    [0.070, 0.100, 0.150, 0.180, 0.220, 0.240, 0.250, 0.270, 0.380, 0.300],   # senescent matter, straw
    [0.040, 0.060, 0.070, 0.100, 0.140, 0.170, 0.200, 0.210, 0.240, 0.170],   # bark, branches
    [0.040, 0.140, 0.120, 0.250, 0.350, 0.400, 0.430, 0.450, 0.250, 0.130],   # rapeseed flowers
    [0.060, 0.050, 0.030, 0.025, 0.015, 0.012, 0.010, 0.009, 0.004, 0.003],   # open water
    [0.100, 0.110, 0.120, 0.140, 0.160, 0.170, 0.180, 0.190, 0.240, 0.210],   # roofs, pavement
], np.float32)
SOIL = np.array([0.070, 0.100, 0.160, 0.190, 0.210, 0.215, 0.220, 0.230, 0.300, 0.260], np.float32)
SOIL_WET_DARKENING = np.array([0.25, 0.25, 0.25, 0.27, 0.28, 0.30, 0.30, 0.30, 0.40, 0.42], np.float32)
CLOUD_TOP = np.array([0.55, 0.54, 0.55, 0.56, 0.56, 0.56, 0.56, 0.55, 0.42, 0.30], np.float32)
HAZE_PATH = np.array([0.12, 0.07, 0.04, 0.03, 0.02, 0.015, 0.01, 0.01, 0.0, 0.0], np.float32)
SHADOW_TRANSMISSION = np.array([0.45, 0.40, 0.36, 0.33, 0.30, 0.28, 0.27, 0.27, 0.25, 0.25], np.float32)
BANDS_20M = np.array([3, 4, 5, 7, 8, 9])   # B05 B06 B07 B8A B11 B12
UNDETECTED_OPACITY = 0.06
S1_ENL = 4.4
# Volume scattering coefficients (linear gamma0 of a closed canopy at normal incidence) per kind.
VOLUME_VV = np.array([0.11, 0.09, 0.17, 0.15, 0.0, 0.0, 0.0], np.float32)
VOLUME_VH = np.array([0.032, 0.025, 0.055, 0.05, 0.0, 0.0, 0.0], np.float32)
assert len(VOLUME_VV) == len(KINDS)


def surface_reflectance(states: np.ndarray, landscape: Landscape, soil_wetness: np.ndarray) -> np.ndarray:
  """(T, h, w, 10) cloud-free reflectance from pixel states (T, h, w, C) and soil wetness (T,) in [0, 1]."""
  covers = states[..., COVER_CHANNELS]
  bare = np.clip(1.0 - covers.sum(axis=-1, keepdims=True), 0.0, 1.0)
  soil = SOIL * (1.0 - SOIL_WET_DARKENING * soil_wetness[:, None, None, None].astype(np.float32))
  reflectance = covers @ ENDMEMBERS + bare * soil * landscape.soil_brightness[None, :, :, None]
  return reflectance * landscape.canopy_brightness[None, :, :, None]


def sun_position_deg(lat: float, doy: np.ndarray, solar_hour: float = 11.0) -> tuple[np.ndarray, np.ndarray]:
  """(zenith, azimuth clockwise from north) in degrees at a local solar time."""
  phi, decl = np.deg2rad(lat), np.deg2rad(23.44) * np.sin(2 * np.pi * (284 + doy) / 365.0)
  hour_angle = np.deg2rad(15.0 * (solar_hour - 12.0))
  cos_zenith = np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(hour_angle)
  zenith = np.arccos(np.clip(cos_zenith, -1, 1))
  azimuth = np.arctan2(np.sin(hour_angle), np.cos(hour_angle) * np.sin(phi) - np.tan(decl) * np.cos(phi)) + np.pi
  return np.rad2deg(zenith), np.rad2deg(azimuth)


def shadow_offsets_px(rng: np.random.Generator, lat: float, doy: np.ndarray) -> np.ndarray:
  """(T, 2) integer (row, col) displacement of cloud shadows on the 10 m grid (north up)."""
  zenith, azimuth = sun_position_deg(lat, doy)
  cloud_top_m = rng.uniform(500.0, 2500.0, doy.size)
  length = cloud_top_m * np.tan(np.deg2rad(np.minimum(zenith, 80.0))) / 10.0
  az = np.deg2rad(azimuth)
  return np.stack([np.rint(length * np.cos(az)), np.rint(-length * np.sin(az))], axis=1).astype(np.int64)


def cloud_fields(rng: np.random.Generator, cover: np.ndarray, size: int,
                 offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per date (T,): opacity (T, h, w) in [0, 1], thick-cloud density (T, h, w), shadow (T, h, w) bool.

  Fields live on a periodic domain twice the tile so a shadow can come from a cloud outside the tile.
  """
  n_dates, n = cover.size, max(2 * size, 64)
  field = fractal_field(rng, n_dates, n, slope=3.8, outer_px=n / 2.5)
  ranked = np.sort(field.reshape(n_dates, -1), axis=1)
  index = np.clip(np.rint((1.0 - cover) * (n * n - 1)).astype(int), 0, n * n - 1)
  threshold = np.take_along_axis(ranked, index[:, None], axis=1)[:, 0]
  threshold = np.where(cover <= 0, np.inf, np.where(cover >= 1, -np.inf, threshold))[:, None, None]
  thick = field > threshold
  shadow = np.stack([np.roll(thick[t], tuple(offsets[t]), axis=(0, 1)) for t in range(n_dates)])
  halo = np.clip((field - threshold + 0.5) / 0.5, 0, 1) * 0.35
  cirrus_dates = (rng.uniform(size=n_dates) < 0.1) & (cover < 1)
  haze = fractal_field(rng, n_dates, n, slope=3.5, outer_px=n)
  cirrus = cirrus_dates[:, None, None] * rng.uniform(0.05, 0.3, n_dates)[:, None, None] * (0.6 + 0.4 * np.tanh(haze))
  density = np.clip((field - threshold) / 0.7, 0, 1)
  opacity = np.where(thick, 0.75 + 0.25 * density, np.maximum(halo, cirrus))
  crop = (slice(None), slice(0, size), slice(0, size))
  return opacity[crop].astype(np.float32), np.where(thick, density, 0)[crop].astype(np.float32), shadow[crop]


def cloud_mask_classes(opacity: np.ndarray, density: np.ndarray, shadow: np.ndarray) -> np.ndarray:
  """CloudSEN12 classes: 1 thick, 2 thin, 3 shadow, 0 clear (including undetectably faint haze)."""
  mask = np.zeros(opacity.shape, np.uint8)
  mask[shadow] = 3
  mask[opacity >= UNDETECTED_OPACITY] = 2
  mask[opacity >= 0.75] = 1
  return mask


def _bilinear_20m(bands: np.ndarray) -> np.ndarray:
  """(..., h, w) 10 m -> 2x2 block means (20 m pixels) -> bilinear back to 10 m on pixel centres."""
  h, w = bands.shape[-2:]
  padded = np.pad(bands, [(0, 0)] * (bands.ndim - 2) + [(0, h % 2), (0, w % 2)], mode="edge")
  coarse = padded.reshape(*padded.shape[:-2], padded.shape[-2] // 2, 2, padded.shape[-1] // 2, 2).mean(axis=(-3, -1))

  def upsample(x: np.ndarray, axis: int) -> np.ndarray:
    previous = np.concatenate([np.take(x, [0], axis), np.take(x, np.arange(x.shape[axis] - 1), axis)], axis)
    following = np.concatenate([np.take(x, np.arange(1, x.shape[axis]), axis), np.take(x, [-1], axis)], axis)
    even, odd = 0.75 * x + 0.25 * previous, 0.75 * x + 0.25 * following
    return np.stack([even, odd], axis=axis + 1).reshape(*x.shape[:axis], 2 * x.shape[axis], *x.shape[axis + 1:])

  fine = upsample(upsample(coarse, coarse.ndim - 2), coarse.ndim - 1)
  return fine[..., :h, :w]


def s2_reflectance(rng: np.random.Generator, surface: np.ndarray, opacity: np.ndarray, density: np.ndarray,
                   shadow: np.ndarray) -> np.ndarray:
  """(T, 10, h, w) float32 L2A-like reflectance in [0, 1] from surface (T, h, w, 10) and cloud fields."""
  n_dates = surface.shape[0]
  gain = rng.normal(1.0, 0.015, (n_dates, 1, 1, 1)).astype(np.float32)
  aerosol = np.zeros((n_dates, 1, 1, 10), np.float32)
  aerosol[..., 0] = rng.normal(0.004, 0.004, (n_dates, 1, 1))
  aerosol[..., 1] = 0.5 * aerosol[..., 0]
  ground = surface * gain + aerosol
  ground = np.where(shadow[..., None], ground * SHADOW_TRANSMISSION, ground)
  cloud_colour = (0.6 + 0.6 * density[..., None]) * CLOUD_TOP + (density[..., None] == 0) * HAZE_PATH
  a = opacity[..., None]
  toa = (1 - a) * ground + a * cloud_colour
  toa = toa + rng.standard_normal(toa.shape, dtype=np.float32) * (0.003 + 0.01 * np.abs(toa))
  reflectance = np.ascontiguousarray(toa.transpose(0, 3, 1, 2))
  reflectance[:, BANDS_20M] = _bilinear_20m(reflectance[:, BANDS_20M])
  return (np.round(np.clip(reflectance, 0.0, 1.0) * 10000) / 10000).astype(np.float32)


def noise_free_s2(surface: np.ndarray) -> np.ndarray:
  """(T, 10, h, w) truth for evaluation: surface reflectance (T, h, w, 10) as a noise-free, cloud-free sensor
  delivers it (20 m bands resampled as in `s2_reflectance`, clipped to [0, 1]; no per-date gain, aerosol
  residual, noise or quantisation)."""
  reflectance = np.ascontiguousarray(surface.transpose(0, 3, 1, 2)).astype(np.float32)
  reflectance[:, BANDS_20M] = _bilinear_20m(reflectance[:, BANDS_20M])
  return np.clip(reflectance, 0.0, 1.0)


def built_up_db(rng: np.random.Generator, landscape: Landscape) -> np.ndarray:
  """(h, w) per-pixel double-bounce level of built-up pixels (dB at 37 deg), fixed in time."""
  return (-4.0 + 2.5 * rng.standard_normal(landscape.pixel_kind.shape).astype(np.float32)).astype(np.float32)


def s1_gamma0_noise_free(states: np.ndarray, landscape: Landscape, incidence_deg: np.ndarray,
                         surface_soil_moisture: np.ndarray, frozen: np.ndarray, wet_canopy: np.ndarray,
                         wind: np.ndarray, built_db: np.ndarray) -> np.ndarray:
  """(T, 2, h, w) float32 linear gamma0 (VV, VH) before speckle; per-date inputs are (T,)."""
  kind = landscape.pixel_kind
  cos_inc = np.cos(np.deg2rad(incidence_deg))[:, None, None].astype(np.float32)
  d_inc = (incidence_deg - 37.0)[:, None, None].astype(np.float32)
  attenuation = np.exp(-2 * 0.35 * states[..., VWC] / cos_inc)   # two-way canopy transmissivity
  moisture = np.where(frozen, 0.05, surface_soil_moisture)[:, None, None].astype(np.float32)
  soil_vv_db = -21.0 + 28.0 * moisture + states[..., ROUGHNESS] - 0.15 * d_inc
  soil_vv, soil_vh = 10 ** (soil_vv_db / 10), 10 ** ((soil_vv_db - 9.0) / 10)
  volume = (1 - attenuation) * cos_inc * (1 + 0.15 * wet_canopy[:, None, None]) * 10 ** (-0.05 * d_inc / 10)
  vv = VOLUME_VV[kind] * volume + attenuation * soil_vv
  vh = VOLUME_VH[kind] * volume + attenuation * soil_vh
  # Open water: specular, brighter when wind roughens it; built-up: double bounce, stable in time.
  water_vv_db = (-23.0 + 7.0 * wind - 0.2 * (incidence_deg - 37))[:, None, None]
  water_vh_db = (-28.5 + 2.0 * wind)[:, None, None]
  built_db = built_db - 0.1 * d_inc
  vv = np.where(kind == WATER, 10 ** (water_vv_db / 10), vv)
  vh = np.where(kind == WATER, 10 ** (water_vh_db / 10), vh)
  vv = np.where(kind == URBAN, 10 ** (built_db / 10), np.where(kind == ROAD, 10 ** -1.7, vv))
  vh = np.where(kind == URBAN, 10 ** ((built_db - 8.0) / 10), np.where(kind == ROAD, 10 ** -2.5, vh))
  return np.stack([vv, vh], axis=1).astype(np.float32)


def s1_gamma0(rng: np.random.Generator, states: np.ndarray, landscape: Landscape, incidence_deg: np.ndarray,
              surface_soil_moisture: np.ndarray, frozen: np.ndarray, wet_canopy: np.ndarray,
              wind: np.ndarray, built_db: np.ndarray | None = None) -> np.ndarray:
  """(T, 2, h, w) float32 linear gamma0 (VV, VH) with Gamma speckle; per-date inputs are (T,).

  `built_db` (from `built_up_db`, drawn from `rng` here when not given) is the built-up level map."""
  if built_db is None:
    built_db = built_up_db(rng, landscape)
  gamma0 = s1_gamma0_noise_free(states, landscape, incidence_deg, surface_soil_moisture, frozen, wet_canopy,
                                wind, built_db)
  speckle = rng.gamma(S1_ENL, 1.0 / S1_ENL, gamma0.shape).astype(np.float32)
  return gamma0 * speckle


def s1_truth_on_days(states: np.ndarray, landscape: Landscape, weather, day_index: np.ndarray,
                     direction: np.ndarray, s1_day_index: np.ndarray, s1_direction: np.ndarray,
                     s1_incidence_deg: np.ndarray, s1_wind: np.ndarray, built_db: np.ndarray) -> np.ndarray:
  """Speckle-free gamma0 (n, 2, h, w) on any days (`day_index` into `weather`), each seen by one track
  (`direction`, (n,)) with that track's incidence; the acquisitions' own wind where a day is one, else 0.25
  (the mean open-water roughness). Descending (morning) passes see the previous day's soil moisture."""
  incidence, wind = np.empty(len(day_index)), np.full(len(day_index), 0.25)
  for track in ("ascending", "descending"):
    on_track, here = s1_direction == track, np.flatnonzero(direction == track)
    if len(here):
      incidence[here] = s1_incidence_deg[on_track][0]
      acquired = dict(zip(s1_day_index[on_track].tolist(), s1_wind[on_track]))
      wind[here] = [acquired.get(int(day_index[i]), 0.25) for i in here]
  soil_day = np.maximum(day_index - (direction == "descending"), 0)
  wet = (weather.precip[day_index] > 1.0) | (weather.precip[np.maximum(day_index - 1, 0)] > 1.0)
  return s1_gamma0_noise_free(states, landscape, incidence, weather.surface_soil_moisture[soil_day],
                              weather.ta[day_index] < -1.0, wet.astype(np.float32), wind, built_db)
