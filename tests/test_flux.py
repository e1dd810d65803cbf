"""earthrep.flux on vendored real files (tests/data/flux, see SOURCE.md) and format-faithful synthetic ones."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from earthrep.io import flux
from tests.conftest import run_module

DATA = Path(__file__).parent / "data" / "flux"
AR1_DD = DATA / "FLX_US-AR1_FLUXNET2015_SUBSET_DD_2009-2009_1-3.csv"
TW3_BASE = DATA / "AMF_US-Tw3_BASE_HH_5-5.csv"


def _raw(path: Path) -> pd.DataFrame:
  return pd.read_csv(path, comment="#", dtype={"TIMESTAMP": str, "TIMESTAMP_START": str})


def test_fluxnet_dd_real_values_and_qc_column():
  daily = flux.read_daily_gpp(AR1_DD)
  raw = _raw(AR1_DD)
  assert daily.attrs["format"] == "fluxnet_dd" and len(daily) == len(raw) == 181
  assert (daily["source_column"] == "GPP_NT_VUT_REF").all()
  # The QC of the variable, not the first "QC" column (TA_F_QC, which is 0 = measured all year here).
  assert (daily["qc_column"] == "NEE_VUT_REF_QC").all() and raw.columns[2] == "TA_F_QC"
  np.testing.assert_allclose(daily["gpp"], raw["GPP_NT_VUT_REF"], rtol=1e-12)
  np.testing.assert_array_equal(daily["qc_ok"], raw["NEE_VUT_REF_QC"].to_numpy() >= 0.7)
  row = daily.set_index("date").loc["2009-06-15"]
  assert row["gpp"] == pytest.approx(float(raw.set_index("TIMESTAMP").loc["20090615", "GPP_NT_VUT_REF"]))
  # Winter days of this file have NEE_VUT_REF_QC 0: no good half-hours.
  assert not daily.set_index("date").loc["2009-01-01", "qc_ok"]


def test_fluxnet_dd_missing_code(tmp_path):
  raw = _raw(AR1_DD)
  raw.loc[3, "GPP_NT_VUT_REF"] = -9999
  path = tmp_path / "FLX_US-AR1_FLUXNET2015_FULLSET_DD_2009-2009_1-3.csv"
  raw.to_csv(path, index=False)
  daily = flux.read_daily_gpp(path)
  assert np.isnan(daily["gpp"][3]) and not daily["qc_ok"][3]
  assert np.isfinite(daily["gpp"].drop(3)).all()


def test_ameriflux_base_daily_sum_by_hand():
  daily = flux.read_daily_gpp(TW3_BASE).set_index("date")
  raw = _raw(TW3_BASE)
  assert daily.attrs["format"] == "ameriflux_base"
  day = raw[raw["TIMESTAMP_START"].str.startswith("20130601")]
  assert len(day) == 48
  umol = day["GPP_PI_F"].astype(float).to_numpy()
  expected = umol.sum() * 12.011e-6 * 1800      # umol m-2 s-1 -> gC m-2 per half-hour, summed
  assert daily.loc["2013-06-01", "gpp"] == pytest.approx(expected, rel=1e-9)
  assert 5 < expected < 30 and daily.loc["2013-06-01", "source_column"] == "GPP_PI_F"
  # Before the tower was installed (2013-05-24) every value is -9999: NaN, not qc_ok.
  assert np.isnan(daily.loc["2013-05-20", "gpp"]) and not daily.loc["2013-05-20", "qc_ok"]
  assert daily.loc["2013-06-01", "qc_ok"]


def test_ameriflux_partial_day_and_scaling(tmp_path):
  lines = TW3_BASE.read_text().splitlines()
  header_end = next(i for i, l in enumerate(lines) if l.startswith("TIMESTAMP_START"))
  body = [l for l in lines[header_end + 1:] if not l.startswith("20130602")]
  body += [l for l in lines[header_end + 1:] if l.startswith("2013060200") or l.startswith("2013060201")][:4]
  path = tmp_path / "AMF_US-Tw3_BASE_HH_5-5.csv"
  path.write_text("\n".join(lines[:header_end + 1] + sorted(body)) + "\n")
  daily = flux.read_daily_gpp(path).set_index("date")
  assert daily.loc["2013-06-02", "valid_fraction"] == pytest.approx(4 / 48)
  assert not daily.loc["2013-06-02", "qc_ok"]                      # < 80 % of the half-hours
  loose = flux.read_daily_gpp(path, min_valid_fraction=0.05).set_index("date")
  assert loose.loc["2013-06-02", "qc_ok"]


def test_base_without_gpp_is_refused(tmp_path):
  raw = _raw(TW3_BASE).drop(columns=["GPP_PI_F"])
  path = tmp_path / "AMF_US-Tw3_BASE_HH_5-5.csv"
  path.write_text("# Site: US-Tw3\n# Version: 5-5\n" + raw.to_csv(index=False))
  with pytest.raises(flux.FluxFormatError, match=r"AMF_US-Tw3_BASE_HH_5-5.csv: column GPP_PI_F: .*no GPP"):
    flux.read_daily_gpp(path)


def _fluxnet_hh(step_min: int, days: int = 3) -> pd.DataFrame:
  start = pd.date_range("2018-07-01", periods=days * 24 * 60 // step_min, freq=f"{step_min}min")
  gpp = np.full(len(start), 10.0)   # 10 umol m-2 s-1 all day
  qc = np.zeros(len(start))
  qc[: len(start) // days // 2] = 3    # first half of day 1: poor gap-fill
  return pd.DataFrame({"TIMESTAMP_START": start.strftime("%Y%m%d%H%M"),
                       "TIMESTAMP_END": (start + pd.Timedelta(minutes=step_min)).strftime("%Y%m%d%H%M"),
                       "TA_F_QC": 0, "NEE_VUT_REF": -5.0, "NEE_VUT_REF_QC": qc, "GPP_NT_VUT_REF": gpp,
                       "GPP_DT_VUT_REF": -9999})


@pytest.mark.parametrize("step_min,name", [(30, "FLX_DE-Hai_FLUXNET2015_FULLSET_HH_2018-2018_beta-3.csv"),
                                           (60, "FLX_US-Ha1_FLUXNET2015_FULLSET_HR_2018-2018_1-4.csv")])
def test_fluxnet_subdaily_aggregation(tmp_path, step_min, name):
  path = tmp_path / name
  _fluxnet_hh(step_min).to_csv(path, index=False)
  daily = flux.read_daily_gpp(path)
  assert daily.attrs["format"] == "fluxnet_hh" and len(daily) == 3
  np.testing.assert_allclose(daily["gpp"], 10.0 * 12.011e-6 * 86400)     # 10.38 gC m-2 d-1
  np.testing.assert_allclose(daily["qc_fraction"], [0.5, 1.0, 1.0])
  np.testing.assert_array_equal(daily["qc_ok"], [False, True, True])


def test_icos_archive_zip(tmp_path):
  dd = pd.DataFrame({"TIMESTAMP": ["20200101", "20200102"], "TA_F_QC": [0, 0], "NEE_VUT_REF_QC": [0.9, 0.5],
                     "GPP_NT_VUT_REF": [1.5, -9999.0], "GPP_DT_VUT_REF": [1.2, 1.1]})
  path = tmp_path / "ICOSETC_FR-Hes_ARCHIVE_L2.zip"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("ICOSETC_FR-Hes_FLUXNET_HH_L2.csv", _fluxnet_hh(30).to_csv(index=False))
    archive.writestr("ICOSETC_FR-Hes_FLUXNET_DD_L2.csv", dd.to_csv(index=False))
    archive.writestr("ICOSETC_FR-Hes_SITEINFO_L2.csv", "SITE_ID,VARIABLE\nFR-Hes,x\n")
  daily = flux.read_daily_gpp(path)
  assert daily.attrs["format"] == "icos_archive" and flux.site_id_of(path) == "FR-Hes"
  np.testing.assert_array_equal(daily["qc_ok"], [True, False])
  assert daily["gpp"][0] == 1.5 and np.isnan(daily["gpp"][1])


def test_unknown_and_broken_files(tmp_path):
  unknown = tmp_path / "weather.csv"
  unknown.write_text("date,temp\n2020-01-01,3\n")
  with pytest.raises(flux.FluxFormatError, match=r"weather.csv: column TIMESTAMP: unknown flux format"):
    flux.read_daily_gpp(unknown)
  broken = tmp_path / "FLX_XX-Brk_FLUXNET2015_FULLSET_DD_2020-2020_1-4.csv"
  broken.write_text("TIMESTAMP,NEE_VUT_REF_QC,GPP_NT_VUT_REF\n20200101,1,abc\n")
  with pytest.raises(flux.FluxFormatError, match=r"column GPP_NT_VUT_REF: non-numeric"):
    flux.read_daily_gpp(broken)
  no_qc = tmp_path / "FLX_XX-Nqc_FLUXNET2015_FULLSET_DD_2020-2020_1-4.csv"
  no_qc.write_text("TIMESTAMP,TA_F_QC,GPP_NT_VUT_REF\n20200101,1,2.0\n")
  with pytest.raises(flux.FluxFormatError, match=r"column NEE_VUT_REF_QC: QC column of GPP_NT_VUT_REF missing"):
    flux.read_daily_gpp(no_qc)
  with pytest.raises(flux.FluxFormatError, match="does not exist"):
    flux.read_daily_gpp(tmp_path / "nothing.csv")


def test_cli(tmp_path):
  out = tmp_path / "daily.csv"
  run_module("earthrep.flux", str(TW3_BASE), "--out", str(out))
  daily = pd.read_csv(out)
  assert list(daily.columns[:4]) == ["date", "gpp", "qc_ok", "source_column"]
  assert daily["date"].iloc[0] == "2013-05-20" and len(daily) == 42
  bad = tmp_path / "bad.csv"
  bad.write_text("a,b\n1,2\n")
  import subprocess
  import sys
  proc = subprocess.run([sys.executable, "-m", "earthrep.flux", str(bad), "--out", str(out)],
                        capture_output=True, text=True)
  assert proc.returncode == 2 and "bad.csv: column TIMESTAMP" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Meteorological drivers, duplicates and the CLI's own-input / existing-output rules.
# ---------------------------------------------------------------------------------------------
def test_meteo_fluxnet_dd_real_values():
  daily = flux.read_daily_gpp(AR1_DD)
  raw = _raw(AR1_DD)
  for name, column in (("sw_in_w_m2", "SW_IN_F"), ("ta_c", "TA_F"), ("vpd_hpa", "VPD_F")):
    np.testing.assert_allclose(daily[name], raw[column].where(raw[column] > -9999), rtol=1e-12)
    np.testing.assert_allclose(daily[f"{name}_qc"], raw[f"{column}_QC"])
    assert daily.attrs["meteo"][name]["column"] == column
  assert daily.attrs["meteo"]["vpd_hpa"]["units"] == "hPa" and daily.attrs["meteo"]["ta_c"]["units"] == "deg C"
  row = daily.set_index("date").loc["2009-06-15"]
  assert 0 < row["sw_in_w_m2"] < 500 and 5 < row["ta_c"] < 40
  flux.require_meteo(daily)                                 # all three present: no error


def test_meteo_ameriflux_base_real_values_and_missing_vpd():
  daily = flux.read_daily_gpp(TW3_BASE).set_index("date")
  raw = _raw(TW3_BASE)
  day = raw[raw["TIMESTAMP_START"].str.startswith("20130601")]
  assert daily.loc["2013-06-01", "sw_in_w_m2"] == pytest.approx(day["SW_IN"].astype(float).mean(), rel=1e-9)
  assert daily.loc["2013-06-01", "ta_c"] == pytest.approx(day["TA"].astype(float).mean(), rel=1e-9)
  assert daily.loc["2013-06-01", "ta_c_qc"] == 1.0                  # every half-hour has a value
  assert np.isnan(daily.loc["2013-05-20", "ta_c"])                  # before the tower: all -9999
  assert daily["vpd_hpa"].isna().all()                              # this BASE subset has neither VPD nor RH
  with pytest.raises(flux.FluxFormatError, match=r"AMF_US-Tw3_BASE_HH_5-5.csv: column VPD_PI_F / VPD_F / VPD "
                                                 r"\(or RH with TA\): no value for vpd_hpa"):
    flux.require_meteo(flux.read_daily_gpp(TW3_BASE))


def test_meteo_from_relative_humidity_and_half_hourly_qc(tmp_path):
  table = _fluxnet_hh(30, days=2)
  n = len(table)
  table["TA_F"], table["SW_IN_F"], table["RH"] = 20.0, np.tile(np.r_[np.zeros(24), np.full(24, 400.0)], 2), 60.0
  table["TA_F_QC"] = np.r_[np.full(12, 2), np.zeros(n - 12)]        # day 1: 12 medium-quality gap-fills
  table["SW_IN_F_QC"] = 0
  path = tmp_path / "FLX_DE-Hai_FLUXNET2015_FULLSET_HH_2018-2018_beta-3.csv"
  table.to_csv(path, index=False)
  daily = flux.read_daily_gpp(path)
  es = 6.108 * np.exp(17.27 * 20 / (20 + 237.3))
  np.testing.assert_allclose(daily["vpd_hpa"], es * 0.4)            # VPD = es(TA) (1 - RH/100)
  np.testing.assert_allclose(daily["sw_in_w_m2"], 200.0)            # daily mean of night and day
  np.testing.assert_allclose(daily["ta_c_qc"], [36 / 48, 1.0])      # QC 0/1 count as good
  assert "RH" in daily.attrs["meteo"]["vpd_hpa"]["column"]


def test_meteo_in_kelvin_is_refused(tmp_path):
  raw = _raw(AR1_DD)
  raw["TA_F"] = raw["TA_F"] + 273.15
  path = tmp_path / AR1_DD.name
  raw.to_csv(path, index=False)
  with pytest.raises(flux.FluxFormatError, match=r"column TA_F: median 2\d\d\.\d: looks like kelvin"):
    flux.read_daily_gpp(path)


def test_duplicated_dates(tmp_path):
  raw = _raw(AR1_DD)
  same = tmp_path / "same.csv"
  pd.concat([raw, raw.iloc[[10, 20]]]).to_csv(same, index=False)
  daily = flux.read_daily_gpp(same)
  assert len(daily) == 181 and daily.attrs["duplicates_dropped"] == 2 and daily["date"].is_monotonic_increasing
  clash = raw.iloc[[10]].copy()
  clash["GPP_NT_VUT_REF"] = 99.0
  differing = tmp_path / "differing.csv"
  pd.concat([raw, clash]).to_csv(differing, index=False)
  with pytest.raises(flux.FluxFormatError, match=r"differing.csv: column TIMESTAMP: 1 timestamps appear more than "
                                                 r"once with different values \(first 20090111: GPP_NT_VUT_REF"):
    flux.read_daily_gpp(differing)


def test_cli_refuses_its_own_input_and_an_existing_output(tmp_path):
  import subprocess
  import sys
  source = tmp_path / AR1_DD.name
  source.write_bytes(AR1_DD.read_bytes())
  before = source.read_bytes()
  cmd = [sys.executable, "-m", "earthrep.flux"]
  proc = subprocess.run([*cmd, str(source), "--out", str(source), "--overwrite"], capture_output=True, text=True)
  assert proc.returncode == 2 and "is the input file" in proc.stderr and source.read_bytes() == before
  out = tmp_path / "daily.csv"
  out.write_text("mine\n")
  proc = subprocess.run([*cmd, str(source), "--out", str(out)], capture_output=True, text=True)
  assert proc.returncode == 2 and "pass --overwrite" in proc.stderr and out.read_text() == "mine\n"
  proc = subprocess.run([*cmd, str(source), "--out", str(out), "--overwrite"], capture_output=True, text=True)
  assert proc.returncode == 0 and "ta_c from TA_F (deg C)" in proc.stdout
  written = pd.read_csv(out)
  assert list(written.columns) == list(flux.OUTPUT_COLUMNS) and written["vpd_hpa"].notna().all()
