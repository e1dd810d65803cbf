"""Daily meteorology, soil water, tower GPP and the FLUXNET2015 FULLSET DD file of a synthetic demo site.

Weather is a small stochastic generator: a persistent (AR(1)) daily cloudiness with a seasonal climatology
of clear and overcast days drives shortwave radiation (Angstrom-Prescott on FAO-56 top-of-atmosphere
radiation) and rain; air temperature is a latitude/continentality-dependent seasonal cycle plus synoptic
AR(1) anomalies; VPD follows from temperature and a cloudiness-dependent humidity. A root-zone bucket
(Priestley-Taylor evaporation) gives the water-supply factor and a fast surface layer the 0-5 cm soil
moisture that C-band backscatter sees (wet for a few days after rain). GPP is a light-use-efficiency model,
GPP = LUE(crop/biome) * fAPAR(tower footprint) * PAR * f(T) * f(VPD) * f(water), written with realistic
noise, quality flags, gap-filling codes and -9999 gaps in the FLUXNET2015 FULLSET daily layout.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from earthrep.io import atomic

SPIN_UP_DAYS = 120
BUCKET_MM = 150.0
MISSING = -9999.0
FLUX_COLUMNS: tuple[str, ...] = (
    "TIMESTAMP", "TA_F", "TA_F_QC", "SW_IN_POT", "SW_IN_F", "SW_IN_F_QC", "VPD_F", "VPD_F_QC", "P_F", "P_F_QC",
    "SWC_F_MDS_1", "SWC_F_MDS_1_QC", "NEE_VUT_REF", "NEE_VUT_REF_QC", "RECO_NT_VUT_REF", "GPP_NT_VUT_REF",
    "RECO_DT_VUT_REF", "GPP_DT_VUT_REF")
# Temperature response (T_min, T_opt in deg C), base respiration at 10 deg C (gC m-2 d-1), rooting depth
# effect on the water factor, per tower land cover.
TEMPERATURE_RANGE = {"CRO": (-2.0, 16.0), "GRA": (-2.0, 14.0), "DBF": (0.0, 15.0), "ENF": (-5.0, 12.0),
                     "MF": (-3.0, 14.0)}
RESPIRATION_10C = {"CRO": 2.0, "GRA": 2.6, "DBF": 2.8, "ENF": 2.2, "MF": 2.5}
DEEP_ROOTED = ("DBF", "ENF", "MF")


@dataclasses.dataclass
class Weather:
  """Daily series (D,) from `dates[0]` on; radiation in W m-2 (daily means), VPD in hPa."""
  dates: np.ndarray                  # datetime64[D]
  cloudiness: np.ndarray             # 0 clear .. 1 overcast
  sw_in: np.ndarray
  sw_in_pot: np.ndarray
  ta: np.ndarray                     # deg C
  vpd: np.ndarray                    # hPa
  precip: np.ndarray                 # mm d-1
  surface_soil_moisture: np.ndarray  # m3 m-3, 0-5 cm
  water_supply: np.ndarray           # root-zone factor, 1 = unstressed
  swc_percent: np.ndarray            # sensor at ~5-10 cm
  spring_anomaly_c: dict[int, float]


def top_of_atmosphere_mj(lat: float, doy: np.ndarray) -> np.ndarray:
  """FAO-56 eq. 21: daily extraterrestrial radiation, MJ m-2 d-1."""
  phi, angle = np.deg2rad(lat), 2 * np.pi * doy / 365.0
  dr, decl = 1 + 0.033 * np.cos(angle), 0.409 * np.sin(angle - 1.39)
  ws = np.arccos(np.clip(-np.tan(phi) * np.tan(decl), -1, 1))
  return 24 * 60 / np.pi * 0.082 * dr * (ws * np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.sin(ws))


def saturation_vapour_pressure_hpa(ta: np.ndarray) -> np.ndarray:
  return 6.1078 * np.exp(17.27 * ta / (ta + 237.3))


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
  """Unit-variance AR(1) series."""
  innovations = rng.standard_normal(n) * np.sqrt(1 - phi ** 2)
  z = np.empty(n)
  z[0] = rng.standard_normal()
  for i in range(1, n):
    z[i] = phi * z[i - 1] + innovations[i]
  return z


def make_weather(rng: np.random.Generator, lat: float, lon: float, first_day: np.datetime64,
                 n_days: int) -> Weather:
  n = n_days + SPIN_UP_DAYS
  dates = first_day - np.timedelta64(SPIN_UP_DAYS, "D") + np.arange(n).astype("timedelta64[D]")
  doy = (dates - dates.astype("datetime64[Y]")).astype(int) + 1.0
  summer = np.cos(2 * np.pi * (doy - 200) / 365.25)   # +1 mid-July, -1 mid-January
  # Cloudiness: a persistent latent variable mapped onto clear / partly cloudy / overcast climatology.
  mean_cover = np.clip(0.57 + 0.004 * (lat - 50) - 0.13 * summer, 0.3, 0.85)
  p_clear, p_overcast = 0.45 * (1 - mean_cover), 0.55 * mean_cover - 0.15
  u = ndtr(_ar1(rng, n, 0.55))
  cloudiness = np.clip((u - p_clear) / (1 - p_clear - p_overcast), 0.0, 1.0)
  rain_probability = np.clip(0.1 + 1.2 * (cloudiness - 0.45), 0, 0.9) * (cloudiness > 0.3)
  rainy = rng.uniform(size=n) < rain_probability
  precip = np.where(rainy, rng.gamma(0.75, 7.0, n) * (1 + 0.4 * np.maximum(summer, 0)), 0.0)
  # Temperature: climate from latitude (cooler north) and longitude (more continental east).
  t_mean, t_amp = 10.5 - 0.55 * (lat - 48), 7.5 + 0.12 * lon + 0.1 * (lat - 45)
  synoptic = _ar1(rng, n, 0.85) * (3.5 - 1.0 * summer)
  cloud_effect = (cloudiness - 0.5) * (-3.0 * np.maximum(summer, 0) + 2.0 * np.maximum(-summer, 0))
  seasonal = t_mean + t_amp * summer
  ta = seasonal + synoptic + cloud_effect
  humidity = np.clip(0.65 + 0.22 * cloudiness - 0.1 * summer + 0.04 * rng.standard_normal(n), 0.35, 0.99)
  vpd = saturation_vapour_pressure_hpa(ta) * (1 - humidity)
  toa_mj = top_of_atmosphere_mj(lat, doy)
  sw_mj = toa_mj * (0.23 + 0.48 * (1 - cloudiness)) * np.exp(0.05 * rng.standard_normal(n))
  # Soil water: root-zone bucket with Priestley-Taylor demand, and a fast 0-5 cm layer.
  slope = 4098 * 0.6108 * np.exp(17.27 * ta / (ta + 237.3)) / (ta + 237.3) ** 2
  pet = 1.26 * slope / (slope + 0.066) * np.maximum(0.6 * sw_mj - 1.0, 0) / 2.45
  store, surface = np.empty(n), np.empty(n)
  w, theta = 0.9 * BUCKET_MM, 0.3
  for i in range(n):
    w = float(np.clip(w + precip[i] - pet[i] * min(1.0, w / (0.6 * BUCKET_MM)), 0, BUCKET_MM))
    equilibrium = 0.08 + 0.25 * w / BUCKET_MM
    tau = 1.5 + 6.0 * np.exp(-pet[i] / 1.5)
    theta = min(equilibrium + (theta - equilibrium) * np.exp(-1 / tau) + 0.012 * precip[i], 0.45)
    store[i], surface[i] = w, theta
  keep = slice(SPIN_UP_DAYS, None)
  years = dates.astype("datetime64[Y]").astype(int) + 1970
  spring = (doy >= 60) & (doy <= 120)
  spring_anomaly = {int(y): float(np.mean((ta - seasonal)[spring & (years == y)]))
                    for y in np.unique(years[spring])}
  return Weather(
      dates=dates[keep], cloudiness=cloudiness[keep], sw_in=(sw_mj / 0.0864)[keep],
      sw_in_pot=(toa_mj / 0.0864)[keep], ta=ta[keep], vpd=vpd[keep], precip=precip[keep],
      surface_soil_moisture=surface[keep], water_supply=np.clip(store / (0.5 * BUCKET_MM), 0, 1)[keep],
      swc_percent=(100 * (0.5 * surface + 0.5 * (0.08 + 0.3 * store / BUCKET_MM)))[keep],
      spring_anomaly_c=spring_anomaly)


def light_use_efficiency_gpp(weather: Weather, fapar: np.ndarray, lue: np.ndarray,
                             land_cover: str) -> np.ndarray:
  """Daily GPP (gC m-2 d-1) from fAPAR and LUE (gC MJ-1) of the tower footprint, (D,)."""
  par_mj = 0.45 * weather.sw_in * 0.0864
  t_min, t_opt = TEMPERATURE_RANGE[land_cover]
  f_temperature = np.clip((weather.ta - t_min) / (t_opt - t_min), 0, 1) * np.clip((40 - weather.ta) / 10, 0, 1)
  f_vpd = 1 - 0.7 * np.clip((weather.vpd - 6.5) / (35 - 6.5), 0, 1)
  f_water = (0.5 + 0.5 * weather.water_supply) if land_cover in DEEP_ROOTED else (0.3 + 0.7 * weather.water_supply)
  return lue * fapar * par_mj * f_temperature * f_vpd * f_water


def _half_hour_fraction(x: np.ndarray) -> np.ndarray:
  return np.round(np.clip(x, 0, 1) * 48) / 48


def _outages(rng: np.random.Generator, n: int, per_year: float, min_len: int, max_len: int) -> np.ndarray:
  down = np.zeros(n, bool)
  for _ in range(rng.poisson(per_year * n / 365.0)):
    start = rng.integers(n)
    down[start:start + rng.integers(min_len, max_len + 1)] = True
  return down


def flux_table(rng: np.random.Generator, weather: Weather, gpp: np.ndarray, land_cover: str) -> dict[str, np.ndarray]:
  """FLUXNET2015 FULLSET DD columns (FLUX_COLUMNS) with noise, QC fractions and -9999 gaps."""
  n = weather.dates.size
  summer = np.cos(2 * np.pi * ((weather.dates - weather.dates.astype("datetime64[Y]")).astype(int) - 199) / 365.25)
  met_down = _outages(rng, n, 0.5, 2, 8)
  met_qc = np.where(met_down, 0.0, np.where(rng.uniform(size=n) < 0.03, rng.uniform(0.5, 0.98, n), 1.0))
  flux_qc = rng.beta(7, 2, n) - 0.2 * (weather.precip > 2) - 0.1 * (summer < -0.5)
  flux_down = _outages(rng, n, 1.5, 3, 20)
  flux_qc = _half_hour_fraction(np.where(flux_down, rng.uniform(0, 0.15, n), flux_qc))
  # Gap-filled days are noisier; NT and DT partitionings share part of their error.
  noise_scale = 0.35 * (2.0 - flux_qc)
  shared = rng.standard_normal(n)
  gpp_nt = gpp * (1 + 0.07 * rng.standard_normal(n)) + noise_scale * shared
  gpp_dt = gpp * (1.03 + 0.04 * rng.standard_normal(n)) + noise_scale * (0.7 * shared + 0.71 * rng.standard_normal(n))
  reco = RESPIRATION_10C[land_cover] * 2.0 ** ((weather.ta - 10) / 10) * (0.4 + 0.6 * weather.water_supply) + 0.2 * gpp
  reco_nt = reco * (1 + 0.08 * rng.standard_normal(n))
  reco_dt = reco * (1 + 0.1 * rng.standard_normal(n))
  nee = reco_nt - gpp_nt
  nt_gap, dt_gap = rng.uniform(size=n) < 0.005, rng.uniform(size=n) < 0.01
  dt_gap[rng.integers(n, size=2)] = True   # every file has some missing partitioning days
  swc, swc_qc = weather.swc_percent + 0.5 * rng.standard_normal(n), met_qc.copy()
  if rng.uniform() < 0.8:
    swc_down = _outages(rng, n, 365.0 / n, 10, 40)
    swc[swc_down], swc_qc[swc_down] = MISSING, MISSING
  stamp = weather.dates.astype(str)
  return {
      "TIMESTAMP": np.char.replace(stamp, "-", ""),
      "TA_F": weather.ta, "TA_F_QC": _half_hour_fraction(met_qc),
      "SW_IN_POT": weather.sw_in_pot, "SW_IN_F": weather.sw_in, "SW_IN_F_QC": _half_hour_fraction(met_qc),
      "VPD_F": weather.vpd, "VPD_F_QC": _half_hour_fraction(met_qc),
      "P_F": weather.precip, "P_F_QC": np.where(met_down, 0.0, 1.0),
      "SWC_F_MDS_1": swc, "SWC_F_MDS_1_QC": np.where(swc_qc == MISSING, MISSING, _half_hour_fraction(swc_qc)),
      "NEE_VUT_REF": nee, "NEE_VUT_REF_QC": flux_qc,
      "RECO_NT_VUT_REF": np.where(nt_gap, MISSING, reco_nt), "GPP_NT_VUT_REF": np.where(nt_gap, MISSING, gpp_nt),
      "RECO_DT_VUT_REF": np.where(dt_gap, MISSING, reco_dt), "GPP_DT_VUT_REF": np.where(dt_gap, MISSING, gpp_dt),
  }


def flux_file_name(site_id: str, first_year: int, last_year: int) -> str:
  return f"FLX_{site_id}_FLUXNET2015_FULLSET_DD_{first_year}-{last_year}_1-4.csv"


def write_flux_csv(table: dict[str, np.ndarray], path: Path) -> Path:
  """Writes the columns as FLUXNET does: plain CSV, TIMESTAMP YYYYMMDD, -9999 for missing values."""
  columns = []
  for name in FLUX_COLUMNS:
    values = table[name]
    if name == "TIMESTAMP":
      columns.append(values.astype(str))
      continue
    text = np.char.mod("%.6g" if name.endswith("_QC") else "%.4f", values.astype(np.float64))
    columns.append(np.where(values == MISSING, "-9999", text))
  rows = [",".join(row) for row in zip(*columns)]
  path.parent.mkdir(parents=True, exist_ok=True)
  atomic.write_text(path, ",".join(FLUX_COLUMNS) + "\n" + "\n".join(rows) + "\n")
  return path
