"""STAC catalogues for `build_cubes`: the catalogue table, band-name harmonisation, search and authentication.

A catalogue is a name from `CATALOGS` (earth-search, planetary-computer, cdse), a STAC API URL, or a local
static catalogue (a `catalog.json` path or `file://` URL, read with pystac; the search filters collection,
bbox, datetime and max cloud are then applied client-side). Every item is returned with its band assets
re-keyed to the canonical names of `BAND_NAMES` (S2_BANDS + "SCL", S1 "VV"/"VH") and absolute hrefs, so
one `odc.stac.load` call can mix items of several catalogues. Credentials come only from the environment
(`CDSE_S3_ACCESS_KEY` / `CDSE_S3_SECRET_KEY`, `PC_SDK_SUBSCRIPTION_KEY`); they are handed to GDAL in
memory and never logged: `describe_auth` names variables, never values. A catalogue URL keeps its
credentials only in `CatalogSpec.url` (to connect); its `name`, which logs and reports show, is redacted.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from earthrep.errors import EarthrepError
from earthrep.io import provenance
from earthrep.schema import S2_BANDS

SCL = "SCL"


class BuildError(EarthrepError):
  """A site or catalogue problem that stops one site (or, for catalogue set-up, the run)."""


# Canonical band -> asset key, per naming convention. Earth Search v1 uses common names, Planetary
# Computer the band ids, CDSE band id + native resolution (JP2 in the SAFE layout).
BAND_NAMES: dict[str, dict[str, str]] = {
    "earth-search": {"B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
                     "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22",
                     SCL: "scl"},
    "planetary-computer": {**{b: b for b in S2_BANDS}, SCL: "SCL", "VV": "vv", "VH": "vh"},
    "cdse": {"B02": "B02_10m", "B03": "B03_10m", "B04": "B04_10m", "B05": "B05_20m", "B06": "B06_20m",
             "B07": "B07_20m", "B08": "B08_10m", "B8A": "B8A_20m", "B11": "B11_20m", "B12": "B12_20m",
             SCL: "SCL_20m"},
}
S2_ASSETS = S2_BANDS + (SCL,)


@dataclasses.dataclass(frozen=True)
class CatalogSpec:
  name: str
  url: str
  s2_collection: str
  s1_collection: str | None   # RTC gamma0 collection, None where the catalogue has none
  auth: str                   # "none", "planetary-computer" or "cdse"


CATALOGS: dict[str, CatalogSpec] = {
    "earth-search": CatalogSpec("earth-search", "https://earth-search.aws.element84.com/v1",
                                "sentinel-2-c1-l2a", None, "none"),
    "planetary-computer": CatalogSpec("planetary-computer", "https://planetarycomputer.microsoft.com/api/stac/v1",
                                      "sentinel-2-l2a", "sentinel-1-rtc", "planetary-computer"),
    "cdse": CatalogSpec("cdse", "https://stac.dataspace.copernicus.eu/v1", "sentinel-2-l2a", None, "cdse"),
}
CDSE_S3_ENDPOINT = "eodata.dataspace.copernicus.eu"
CDSE_KEY_VARS = ("CDSE_S3_ACCESS_KEY", "CDSE_S3_SECRET_KEY")
PC_KEY_VAR = "PC_SDK_SUBSCRIPTION_KEY"
AUTH_MODES = ("none", "planetary-computer", "cdse")


def _local_path(catalog: str) -> Path | None:
  path = Path(catalog[len("file://"):] if catalog.startswith("file://") else catalog)
  return path if path.suffix == ".json" or path.is_dir() or path.exists() else None


def resolve_catalog(catalog: str, s2_collection: str | None = None, s1_collection: str | None = None) -> CatalogSpec:
  """A name, an http(s) URL or a local catalog.json -> CatalogSpec; raises BuildError for anything else."""
  if catalog in CATALOGS:
    spec = CATALOGS[catalog]
  elif catalog.startswith(("http://", "https://")):   # the name (logs, report) never holds credentials
    spec = CatalogSpec(provenance.redact(catalog), catalog, "sentinel-2-l2a", "sentinel-1-rtc", "none")
  else:
    path = _local_path(catalog)
    if path is None or catalog.startswith(("s3://", "gs://")):
      raise BuildError(f"--catalog {provenance.redact(catalog)!r}: unknown catalogue; expected one of "
                       f"{sorted(CATALOGS)}, an http(s) STAC API URL or a local catalog.json")
    if path.is_dir():
      path = path / "catalog.json"
    if not path.is_file():
      raise BuildError(f"--catalog {catalog!r}: {path} does not exist")
    spec = CatalogSpec(f"local:{path}", str(path.resolve()), "sentinel-2-l2a", "sentinel-1-rtc", "none")
  return dataclasses.replace(spec, s2_collection=s2_collection or spec.s2_collection,
                             s1_collection=s1_collection if s1_collection is not None else spec.s1_collection)


def is_local(spec: CatalogSpec) -> bool:
  return spec.name.startswith("local:")


# ---------------------------------------------------------------------------------------------
# Authentication: environment only, never logged.
# ---------------------------------------------------------------------------------------------
def gdal_auth_options(auth: str) -> dict[str, Any]:
  """GDAL/rasterio options for reading the assets (passed in memory to odc.stac.configure_rio)."""
  if auth == "cdse":
    missing = [v for v in CDSE_KEY_VARS if not os.environ.get(v)]
    if missing:
      raise BuildError(f"CDSE assets are on S3: set {' and '.join(missing)} in the environment "
                       "(S3 keys from https://eodata-s3keysmanager.dataspace.copernicus.eu)")
    return {"AWS_S3_ENDPOINT": CDSE_S3_ENDPOINT, "AWS_VIRTUAL_HOSTING": "FALSE", "AWS_HTTPS": "YES",
            "AWS_REGION": "default"}
  if auth in ("none", "planetary-computer"):
    return {}   # PC assets are read through signed (SAS) URLs
  raise BuildError(f"--auth {auth!r}: expected one of {AUTH_MODES}")


def auth_environment(auth: str) -> dict[str, str]:
  """Process environment for GDAL's /vsis3/ (rasterio refuses AWS keys as config options without boto3)."""
  if auth != "cdse":
    return {}
  gdal_auth_options(auth)
  return {"AWS_ACCESS_KEY_ID": os.environ[CDSE_KEY_VARS[0]], "AWS_SECRET_ACCESS_KEY": os.environ[CDSE_KEY_VARS[1]]}


def describe_auth(auth: str) -> str:
  """What the log says about credentials: variable names and whether they are set, never values."""
  if auth == "cdse":
    return "S3 keys from " + ", ".join(f"${v} ({'set' if os.environ.get(v) else 'unset'})" for v in CDSE_KEY_VARS)
  if auth == "planetary-computer":
    return (f"planetary_computer.sign_inplace (${PC_KEY_VAR} "
            f"{'set' if os.environ.get(PC_KEY_VAR) else 'unset: anonymous rate limits'})")
  return "anonymous"


def secret_values() -> list[str]:
  """Credential values present in the environment (for redaction checks)."""
  return [os.environ[v] for v in (*CDSE_KEY_VARS, PC_KEY_VAR) if os.environ.get(v)]


# ---------------------------------------------------------------------------------------------
# Search.
# ---------------------------------------------------------------------------------------------
def _parse_time(value: str, end: bool) -> dt.datetime:
  t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
  if len(value) <= 10 and end:
    t = t + dt.timedelta(days=1) - dt.timedelta(microseconds=1)
  return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
  return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


class Searcher:
  """Opens a catalogue once; `search` returns harmonised items (copies) for one collection and site box."""

  def __init__(self, spec: CatalogSpec, auth: str | None = None):
    self.spec, self.auth = spec, auth or spec.auth
    gdal_auth_options(self.auth)   # fail early on missing credentials
    try:
      if is_local(spec):
        import pystac
        root = pystac.Catalog.from_file(spec.url)
        self._local_items = list(root.get_items(recursive=True))
        self._client = None
      else:
        import pystac_client
        modifier = None
        if self.auth == "planetary-computer":
          import planetary_computer
          modifier = planetary_computer.sign_inplace
        self._client = pystac_client.Client.open(spec.url, modifier=modifier)
    except ImportError as e:
      raise BuildError(f"--catalog {spec.name}: needs {e.name}; install the extra with "
                       "`pip install 'earthrep[stac]'`") from None
    except Exception as e:   # unreachable, not JSON, not a STAC catalogue: a set-up error for the whole run
      raise BuildError(f"--catalog {spec.name}: cannot open the catalogue "
                       f"({type(e).__name__}: {provenance.redact(str(e))})") from None

  def search(self, collection: str, bbox: Sequence[float], start: str, end: str,
             max_cloud: float | None = None) -> list[Any]:
    t0, t1 = _parse_time(start, False), _parse_time(end, True)
    if self._client is None:
      items = [it for it in self._local_items
               if it.collection_id == collection and it.bbox is not None and _overlaps(it.bbox, bbox)
               and it.datetime is not None and t0 <= it.datetime <= t1]
    else:
      found = self._client.search(collections=[collection], bbox=list(bbox),
                                  datetime=[t0.isoformat(), t1.isoformat()])
      items = list(found.items())
    # Cloud cover client-side: the query/filter extensions are not supported alike by every catalogue.
    items = [it for it in items if max_cloud is None or it.properties.get("eo:cloud_cover", 0.0) <= max_cloud]
    return sorted((harmonise_item(it) for it in items), key=lambda it: (it.datetime, it.id))


def harmonise_item(item: Any) -> Any:
  """A copy of `item` whose band assets are keyed by canonical name, with absolute hrefs."""
  item = item.clone()
  keys = set(item.assets)
  renamed = {}
  for table in BAND_NAMES.values():
    for canonical, key in table.items():
      if key in keys and canonical not in renamed:
        renamed[canonical] = key
  assets = {}
  for canonical, key in renamed.items():
    asset = item.assets[key].clone()
    asset.href = asset.get_absolute_href() or asset.href
    assets[canonical] = asset
  item.assets = assets
  for asset in assets.values():
    asset.owner = item
  return item


def require_assets(items: Iterable[Any], wanted: Sequence[str]) -> None:
  for item in items:
    missing = [b for b in wanted if b not in item.assets]
    if missing:
      raise BuildError(f"item {item.id}: missing asset(s) {missing} (after harmonising band names; known "
                       f"conventions: {sorted(BAND_NAMES)})")
    crs = {_asset_crs(item, b) for b in wanted} - {None}
    if len(crs) > 1:
      raise BuildError(f"item {item.id}: assets on mismatched grids (CRS {sorted(crs)})")


def _asset_crs(item: Any, band: str) -> str | None:
  props = {**item.properties, **item.assets[band].extra_fields}
  if props.get("proj:code"):
    return str(props["proj:code"])
  return f"EPSG:{props['proj:epsg']}" if props.get("proj:epsg") else None


def band_scale(item: Any, band: str) -> float:
  """The product scale of raster:bands (default 1/10000, the L2A QUANTIFICATION_VALUE)."""
  bands = item.assets[band].extra_fields.get("raster:bands") or [{}]
  return float(bands[0].get("scale", 1e-4))


def processing_baseline(item: Any) -> str | None:
  for key in ("s2:processing_baseline", "processing:version", "sentinel:processing_baseline"):
    if item.properties.get(key):
      return str(item.properties[key])
  return None


def boa_offset_dn(item: Any, from_date: np.datetime64, from_baseline: tuple[int, int],
                  parse: Callable[[str], tuple[int, int]]) -> float:
  """-1000 where the DNs carry BOA_ADD_OFFSET (baseline >= 04.00, else acquired on/after 2022-01-25).

  raster:bands `offset` is not used for this: Earth Search items are known to carry -0.1 whether or not
  the DNs were shifted (earth-search issues #66, #71); the processing baseline decides.
  """
  if item.properties.get("earthsearch:boa_offset_applied") is True:
    return 0.0   # Earth Search re-based these DNs to the pre-04.00 convention
  baseline = processing_baseline(item)
  if baseline is not None:
    return -1000.0 if parse(baseline) >= from_baseline else 0.0
  day = np.datetime64(item.datetime.replace(tzinfo=None), "D")
  return -1000.0 if day >= from_date else 0.0


def s1_metadata(item: Any) -> tuple[str | None, int]:
  direction = item.properties.get("sat:orbit_state")
  rel = item.properties.get("sat:relative_orbit")
  return (str(direction).lower() if direction else None), (int(rel) if rel is not None else -1)


def default_s1_catalog(spec: CatalogSpec) -> str:
  return spec.url if (spec.s1_collection and spec.name not in ("earth-search", "cdse")) else "planetary-computer"

