"""Daily tower GPP (gC m-2 d-1) with a quality mask from FLUXNET, ICOS and AmeriFlux files.

Formats (detected from the columns, not the file name):
* `fluxnet_dd`: FLUXNET2015 / FLUXNET2020 (Warm Winter) FULLSET or SUBSET DD, and the `*_FLUXNET_DD_L2.csv`
  of an ICOS ETC L2 ARCHIVE (same columns): `TIMESTAMP` YYYYMMDD, GPP already in gC m-2 d-1.
* `fluxnet_hh`: the HH (30 min) / HR (60 min) files of the same products (`TIMESTAMP_START`/`_END`,
  `GPP_NT_VUT_REF` in umol m-2 s-1), summed to days.
* `ameriflux_base`: AmeriFlux BASE half-hourly (`TIMESTAMP_START`/`_END`, `# Site:` header lines). Uses the
  first of GPP_PI_F, GPP_PI, GPP_F, GPP (then any `GPP_PI_F_1_1_1`-style qualified one); BASE files without a
  GPP column are refused (NEE partitioning is out of scope).
* `icos_archive`: an ICOS ETC L2 ARCHIVE zip; its FLUXNET DD member is read (else HH, aggregated).

Quality: the QC column that belongs to the variable. GPP_{NT,DT}_{VUT,CUT}_{REF,50,...} is partitioned from
NEE_{VUT,CUT}_{REF,...}, whose `_QC` column is, in DD files, the fraction of measured or good-quality gap-filled
half-hours (0-1), and per half-hour a class (0 measured, 1 good, 2 medium, 3 poor gap-fill). A day is
`qc_ok` when that fraction is >= `min_good_fraction` (default 0.7, the reference's threshold of 70, but on the
right column; the reference took the first column containing "QC", TA_F_QC in FULLSET files) and, for
sub-daily files, when >= `min_valid_fraction` (default 0.8) of the day's steps have a GPP value (partial first
and last days therefore fail). AmeriFlux BASE has no QC column for GPP: `qc_fraction` is the fraction of steps
with a measured FC (FC_SSITC_TEST <= 1 where present), reported but not used unless `min_good_fraction_base`
is set. Sub-daily -> daily: sum of GPP x 12.011e-6 g/umol x step seconds (1800 or 3600) over the day's steps,
scaled by steps_per_day / valid steps when a few are missing. Days are those of TIMESTAMP_START in the file's
own clock, which is local standard time (no daylight saving) in FLUXNET, ICOS and AmeriFlux; no UTC shift is
applied (satellite acquisitions near 10:30 local fall on the same day). -9999 (and -9999.0) mean missing.

Meteorological drivers (every format): daily `sw_in_w_m2` (shortwave in, W m-2, daily mean), `ta_c` (air
temperature, deg C, daily mean) and `vpd_hpa` (vapour pressure deficit, hPa, daily mean), each with `<name>_qc`,
the fraction (0-1) of the day's steps that are measured or good gap-fill. Columns, first present:
SW_IN_F, SW_IN_F_MDS, SW_IN; TA_F, TA_F_MDS, TA; VPD_F, VPD_F_MDS, VPD (FLUXNET/ICOS; QC in `<column>_QC`: a
fraction in DD files, classes 0-3 per step in HH/HR, 0/1 counting as good); AmeriFlux BASE: SW_IN_PI_F,
SW_IN_F, SW_IN (then `_1_1_1`-style qualified ones), likewise TA and VPD, QC = share of steps with a value.
Without a VPD column, VPD is derived from TA and RH (%): es(TA) (1 - RH/100), es by the Magnus formula
(FAO-56 eq. 11, in hPa). Sub-daily drivers are daily means over the day's steps, NaN when fewer than
`min_valid_fraction` of them have a value. A driver the file lacks is an all-NaN column with the reason in
`attrs["meteo"]`; `require_meteo` turns that into a FluxFormatError naming the file and the columns tried.
TA above 150 is refused as kelvin.
Duplicated timestamps: identical rows are dropped and counted (`attrs["duplicates_dropped"]`); rows that
share a timestamp but differ are refused (FluxFormatError naming the first such timestamp).

`python -m earthrep.flux FILE --out daily.csv` (earthrep/flux.py) writes OUTPUT_COLUMNS.
"""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from earthrep.errors import EarthrepError

MISSING = -9999.0
GRAMS_C_PER_UMOL = 12.011e-6
DEFAULT_MIN_GOOD_FRACTION = 0.7
DEFAULT_MIN_VALID_FRACTION = 0.8
FLUXNET_GPP_COLUMNS = ("GPP_NT_VUT_REF", "GPP_DT_VUT_REF", "GPP_NT_CUT_REF", "GPP_DT_CUT_REF")
BASE_GPP_COLUMNS = ("GPP_PI_F", "GPP_PI", "GPP_F", "GPP")
FORMATS = ("fluxnet_dd", "fluxnet_hh", "ameriflux_base", "icos_archive")
# Meteorological drivers: output name -> (FLUXNET/ICOS columns, AmeriFlux BASE columns, units).
METEO = {"sw_in_w_m2": (("SW_IN_F", "SW_IN_F_MDS", "SW_IN"), ("SW_IN_PI_F", "SW_IN_F", "SW_IN"), "W m-2"),
         "ta_c": (("TA_F", "TA_F_MDS", "TA"), ("TA_PI_F", "TA_F", "TA"), "deg C"),
         "vpd_hpa": (("VPD_F", "VPD_F_MDS", "VPD"), ("VPD_PI_F", "VPD_F", "VPD"), "hPa")}
RH_COLUMNS = (("RH",), ("RH_PI_F", "RH_F", "RH"))
OUTPUT_COLUMNS = ("date", "gpp", "qc_ok", "source_column", "qc_column", "qc_fraction", "valid_fraction",
                  *[c for name in METEO for c in (name, f"{name}_qc")])


class FluxFormatError(EarthrepError):
  """A flux file that is unknown, broken or lacks what is needed; the message names file and column."""


def _error(path: object, column: str, message: str) -> FluxFormatError:
  return FluxFormatError(f"{path}: column {column}: {message}")


# ---------------------------------------------------------------------------------------------
# Raw text -> table.
# ---------------------------------------------------------------------------------------------
def _text_of(path: Path) -> tuple[str, str]:
  """(csv text, name) of a CSV or of the FLUXNET DD (else HH) member of an ICOS archive zip."""
  if not path.exists():
    raise _error(path, "-", "file does not exist")
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      names = [n for n in archive.namelist() if n.lower().endswith(".csv")]
      for pattern in ("_FLUXNET_DD_", "_FLUXNET_HH_", "_FLUXNET_HR_"):
        hits = sorted(n for n in names if pattern in n.upper())
        if hits:
          return archive.read(hits[0]).decode("utf-8", "replace"), f"{path}!{hits[0]}"
    raise _error(path, "-", f"zip holds no ICOS FLUXNET DD/HH csv (members: {names[:8]})")
  try:
    return path.read_text(encoding="utf-8", errors="replace"), str(path)
  except OSError as e:
    raise _error(path, "-", f"unreadable ({e})") from e


def _header_and_table(text: str, where: str) -> tuple[list[str], pd.DataFrame]:
  lines = text.splitlines()
  start = 0
  while start < len(lines) and (not lines[start].strip() or lines[start].lstrip().startswith("#")):
    start += 1
  comments = [l for l in lines[:start] if l.startswith("#")]
  if start >= len(lines):
    raise _error(where, "-", "no header line (empty file?)")
  try:
    table = pd.read_csv(io.StringIO("\n".join(lines[start:])), na_values=["-9999", "-9999.0", "-9999.00"],
                        dtype={"TIMESTAMP": str, "TIMESTAMP_START": str, "TIMESTAMP_END": str},
                        low_memory=False)
  except Exception as e:   # pandas raises many types for broken CSVs
    raise _error(where, "-", f"not a readable CSV ({type(e).__name__}: {e})") from e
  table.columns = [str(c).strip() for c in table.columns]
  return comments, table


def detect_format(columns: Sequence[str], comments: Sequence[str] = ()) -> str:
  columns = set(columns)
  if "TIMESTAMP" in columns and "TIMESTAMP_START" not in columns:
    return "fluxnet_dd"
  if {"TIMESTAMP_START", "TIMESTAMP_END"} <= columns:
    if any(c in columns for c in FLUXNET_GPP_COLUMNS) and not any(c.startswith("#") for c in comments):
      return "fluxnet_hh"
    return "ameriflux_base"
  raise ValueError("no TIMESTAMP (daily) or TIMESTAMP_START/TIMESTAMP_END (sub-daily) column")


# ---------------------------------------------------------------------------------------------
# Column choice.
# ---------------------------------------------------------------------------------------------
def qc_column_for(gpp_column: str) -> str:
  """GPP_NT_VUT_REF -> NEE_VUT_REF_QC: the QC of the NEE that the GPP was partitioned from."""
  match = re.fullmatch(r"GPP_(?:NT|DT)_(VUT|CUT)_(\w+)", gpp_column)
  if not match:
    raise ValueError(f"no QC rule for {gpp_column!r} (expected GPP_NT|DT_VUT|CUT_<REF|50|...>)")
  return f"NEE_{match.group(1)}_{match.group(2)}_QC"


def _first_gpp_column(table: pd.DataFrame, where: str, requested: str | None,
                      candidates: tuple[str, ...] | list[str]) -> str | None:
  """The requested column (must exist), else the first candidate present, else None."""
  if requested:
    if requested not in table.columns:
      raise _error(where, requested, "requested GPP column not in file")
    return requested
  return next((name for name in candidates if name in table.columns), None)


def _fluxnet_gpp_column(table: pd.DataFrame, where: str, requested: str | None) -> str:
  name = _first_gpp_column(table, where, requested, FLUXNET_GPP_COLUMNS)
  if name:
    return name
  raise _error(where, "GPP_NT_VUT_REF", f"no GPP column (tried {', '.join(FLUXNET_GPP_COLUMNS)})")


def _base_gpp_column(table: pd.DataFrame, where: str, requested: str | None) -> str:
  name = _first_gpp_column(table, where, requested, BASE_GPP_COLUMNS)
  if name:
    return name
  qualified = sorted(c for c in table.columns if re.fullmatch(r"GPP(_PI)?(_F)?(_\d+){1,3}", c))
  if qualified:
    return qualified[0]
  raise _error(where, "GPP_PI_F", "AmeriFlux BASE file has no GPP column (GPP_PI_F, GPP_PI, GPP_F, GPP); "
               "earthrep does not partition NEE itself")


def _numeric(table: pd.DataFrame, column: str, where: str) -> np.ndarray:
  values = pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64, copy=True)
  bad = table[column].notna().to_numpy() & np.isnan(values)
  if bad.any():
    raise _error(where, column, f"non-numeric value {table[column][bad].iloc[0]!r}")
  values[values <= MISSING + 0.5] = np.nan    # any -9999 variant pandas did not catch
  return values


def _timestamps(table: pd.DataFrame, column: str, fmt: str, where: str) -> pd.DatetimeIndex:
  text = table[column].astype(str).str.strip().str.replace(r"\.0$", "", regex=True)
  try:
    return pd.DatetimeIndex(pd.to_datetime(text, format=fmt))
  except (ValueError, TypeError) as e:
    raise _error(where, column, f"timestamps not in {fmt} ({e})") from e


# ---------------------------------------------------------------------------------------------
# Readers.
# ---------------------------------------------------------------------------------------------
def _frame(dates, gpp, qc_fraction, valid_fraction, ok, source: str, qc: str) -> pd.DataFrame:
  return pd.DataFrame({"date": pd.DatetimeIndex(dates).normalize(), "gpp": np.asarray(gpp, np.float64),
                       "qc_ok": np.asarray(ok, bool), "source_column": source, "qc_column": qc,
                       "qc_fraction": np.asarray(qc_fraction, np.float64),
                       "valid_fraction": np.asarray(valid_fraction, np.float64)})


def _read_dd(table: pd.DataFrame, where: str, gpp_column: str | None, min_good_fraction: float) -> pd.DataFrame:
  column = _fluxnet_gpp_column(table, where, gpp_column)
  dates = _timestamps(table, "TIMESTAMP", "%Y%m%d", where)
  gpp = _numeric(table, column, where)
  qc_name = qc_column_for(column)
  if qc_name not in table.columns:
    raise _error(where, qc_name, f"QC column of {column} missing")
  qc = _numeric(table, qc_name, where)
  if np.nanmax(qc, initial=0.0) > 1.1:    # some exports give percent
    qc = qc / 100.0
  valid = np.isfinite(gpp).astype(float)
  ok = np.isfinite(gpp) & (np.nan_to_num(qc, nan=-1.0) >= min_good_fraction)
  return _frame(dates, gpp, qc, valid, ok, column, qc_name)


def _daily_sum(start: pd.DatetimeIndex, gpp_umol: np.ndarray, good: np.ndarray | None, where: str
               ) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray, np.ndarray]:
  """Sums umol m-2 s-1 steps into gC m-2 d-1; returns dates, gpp, good fraction, valid fraction."""
  if len(start) < 2:
    raise _error(where, "TIMESTAMP_START", "fewer than two sub-daily rows")
  step_s = float(np.median(np.diff(start.values.astype("datetime64[s]").astype(np.int64))))
  if step_s not in (1800.0, 3600.0):
    raise _error(where, "TIMESTAMP_START", f"step {step_s:.0f} s; expected 1800 (HH) or 3600 (HR)")
  steps_per_day = int(round(86400 / step_s))
  frame = pd.DataFrame({"gpp": gpp_umol * GRAMS_C_PER_UMOL * step_s, "valid": np.isfinite(gpp_umol),
                        "good": np.nan if good is None else good.astype(float)},
                       index=start.normalize())
  frame = frame[~start.duplicated()]
  grouped = frame.groupby(level=0)
  valid_fraction = grouped["valid"].sum() / steps_per_day
  gpp = grouped["gpp"].sum(min_count=1) / valid_fraction.where(valid_fraction > 0)
  good_fraction = grouped["good"].sum(min_count=1) / steps_per_day
  return pd.DatetimeIndex(valid_fraction.index), gpp.to_numpy(), good_fraction.to_numpy(), valid_fraction.to_numpy()


def _read_hh(table: pd.DataFrame, where: str, gpp_column: str | None, min_good_fraction: float,
             min_valid_fraction: float) -> pd.DataFrame:
  column = _fluxnet_gpp_column(table, where, gpp_column)
  qc_name = qc_column_for(column)
  if qc_name not in table.columns:
    raise _error(where, qc_name, f"QC column of {column} missing")
  start = _timestamps(table, "TIMESTAMP_START", "%Y%m%d%H%M", where)
  qc = _numeric(table, qc_name, where)
  dates, gpp, good, valid = _daily_sum(start, _numeric(table, column, where), np.isin(qc, (0, 1)), where)
  ok = np.isfinite(gpp) & (valid >= min_valid_fraction) & (np.nan_to_num(good, nan=-1) >= min_good_fraction)
  return _frame(dates, gpp, good, valid, ok, column, qc_name)


def _read_base(table: pd.DataFrame, where: str, gpp_column: str | None, min_valid_fraction: float,
               min_good_fraction_base: float | None) -> pd.DataFrame:
  column = _base_gpp_column(table, where, gpp_column)
  start = _timestamps(table, "TIMESTAMP_START", "%Y%m%d%H%M", where)
  measured, qc_name = None, ""
  fc = next((c for c in ("FC", "FC_1_1_1", "NEE_PI", "NEE") if c in table.columns), None)
  if fc:
    measured = np.isfinite(_numeric(table, fc, where))
    qc_name = fc
    if f"{fc}_SSITC_TEST" in table.columns:
      measured &= np.nan_to_num(_numeric(table, f"{fc}_SSITC_TEST", where), nan=9) <= 1
      qc_name = f"{fc}_SSITC_TEST"
  dates, gpp, good, valid = _daily_sum(start, _numeric(table, column, where), measured, where)
  ok = np.isfinite(gpp) & (valid >= min_valid_fraction)
  if min_good_fraction_base is not None:
    ok &= np.nan_to_num(good, nan=-1) >= min_good_fraction_base
  return _frame(dates, gpp, good, valid, ok, column, qc_name)


# ---------------------------------------------------------------------------------------------
# Duplicates and meteorology.
# ---------------------------------------------------------------------------------------------
def _dedupe(table: pd.DataFrame, column: str, where: str) -> tuple[pd.DataFrame, int]:
  """Drops rows that repeat an earlier row exactly; refuses rows that share a timestamp but differ."""
  key = table[column].astype(str).str.strip()
  if not key.duplicated().any():
    return table, 0
  exact = table.assign(**{column: key}).duplicated(keep="first")
  kept, key = table[~exact], key[~exact]
  clash = key.duplicated(keep=False)
  if clash.any():
    first = key[clash].iloc[0]
    rows = kept[key == first]
    differ = [c for c in rows.columns if c != column and rows[c].nunique(dropna=False) > 1]
    raise _error(where, column, f"{key[clash].nunique()} timestamps appear more than once with different "
                 f"values (first {first}: {', '.join(differ[:4])} differ); remove the duplicated rows")
  return kept.reset_index(drop=True), int(exact.sum())


def saturation_vapour_pressure_hpa(ta_c: np.ndarray) -> np.ndarray:
  """Magnus formula (FAO-56 eq. 11) in hPa."""
  return 6.108 * np.exp(17.27 * ta_c / (ta_c + 237.3))


def _meteo_column(table: pd.DataFrame, candidates: Sequence[str], base: bool) -> str | None:
  found = next((c for c in candidates if c in table.columns), None)
  if found or not base:
    return found
  stem = candidates[-1]
  qualified = sorted(c for c in table.columns if re.fullmatch(rf"{stem}(_PI)?(_F)?(_\d+){{1,3}}", c))
  return qualified[0] if qualified else None


def _steps(table: pd.DataFrame, column: str, base: bool, daily: bool, where: str) -> tuple[np.ndarray, np.ndarray]:
  """Values of a driver column and, per row, whether it is measured or good gap-fill (DD: the fraction)."""
  values = _numeric(table, column, where)
  qc_name = f"{column}_QC"
  if base or qc_name not in table.columns:
    return values, np.isfinite(values).astype(float)
  qc = _numeric(table, qc_name, where)
  if daily:
    return values, np.where(qc > 1.1, qc / 100.0, qc)
  return values, np.isin(qc, (0, 1)).astype(float)


def _daily_meteo(table: pd.DataFrame, where: str, fmt: str, min_valid_fraction: float
                 ) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
  """Daily drivers (index: day) with their QC fractions, and per driver its column, QC and units."""
  base, daily = fmt == "ameriflux_base", fmt == "fluxnet_dd"
  if daily:
    days, steps_per_day = _timestamps(table, "TIMESTAMP", "%Y%m%d", where), 1
  else:
    start = _timestamps(table, "TIMESTAMP_START", "%Y%m%d%H%M", where)
    seconds = start.values.astype("datetime64[s]").astype(np.int64)
    step_s = float(np.median(np.diff(seconds))) if len(start) > 1 else 1800.0
    days, steps_per_day = start.normalize(), int(round(86400 / max(step_s, 1.0)))
  raw, info = {}, {}
  for name, (fluxnet, ameriflux, units) in METEO.items():
    candidates = ameriflux if base else fluxnet
    column = _meteo_column(table, candidates, base)
    if column is None:
      rh_note = " (or RH with TA)" if name == "vpd_hpa" else ""
      info[name] = {"missing": f"{' / '.join(candidates)}{rh_note}", "units": units}
      continue
    raw[name] = _steps(table, column, base, daily, where)
    qc = "" if base or f"{column}_QC" not in table.columns else f"{column}_QC"
    info[name] = {"column": column, "qc_column": qc, "units": units}
  if "ta_c" in raw and np.nanmedian(raw["ta_c"][0]) > 150:
    raise _error(where, info["ta_c"]["column"], f"median {np.nanmedian(raw['ta_c'][0]):.1f}: looks like kelvin; "
                 "expected deg C")
  rh = _meteo_column(table, RH_COLUMNS[base], base)
  if "vpd_hpa" not in raw and rh and "ta_c" in raw:   # VPD from relative humidity
    rh_values, rh_good = _steps(table, rh, base, daily, where)
    ta, ta_good = raw["ta_c"]
    raw["vpd_hpa"] = (saturation_vapour_pressure_hpa(ta) * (1 - np.clip(rh_values, 0, 100) / 100.0),
                      np.minimum(ta_good, rh_good))
    info["vpd_hpa"] = {"column": f"es({info['ta_c']['column']}) * (1 - {rh}/100)", "qc_column": "",
                       "units": "hPa"}
  frame = {}
  for name, (values, good) in raw.items():
    part = pd.DataFrame({"v": values, "ok": np.isfinite(values), "good": good}, index=days)
    grouped = part.groupby(level=0)
    enough = grouped["ok"].sum() / steps_per_day >= (min_valid_fraction if not daily else 1.0)
    frame[name] = grouped["v"].mean().where(enough)
    frame[f"{name}_qc"] = grouped["good"].sum(min_count=1) / steps_per_day
  return pd.DataFrame(frame), info


def require_meteo(daily: pd.DataFrame, names: Sequence[str] = tuple(METEO)) -> None:
  """Raises FluxFormatError naming the file and the columns tried for each driver it lacks."""
  info = daily.attrs.get("meteo", {})
  missing = [n for n in names if n not in daily.columns or not np.isfinite(daily[n]).any()]
  if missing:
    columns = " and ".join(info.get(n, {}).get("missing") or info.get(n, {}).get("column", n) for n in missing)
    raise FluxFormatError(f"{daily.attrs.get('path', 'flux file')}: column {columns}: no value for "
                          f"{', '.join(missing)} ({', '.join(METEO[n][2] for n in missing)}); the meteorology "
                          "models need shortwave radiation, air temperature and VPD")


def read_daily_gpp(path: str | Path, *, gpp_column: str | None = None,
                   min_good_fraction: float = DEFAULT_MIN_GOOD_FRACTION,
                   min_valid_fraction: float = DEFAULT_MIN_VALID_FRACTION,
                   min_good_fraction_base: float | None = None) -> pd.DataFrame:
  """Any supported file -> one row per day: OUTPUT_COLUMNS; attrs: "format" (the detected format), "path",
  "meteo" (per driver its column, QC column and units, or why it is missing), "duplicates_dropped"."""
  path = Path(path)
  text, where = _text_of(path)
  comments, table = _header_and_table(text, where)
  try:
    fmt = detect_format(table.columns, comments)
  except ValueError as e:
    raise _error(where, "TIMESTAMP", f"unknown flux format: {e}; columns {list(table.columns)[:8]}") from e
  if table.empty:
    raise _error(where, "-", "no data rows")
  table, dropped = _dedupe(table, "TIMESTAMP" if fmt == "fluxnet_dd" else "TIMESTAMP_START", where)
  if fmt == "fluxnet_dd":
    daily = _read_dd(table, where, gpp_column, min_good_fraction)
  elif fmt == "fluxnet_hh":
    daily = _read_hh(table, where, gpp_column, min_good_fraction, min_valid_fraction)
  else:
    daily = _read_base(table, where, gpp_column, min_valid_fraction, min_good_fraction_base)
  meteo, info = _daily_meteo(table, where, fmt, min_valid_fraction)
  for name in METEO:
    for column in (name, f"{name}_qc"):
      values = meteo[column] if column in meteo else pd.Series(dtype=float)
      daily[column] = values.reindex(pd.DatetimeIndex(daily["date"])).to_numpy(np.float64)
  daily = daily.sort_values("date").reset_index(drop=True)
  daily.attrs.update(format="icos_archive" if zipfile.is_zipfile(path) else fmt, path=str(path), meteo=info,
                     duplicates_dropped=dropped)
  return daily


def site_id_of(path: str | Path) -> str:
  """FLX_DE-Hai_..., AMF_US-Tw3_..., ICOSETC_FR-Hes_... -> the site id (CC-Xxx), else the stem."""
  match = re.search(r"(?:FLX|AMF|ICOSETC)_([A-Za-z]{2}-[A-Za-z0-9]{3,})_", Path(path).name)
  return match.group(1) if match else Path(path).stem
