"""The Sentinel cube contract and the shard record layout, shared by every writer and reader.

A *site cube* is one site's S1 + S2 time series on a single UTM grid at 10 m. It lives in memory as
`SiteCube` and on disk as a Zarr store (`<site_dir>/cube.zarr`, written by `earthrep.io.cube`) or as a
folder of GeoTIFF/COG stacks. A *shard record* is one 15x15x11 training patch; its byte layout is
fixed by `RecordSpec` so that `data_prep.build_shards` (writer) and `earthrep.data` (reader) cannot
drift apart. Constants follow ../shared/reference/ARCHITECTURE.md sections a and f.

Dimension letters: t time, c channel/band, h/y row, w/x column, b batch. Patches are channels-last
(t, h, w, c) everywhere in earthrep; the reference's (t, c, h, w) appears only in parity/convert code.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------
# Bands, scaling and patch geometry.
# ---------------------------------------------------------------------------------------------
S2_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
S2_20M_BANDS: tuple[str, ...] = ("B05", "B06", "B07", "B8A", "B11", "B12")
S1_BANDS: tuple[str, ...] = ("VV", "VH")
FUSED_BANDS: tuple[str, ...] = S2_BANDS + S1_BANDS

PIXEL_SIZE_M = 10.0
PATCH_PX = 15            # H = W
PATCH_FRAMES = 11        # T
CENTRE_PX = PATCH_PX // 2      # 7
CENTRE_FRAME = PATCH_FRAMES // 2  # 5
MAX_SPAN_DAYS = 200      # samples keep S2 (or S1-only) spans strictly below this
AE_MAX_POSITION = 200    # rows of the stage-1 time table = AE_MAX_POSITION + 1
FUSION_MAX_POSITION = 350

S1_DB_MIN, S1_DB_MAX = -30.0, 5.0
S1_ROLLING_WINDOW = 3

# Cloud/shadow classes of the per-pixel mask (CloudSEN12 convention). Only CLEAR counts as valid.
CLOUD_CLEAR, CLOUD_THICK, CLOUD_THIN, CLOUD_SHADOW = 0, 1, 2, 3
CLOUD_NODATA = 255

ORBIT_DIRECTIONS = ("ascending", "descending")

# Names used on disk (Zarr variables / dims). Writers and readers use only these.
ZARR_NAME = "cube.zarr"
VAR_S2 = "s2_reflectance"        # (time_s2, band, y, x) float32 in [0, 1], NaN = no data
VAR_CLOUD = "cloud_mask"         # (time_s2, y, x) uint8, classes above
VAR_S1 = "s1_gamma0"             # (time_s1, polarisation, y, x) float32 linear power, NaN = no data
VAR_ORBIT = "s1_orbit_direction"  # (time_s1,) str
VAR_REL_ORBIT = "s1_relative_orbit"  # (time_s1,) int16, -1 if unknown
DIM_T2, DIM_T1, DIM_BAND, DIM_POL, DIM_Y, DIM_X = "time_s2", "time_s1", "band", "polarisation", "y", "x"


@dataclasses.dataclass(frozen=True)
class SiteMeta:
  site_id: str
  lon: float
  lat: float
  land_cover: str = ""          # e.g. an IGBP code such as "DBF"; empty if unknown


@dataclasses.dataclass
class SiteCube:
  """One site's S1 + S2 series on one grid. Arrays are numpy; times are datetime64[ns], increasing.

  `transform` is the affine (a, b, c, d, e, f) of rasterio (x = a*col + b*row + c, y = d*col + e*row + f)
  for the *pixel corners*; `crs` is any string rasterio.crs.CRS.from_user_input accepts (e.g. "EPSG:32632").
  """
  meta: SiteMeta
  crs: str
  transform: tuple[float, float, float, float, float, float]
  s2_reflectance: np.ndarray    # (t2, 10, h, w) float32
  cloud_mask: np.ndarray        # (t2, h, w) uint8
  s2_time: np.ndarray           # (t2,) datetime64[ns]
  s1_gamma0: np.ndarray         # (t1, 2, h, w) float32
  s1_time: np.ndarray           # (t1,) datetime64[ns]
  s1_orbit_direction: np.ndarray  # (t1,) str, one of ORBIT_DIRECTIONS
  s1_relative_orbit: np.ndarray | None = None  # (t1,) int16

  @property
  def shape_hw(self) -> tuple[int, int]:
    return tuple(self.s2_reflectance.shape[-2:])


# ---------------------------------------------------------------------------------------------
# Shard records: fixed-layout little-endian bytes, one record per patch.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Field:
  name: str
  dtype: str
  shape: tuple[int, ...]

  @property
  def nbytes(self) -> int:
    return int(np.dtype(self.dtype).itemsize * int(np.prod(self.shape, dtype=np.int64)))


MODALITIES = ("s1", "s2", "fused")


def _patch(c: int) -> tuple[int, ...]:
  return (PATCH_FRAMES, PATCH_PX, PATCH_PX, c)   # t h w c (channels last, as XLA likes)


_PROVENANCE = (Field("cube_index", "<i4", ()), Field("y0", "<i4", ()), Field("x0", "<i4", ()))


def record_fields(modality: str) -> tuple[Field, ...]:
  """Fields of one record. Patches are stored *before* filling (NaN = invalid); the loader fills.

  Day numbers are days since 1970-01-01 of the (floored) acquisition date, int32, one per frame.
  """
  s2 = (Field("s2", "<f4", _patch(len(S2_BANDS))), Field("s2_days", "<i4", (PATCH_FRAMES,)))
  s1 = (Field("s1", "<f4", _patch(len(S1_BANDS))), Field("s1_days", "<i4", (PATCH_FRAMES,)))
  if modality == "s2":
    return s2 + _PROVENANCE
  if modality == "s1":
    return s1 + _PROVENANCE
  if modality == "fused":
    # s1 frames are the S1 acquisitions nearest to each S2 date (repeats allowed); delta_days is
    # |S1 centre - S2 centre| in days under the rule chosen at shard-building time (see build_shards).
    return s2 + s1 + (Field("delta_days", "<i4", ()),) + _PROVENANCE
  raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")


def sensor_fields(sensor: str, channels: int) -> tuple[Field, ...]:
  """The two fields every sensor contributes to a record: its patch and its per-frame days."""
  return (Field(sensor, "<f4", _patch(channels)), Field(f"{sensor}_days", "<i4", (PATCH_FRAMES,)))


class RecordSpec:
  """Encodes/decodes records of one modality to/from bytes.

  The built-in modalities (s1, s2, fused) have fixed layouts; data of other sensors (see
  `earthrep.sensors`) use any modality name with explicit `fields` (e.g. from `sensor_fields`), and
  their readers rebuild the spec from the layout stored in the shard metadata (`from_layout`).
  """

  def __init__(self, modality: str, fields: Sequence[Field] | None = None):
    self.modality = modality
    self.fields = tuple(fields) if fields is not None else record_fields(modality)
    self.nbytes = sum(f.nbytes for f in self.fields)

  @classmethod
  def from_layout(cls, modality: str, layout: Sequence[Mapping[str, Any]]) -> "RecordSpec":
    return cls(modality, [Field(str(f["name"]), str(f["dtype"]), tuple(int(n) for n in f["shape"]))
                          for f in layout])

  @property
  def sensors(self) -> tuple[str, ...]:
    """Sensors present: every patch field with a `<name>_days` companion, in field order."""
    names = {f.name for f in self.fields}
    return tuple(f.name for f in self.fields if f"{f.name}_days" in names)

  def encode(self, example: Mapping[str, Any]) -> bytes:
    parts = []
    for f in self.fields:
      if f.name not in example:
        raise KeyError(f"record for modality {self.modality!r} is missing field {f.name!r}")
      arr = np.asarray(example[f.name])
      if arr.shape != f.shape:
        raise ValueError(f"field {f.name!r}: shape {arr.shape}, expected {f.shape}")
      parts.append(np.ascontiguousarray(arr, dtype=np.dtype(f.dtype)).tobytes())
    return b"".join(parts)

  def decode(self, record: bytes, where: str = "record") -> dict[str, np.ndarray]:
    if len(record) != self.nbytes:
      raise ValueError(f"{where}: {len(record)} bytes, expected {self.nbytes} for modality "
                       f"{self.modality!r} (corrupt or written with another layout)")
    out, offset = {}, 0
    for f in self.fields:
      n = f.nbytes
      out[f.name] = np.frombuffer(record, dtype=np.dtype(f.dtype), count=n // np.dtype(f.dtype).itemsize,
                                  offset=offset).reshape(f.shape)
      offset += n
    return out

  def layout(self) -> list[dict[str, Any]]:
    return [{"name": f.name, "dtype": f.dtype, "shape": list(f.shape)} for f in self.fields]


SHARD_METADATA = "metadata.json"
SHARD_FORMAT_VERSION = 1


def dumps_metadata(meta: Mapping[str, Any]) -> str:
  return json.dumps(meta, indent=2, sort_keys=True, default=str)


def datetime_to_days(t: np.ndarray) -> np.ndarray:
  """Floors datetime64 values to calendar days and returns days since 1970-01-01 as int64."""
  return np.asarray(t).astype("datetime64[D]").astype(np.int64)


def channel_names(modality: str) -> Sequence[str]:
  return {"s1": S1_BANDS, "s2": S2_BANDS, "fused": FUSED_BANDS}[modality]


# ---------------------------------------------------------------------------------------------
# Input fill: how NaNs in a patch are filled before it enters a model (part of a model's input contract;
# `earthrep.data.preprocess.fill_patches` implements both).
# ---------------------------------------------------------------------------------------------
FILL_MODES = ("window", "frame")


def check_fill(mode: str, name: str = "fill mode") -> None:
  """Raises ValueError naming `name` unless `mode` is one of FILL_MODES."""
  if mode not in FILL_MODES:
    raise ValueError(f"{name} {mode!r}: expected one of {FILL_MODES}")
