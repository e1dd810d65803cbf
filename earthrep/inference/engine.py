"""Embedding engines for one tile of windows: the naive reference path and the fast path.

Naive (the ground truth, as the reference runs it): every (pixel, window) patch is gathered, NaN-filled
as the model was trained (`preprocess.fill_patches` with the model's `fill`) and sent through the full
fusion forward, decoders included.
Fast (default): (a) only `FusionModel.embed` runs (no decoders); (b) the conv-encoder feature of every
(date, pixel) crop that is the same in every window holding it is computed once per tile and reused by
all of them; (c) fixed batch shapes (last batch padded), jitted once per shape and sharded over the local
devices on the `data` mesh axis. The cached features enter the model's own code through
`FusionModel.embed_from_features`, so the transformer and fusion layers are the model's own; an
autoencoder with a centre path (`TransformerAE.centre_path`) also gets each crop's filled centre pixel,
read from the series and the crop's or window's fill (`_filled_centres`). Which crops can be shared depends
on the fill:
* "frame" (earthrep's default): a crop is filled from its own frame, so every crop is shared; a hidden
  frame (any-day centre) or a crop without any valid value is all zeros and they share one feature.
* "window" (the reference's fill): a crop with an invalid value is filled with its window's mean, which
  differs between windows, so those crops are encoded once per window; the window means come from 15x15
  box sums of valid values per date (no patch is materialised for a clean crop). The gain then depends on
  the clouds (see benchmarks/embed_speed.py).
(d) The crops of one date overlap (neighbouring pixels share 14 of 15 rows and columns), so the cached
crops of a date also share the encoder's first layers (`models.crop_share`): conv0 and block 1's
convolutions run once over the date's whole local grid, and each crop gathers its values (at the crop's
edge classes) and adds the term of its own holes; only the rest of the encoder runs per crop. This covers
every crop whose pixels are each valid in all bands or in none; the others (mixed bands, +-inf) and dates
with too few crops to pay for the maps (`Engine.share_px_per_crop`) use the plain encoder. On a CPU the
maps go to the host and numpy gathers the crops (XLA's CPU gather is much slower); elsewhere the gather
runs inside the jitted function.
(e) The shared crops run as a pipeline: the maps of the next group of dates are queued before the host
gathers this group's crops, and each call's crops are gathered while the previous call runs; on a CPU
they are gathered into 64-byte-aligned buffers, which the device takes without a copy
(`parallel.host_empty`), and each call encodes up to `CROP_BATCHES_PER_CALL` batches of `conv_batch`
crops in a loop inside the compiled function (`_batched`).
Both return the engine's `embedding` (n_windows, ty, tx, width) for the output pixels of a tile, NaN where the
pixel-window is invalid: "fused" = the fused embedding zf (the model's bottleneck width), or a sensor name =
that sensor's own stage-1 autoencoder code z (the single-sensor embeddings the evaluation compares with).

Dimension letters: n windows, k frames, q valid (window, pixel) pairs, p tile pixels, t dates, c channels.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from earthrep import parallel, sensors
from earthrep.data import preprocess
from earthrep.data.windows import HIDDEN, Merged, Windows, gather_patches, pixel_valid
from earthrep.errors import EarthrepError
from earthrep.models import crop_share
from earthrep.models.fusion import FusionModel
from earthrep.schema import CENTRE_FRAME, CENTRE_PX, PATCH_FRAMES, PATCH_PX
from earthrep.training import tasks

CUBE_SENSORS = ("s1", "s2")   # what a site cube provides (schema.SiteCube)
CROP_BATCHES_PER_CALL = 4     # see Engine.crops_per_call
GROUP_BATCHES = 32   # crop batches per group of dates in `_shared_features` (fewer padded batches)


class ModelError(EarthrepError):
  """The model does not fit the cube; the message names the model dir / cube and the field."""


def load_fusion(model_dir: str | os.PathLike) -> tuple[FusionModel, Any]:
  """(FusionModel, params) from a fusion workdir (`best/<step>`) or a converted checkpoint (`0/`)."""
  return tasks.load_fusion(os.fspath(model_dir), error=ModelError)


def check_model(model: FusionModel, where: str = "model") -> None:
  """Raises ModelError unless the model fuses S2 (+ optional S1) with the cube's band counts."""
  unknown = [s for s in model.sensors if s not in CUBE_SENSORS]
  if unknown or "s2" not in model.sensors:
    raise ModelError(f"{where}: sensors: {list(model.sensors)}; cubes provide s2 (required) and s1")
  try:
    _ = model.fill
  except ValueError as e:
    raise ModelError(f"{where}: autoencoders.*.fill: {e}") from None
  for s, ae in zip(model.sensors, model.autoencoders):
    channels = sensors.get(s).channels
    if ae.channels != channels:
      raise ModelError(f"{where}: autoencoders.{s}.channels: {ae.channels}, but the cube has "
                       f"{channels} {s.upper()} bands")


def default_batch(model: FusionModel, devices: int = 1) -> int:
  """Windows per batch from the available memory (a quarter of it for activations of the full forward)."""
  try:
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    avail = 4 << 30
  widest = max(max(ae.widths) + ae.d_model // 4 for ae in model.autoencoders)
  per_window = PATCH_FRAMES * PATCH_PX * PATCH_PX * widest * 4 * 24 * len(model.sensors)
  batch = int(np.clip(avail // 4 // per_window, 8, 512))
  batch = 1 << (batch.bit_length() - 1)
  return max(devices, batch - batch % devices)


def cpu_conv_batch(model: FusionModel) -> int:
  """Crops per conv-encoder call on a CPU: as many as keep one 15x15 activation of the widest block within
  ~5 MiB (cache-sized): 128 at the runlocal widths, 32 at the reference's, where 32 crops per call encode
  ~1.4x faster per crop than 128 (measured, benchmarks/embed_speed.py)."""
  widest = max(ae.widths[0] for ae in model.autoencoders)
  fits = (5 << 20) // (PATCH_PX * PATCH_PX * widest * 4)
  return int(np.clip(1 << (max(int(fits), 1).bit_length() - 1), 16, 128))


def default_share_px_per_crop(model: FusionModel) -> int:
  """Grid pixels per crop above which a date's block-1 maps pay: the widest block-1 width. A date's maps
  cost about as much as encoding (plainly, minus the shared remainder) one crop per this many pixels of
  its grid; measured on a 2-core CPU (benchmarks/embed_speed.py): 18-33 at the runlocal widths (32) and
  ~170 at the reference's (149), where the maps cost 44 us per pixel and a crop 7.9 ms plain, 0.53 ms
  shared."""
  return max(16, max(ae.widths[0] for ae in model.autoencoders))


def offsets_for(model: FusionModel, delta_n: np.ndarray) -> np.ndarray:
  """(n, K) fusion pair-position rows of windows with these delta_days (`sensors.fusion_offsets`)."""
  return sensors.fusion_offsets(model.sensors, {"delta_days": delta_n}, len(delta_n))


@dataclasses.dataclass
class Engine:
  """A model with its jitted, mesh-sharded functions; counts calls for tests and benchmarks."""
  model: FusionModel
  params: Any
  batch: int
  mesh: Any = None
  conv_batch: int = 0   # crops per conv-encoder call; 0: by width on CPU (`cpu_conv_batch`), 4 x batch elsewhere
  # Clean crops of a date share conv0 and block 1 (`models.crop_share`) when the date has at least one
  # crop per `share_px_per_crop` pixels of the local grid; 0 disables the sharing; None: the widest
  # block-1 width (`default_share_px_per_crop`).
  share_px_per_crop: int | None = None
  embedding: str = "fused"   # what the tile functions return: "fused" (zf) or a fused sensor's code z
  # Where crop sharing gathers each crop's values from the date maps: "host" (numpy; XLA's CPU gather is
  # ~30x slower), "device" (inside the jitted function, for accelerators), "auto" = host on CPU.
  gather: str = "auto"
  calls: dict = dataclasses.field(default_factory=dict)   # function name -> calls (and "tiles")

  def __post_init__(self):
    check_model(self.model)
    if self.embedding != "fused" and self.embedding not in self.model.sensors:
      raise ModelError(f"embedding {self.embedding!r}: expected 'fused' or one of the model's sensors "
                       f"{list(self.model.sensors)}")
    self.mesh = self.mesh or parallel.make_mesh()
    n_dev = self.mesh.devices.size
    self.batch = max(n_dev, self.batch - self.batch % n_dev)
    if not self.conv_batch:
      cpu = self.mesh.devices.flat[0].platform == "cpu"
      self.conv_batch = cpu_conv_batch(self.model) * n_dev if cpu else self.batch * 4
    self.conv_batch = max(n_dev, self.conv_batch - self.conv_batch % n_dev)
    if self.share_px_per_crop is None:
      self.share_px_per_crop = default_share_px_per_crop(self.model)
    self.params = parallel.replicate(self.params, self.mesh)
    model = self.model
    self.full_fn = jax.jit(functools.partial(_full, model))
    self.conv_fns = {s: jax.jit(lambda p, crops, s=s: _conv(model, s, p, crops)) for s in model.sensors}
    self.tail_fn = jax.jit(functools.partial(_tail, model, self.embedding))
    # crop_share reads the encoders' first layers in its own layouts, laid out once here
    self.prepared = {s: jax.jit(crop_share.prepare)(self.params[f"ae_{s}"]["conv_encoder"]) for s in model.sensors}
    self.map_fns = {s: jax.jit(crop_share.block1_maps) for s in model.sensors}
    # crop_share: on CPU the maps come to the host and numpy gathers the crops (XLA's CPU gather is slow)
    if self.gather not in ("auto", "host", "device"):
      raise ModelError(f"gather {self.gather!r}: expected 'auto', 'host' or 'device'")
    self.host_gather = (self.mesh.devices.flat[0].platform == "cpu" if self.gather == "auto"
                        else self.gather == "host")
    # Crop-sharing encodes run `crops_per_call` crops per call, as a loop over batches of `conv_batch`
    # inside the compiled function (fewer dispatches and transfers, cache-sized batches); one device only
    # (the loop would split a sharded batch axis).
    self.crops_per_call = self.conv_batch * (CROP_BATCHES_PER_CALL if n_dev == 1 else 1)
    self.crop_fns = {(s, holes): jax.jit(functools.partial(
        _batched, functools.partial(_crop_encode, ae, s, holes, self.host_gather), self.conv_batch))
                     for s, ae in zip(model.sensors, model.autoencoders) for holes in (False, True)}
    self._empty_features: dict[str, np.ndarray] = {}

  @property
  def width(self) -> int:
    """Width of the embedding the tile functions return."""
    if self.embedding == "fused":
      return self.model.bottleneck
    return self.model.autoencoders[self.model.sensors.index(self.embedding)].bottleneck

  def output_key(self) -> str:
    return "zf" if self.embedding == "fused" else f"z_{self.embedding}"

  def empty_feature(self, sensor: str) -> np.ndarray:
    """Conv-encoder feature of an all-zero crop (a hidden or empty frame under "frame" fill), computed once."""
    if sensor not in self._empty_features:
      ae = self.model.autoencoders[self.model.sensors.index(sensor)]
      zeros = np.zeros((1, PATCH_PX, PATCH_PX, ae.channels), np.float32)
      self._empty_features[sensor] = self.run(self.conv_fns[sensor], f"conv_{sensor}", self.conv_batch,
                                              {"crops": zeros})[0]
    return self._empty_features[sensor]

  def run(self, fn: Callable, name: str, batch: int, arrays: dict[str, np.ndarray], **fixed) -> Any:
    """fn(params, **fixed, **arrays) over the arrays' leading axis in fixed batches (last one padded),
    concatenated."""
    return self.collect(self.dispatch(fn, name, batch, arrays, **fixed))

  def dispatch(self, fn: Callable, name: str, batch: int, arrays: dict[str, np.ndarray], per_call: int = 0,
               **fixed) -> list:
    """`run` without waiting: the batches are queued on the devices; `collect` fetches them, so the host
    can prepare the next arrays meanwhile. With `per_call`, fn takes up to that many rows per call, padded
    to a multiple of `batch` (`_batched`); `calls` counts batches either way."""
    n = len(next(iter(arrays.values())))
    outs = []
    for start in range(0, n, per_call or batch):
      chunk = {k: v[start:start + (per_call or batch)] for k, v in arrays.items()}
      m = len(next(iter(chunk.values())))
      size = -(-m // batch) * batch
      if m < size:
        chunk = {k: np.concatenate([v, np.repeat(v[:1], size - m, axis=0)]) for k, v in chunk.items()}
      out = fn(self.params, **fixed, **parallel.host_batch_to_global(chunk, self.mesh))
      self.calls[name] = self.calls.get(name, 0) + size // batch
      outs.append((out, m))
    return outs

  @staticmethod
  def collect(outs: list) -> Any:
    """The concatenated results of `dispatch`."""
    return jax.tree.map(lambda *xs: np.concatenate(xs), *[jax.tree.map(lambda a, m=m: np.asarray(a)[:m], out)
                                                           for out, m in outs])


def _full(model, p, inputs, offsets, valid=None):
  out = model.apply({"params": p}, inputs, offsets, train=False, valid=valid)
  if "centre" in out:   # a centre head answers for the centre pixel and day (FusionModel.centre_head)
    recon = out["centre"]["s2"]
  else:
    recon = out["recon"]["s2"][:, CENTRE_FRAME, CENTRE_PX, CENTRE_PX, :]
  return {"zf": out["zf"], **{f"z_{s}": z for s, z in out["z"].items()}, "s2_reflectance": recon}


def _conv(model, sensor, p, crops):
  ae = model.autoencoders[model.sensors.index(sensor)]
  return ae.apply({"params": p[f"ae_{sensor}"]}, crops, method=lambda m, x: m.conv_encoder(x, train=False))


def _batched(fn: Callable, batch: int, p: Any, prep: Any, maps: Any = None, **arrays) -> Any:
  """fn(p, prep=prep, maps=maps, **arrays) over arrays of a multiple of `batch` rows, one batch at a time
  (`lax.map`)."""
  m = len(next(iter(arrays.values()))) // batch
  call = lambda a: fn(p, prep=prep, maps=maps, **a)
  if m == 1:
    return call(arrays)
  out = jax.lax.map(call, {k: v.reshape((m, batch) + v.shape[1:]) for k, v in arrays.items()})
  return out.reshape((m * batch,) + out.shape[2:])


def _crop_encode(ae, sensor, holes, host_gather, p, fill, prep, maps=None, slot=None, y0=None, x0=None,
                 **gathered):
  if host_gather:   # crops gathered on the host: a0, valid, t0, t1, ...
    crops = {"a0": gathered["a0"], "valid": gathered["valid"],
             "t": [gathered[f"t{i}"] for i in range(len(gathered) - 2)]}
  else:
    crops = crop_share.gather(maps, slot, y0, x0, jnp)
  return crop_share.encode(ae, p[f"ae_{sensor}"], prep, crops, fill if holes else None)


def _tail(model, embedding, p, feats, gaps, offsets, centres=None):
  """The engine's embedding from precomputed per-frame conv features (`FusionModel.embed_from_features`);
  `centres` holds the filled centre pixels of the sensors whose autoencoder has a centre path (every sensor
  for a fusion with pixel tokens)."""
  centres = centres or {}
  features = {s: (feats[s], gaps[s], *([centres[s]] if s in centres else [])) for s in model.sensors}
  out = model.apply({"params": p}, features, offsets, method=FusionModel.embed_from_features)
  return out["zf"] if embedding == "fused" else out["z"][embedding]


def _series(merged: Merged, windows: Windows, sensor: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  if sensor == "s2":
    return merged.s2_thwc, windows.s2_frames, windows.gaps_s2
  return merged.s1_uhwc, windows.s1_frames, windows.gaps_s1


def _filled_centres(series: np.ndarray, safe_qk: np.ndarray, shown_qk: np.ndarray, p_qk: np.ndarray,
                    rows: np.ndarray, cols: np.ndarray, fill_qkc: np.ndarray) -> np.ndarray:
  """The centre pixel (rows[p_qk], cols[p_qk]) of every (window, frame) crop after `preprocess.fill_patches`
  (q, k, c) float32: the observed value of a shown frame, else `fill_qkc`, its crop's or window's fill."""
  raw_qkc = np.where(shown_qk[..., None], series[safe_qk, rows[p_qk], cols[p_qk]], np.nan)
  return np.where(np.isnan(raw_qkc), fill_qkc, raw_qkc).astype(np.float32)


def _tile_pixels(ty: int, tx: int) -> tuple[np.ndarray, np.ndarray]:
  """Local patch-centre rows/cols of the tile's output pixels (the local grid has a 7-px halo)."""
  rr, cc = np.meshgrid(np.arange(ty) + CENTRE_PX, np.arange(tx) + CENTRE_PX, indexing="ij")
  return rr.ravel(), cc.ravel()


def full_forward(engine: Engine, merged: Merged, windows: Windows, w_q: np.ndarray, rows_q: np.ndarray,
                 cols_q: np.ndarray) -> dict[str, np.ndarray]:
  """Naive: the full fusion forward of each (window, centre pixel) pair -> {'zf', 'z_<sensor>',
  's2_reflectance'}."""
  model = engine.model
  out = []
  for start in range(0, len(w_q), engine.batch):
    sl = slice(start, start + engine.batch)
    w = w_q[sl]
    arrays = {}
    for s in model.sensors:
      series, frames, gaps = _series(merged, windows, s)
      filled, mask = preprocess.fill_patches(gather_patches(series, frames[w], rows_q[sl], cols_q[sl]),
                                             model.fill)
      arrays[f"{s}_x"], arrays[f"{s}_gaps"] = filled, gaps[w]
      if model.centre_anchor:   # the anchored centre head interpolates the valid centre pixel values
        arrays[f"{s}_valid"] = mask[:, :, CENTRE_PX, CENTRE_PX]
    arrays["offsets"] = offsets_for(model, windows.delta_days[w])
    fn = lambda p, offsets, **a: engine.full_fn(
        p, {s: (a[f"{s}_x"], a[f"{s}_gaps"]) for s in model.sensors}, offsets,
        {s: a[f"{s}_valid"] for s in model.sensors} if model.centre_anchor else None)
    out.append(engine.run(fn, "full", engine.batch, arrays))
  if not out:
    empty = {"zf": np.zeros((0, model.bottleneck), np.float32), "s2_reflectance": np.zeros((0, 10), np.float32)}
    return empty | {f"z_{s}": np.zeros((0, ae.bottleneck), np.float32)
                    for s, ae in zip(model.sensors, model.autoencoders)}
  return jax.tree.map(lambda *xs: np.concatenate(xs), *out)


def naive_tile(engine: Engine, merged: Merged, windows: Windows, ty: int, tx: int) -> np.ndarray:
  rows, cols = _tile_pixels(ty, tx)
  w_q, p_q = np.nonzero(pixel_valid(merged, windows, rows, cols))
  z = full_forward(engine, merged, windows, w_q, rows[p_q], cols[p_q])[engine.output_key()]
  out = np.full((len(windows), ty * tx, engine.width), np.nan, np.float32)
  out[w_q, p_q] = z
  engine.calls["tiles"] = engine.calls.get("tiles", 0) + 1
  return out.reshape(len(windows), ty, tx, engine.width)


def _box_at(a_thwc: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """15x15 box sums (integral image) of the crops centred at (rows, cols), inside the grid -> (t, p, c)."""
  ii = np.pad(np.cumsum(np.cumsum(a_thwc, axis=1), axis=2), ((0, 0), (1, 0), (1, 0), (0, 0)))
  r0, c0 = rows - CENTRE_PX, cols - CENTRE_PX
  r1, c1 = r0 + PATCH_PX, c0 + PATCH_PX
  return ii[:, r1, c1] - ii[:, r0, c1] - ii[:, r1, c0] + ii[:, r0, c0]


def _box_counts(series_thwc: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """Per date and crop centre, the counts of valid elements of its 15x15 crop (t, p, c)."""
  return _box_at((~np.isnan(series_thwc)).astype(np.int64), rows, cols)


def _box_sums(series_thwc: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per date and crop centre, the 15x15 sums of finite values and counts of valid (non-NaN) elements
  (t, p, c): the terms of `preprocess.fill_patches`' means (+-inf counts, adds 0)."""
  sums = _box_at(np.where(np.isfinite(series_thwc), series_thwc, 0.0).astype(np.float64), rows, cols)
  return sums, _box_counts(series_thwc, rows, cols)


def _crop_features(engine: Engine, sensor: str, series: np.ndarray, keys: np.ndarray, rows: np.ndarray,
                   cols: np.ndarray, n_pix: int) -> np.ndarray:
  """Conv-encoder features of the (date, pixel) crops `keys` (sorted date * n_pix + pixel), each filled
  from its own frame (a no-op for the clean crops of "window" fill). Crops whose pixels are each finite
  in all channels or NaN in all share conv0 and block 1 with the other crops of their date
  (`_shared_features`) where the date has enough of them; the rest are gathered, filled and encoded a few
  batches at a time."""
  out = np.empty((len(keys),) + engine.empty_feature(sensor).shape, np.float32)
  date_k, pix_k = keys // n_pix, keys % n_pix
  shared = np.zeros(len(keys), bool)
  if engine.share_px_per_crop:
    h, w, c = series.shape[1:]
    nan_thwc = np.isnan(series)
    bad_thw = np.isinf(series).any(axis=-1) | (nan_thwc.any(axis=-1) & ~nan_thwc.all(axis=-1))
    shared = _box_at(bad_thw[..., None].astype(np.int64), rows, cols)[date_k, pix_k, 0] == 0
    crops_t = np.bincount(date_k[shared], minlength=len(series))
    shared &= crops_t[date_k] * engine.share_px_per_crop >= h * w
    if shared.any():   # the "frame" fill value of every crop: its per-channel mean of valid values
      sums_tpc, counts_tpc = _box_sums(series, rows, cols)
      d, q = date_k[shared], pix_k[shared]
      fill_kc = (sums_tpc[d, q] / np.maximum(counts_tpc[d, q], 1)).astype(np.float32)
      holes_k = counts_tpc[d, q].sum(axis=-1) < PATCH_PX * PATCH_PX * c
      out[shared] = _shared_features(engine, sensor, series, keys[shared], rows, cols, n_pix, fill_kc, holes_k)
  step = engine.conv_batch * 8
  rest = np.nonzero(~shared)[0]
  for idx in (rest[i:i + step] for i in range(0, len(rest), step)):
    crops = gather_patches(series, date_k[idx][:, None], rows[pix_k[idx]], cols[pix_k[idx]])[:, 0]
    crops, _ = preprocess.fill_patches(crops, "frame")   # (n, h, w, c): per-crop channel means
    out[idx] = engine.run(engine.conv_fns[sensor], f"conv_{sensor}", engine.conv_batch, {"crops": crops})
  return out


def _shared_features(engine: Engine, sensor: str, series: np.ndarray, keys: np.ndarray, rows: np.ndarray,
                     cols: np.ndarray, n_pix: int, fill_kc: np.ndarray, holes_k: np.ndarray) -> np.ndarray:
  """`_crop_features` through `crop_share`: block-1 maps once per date (the whole local grid), then each
  crop's features from its gathered maps (plus its hole term), in batches spanning a group of dates."""
  date_k, pix_k = keys // n_pix, keys % n_pix
  dates, first = np.unique(date_k, return_index=True)
  # dates per group: enough crops for GROUP_BATCHES batches (a group's last call is padded to whole
  # batches), maps within ~128 MB (two groups' maps are alive at once)
  enc = engine.params[f"ae_{sensor}"]["conv_encoder"]
  max_dates = max(1, (128 << 20) // crop_share.map_bytes(enc, *series.shape[1:3]))
  group = int(np.clip(-(-GROUP_BATCHES * engine.conv_batch // n_pix), 1, max_dates))
  out = np.empty((len(keys),) + engine.empty_feature(sensor).shape, np.float32)

  def queue_maps(ds):   # the block-1 maps of a group of dates, dispatched (not waited for)
    engine.calls[f"map_{sensor}"] = engine.calls.get(f"map_{sensor}", 0) + len(ds)
    return [engine.map_fns[sensor](engine.prepared[sensor],
                                   np.nan_to_num(series[d], nan=0.0, posinf=0.0, neginf=0.0)[None],
                                   ~np.isnan(series[d]).any(axis=-1)[None]) for d in ds]

  # A pipeline: while the devices run one group's maps or batches, the host prepares the next ones.
  pending = None   # the last batches dispatched and not yet collected
  queued = queue_maps(dates[:group])
  for start in range(0, len(dates), group):
    ds = dates[start:start + group]
    maps = queued
    if start + group < len(dates):
      queued = queue_maps(dates[start + group:start + 2 * group])
    if engine.host_gather:   # numpy gathers from the host maps, date by date: any number of dates
      maps = jax.device_get(maps)
    else:                    # the maps enter the jitted gather: a short last group is padded (one shape)
      maps += [jax.tree.map(jnp.zeros_like, maps[0])] * (group - len(maps))
      maps = jax.tree.map(lambda *m: jnp.concatenate(m), *maps)
    stop = first[start + group] if start + group < len(dates) else len(keys)
    for holes in (False, True):
      sel = first[start] + np.nonzero(holes_k[first[start]:stop] == holes)[0]
      for idx in (sel[i:i + engine.crops_per_call] for i in range(0, len(sel), engine.crops_per_call)):
        where = (np.searchsorted(ds, date_k[idx]).astype(np.int32), (rows[pix_k[idx]] - CENTRE_PX).astype(np.int32),
                 (cols[pix_k[idx]] - CENTRE_PX).astype(np.int32))
        if engine.host_gather:   # (while the previous batches run) into whole batches the device can alias
          size = -(-len(idx) // engine.conv_batch) * engine.conv_batch
          crops = crop_share.gather_host(maps, *where, rows=size, empty=parallel.host_empty)
          arrays, fixed = {"a0": crops["a0"], "valid": crops["valid"],
                           **{f"t{i}": t for i, t in enumerate(crops["t"])}}, {}
          arrays["fill"] = np.concatenate([fill_kc[idx], np.zeros((size - len(idx), fill_kc.shape[1]), np.float32)])
        else:
          arrays, fixed = dict(zip(("slot", "y0", "x0"), where)), {"maps": maps}
          arrays["fill"] = fill_kc[idx]
        fixed["prep"] = engine.prepared[sensor]
        batches = engine.dispatch(engine.crop_fns[sensor, holes], f"crop_{sensor}{'_holes' * holes}",
                                  engine.conv_batch, arrays, per_call=engine.crops_per_call, **fixed)
        if pending is not None:
          out[pending[0]] = engine.collect(pending[1])[:len(pending[0])]
        pending = (idx, batches)
  if pending is not None:
    out[pending[0]] = engine.collect(pending[1])[:len(pending[0])]
  return out


def fast_tile(engine: Engine, merged: Merged, windows: Windows, ty: int, tx: int) -> np.ndarray:
  model = engine.model
  fill = model.fill
  rows, cols = _tile_pixels(ty, tx)
  w_q, p_q = np.nonzero(pixel_valid(merged, windows, rows, cols))
  out = np.full((len(windows), ty * tx, engine.width), np.nan, np.float32)
  engine.calls["tiles"] = engine.calls.get("tiles", 0) + 1
  if len(w_q) == 0:
    return out.reshape(len(windows), ty, tx, engine.width)
  n_pix = ty * tx
  prep = {}
  for s in model.sensors:
    series, frames, gaps = _series(merged, windows, s)
    f_qk = frames[w_q]
    shown_qk = f_qk != HIDDEN
    safe_qk = np.where(shown_qk, f_qk, 0)
    p_qk = np.broadcast_to(p_q[:, None], f_qk.shape)
    # the centre pixel series feeds the autoencoder's centre path and the fusion's pixel token
    centre_path = model.autoencoders[model.sensors.index(s)].centre_path or model.pixel_token
    hidden_feat = mean_qc = centre_qkc = None
    if fill == "frame":   # every crop is filled from itself: one feature per (date, pixel)
      if centre_path:     # the centre pixel's fill is its crop's channel mean (0 for a hidden frame)
        sums_tpc, counts_tpc = _box_sums(series, rows, cols)
        fill_qkc = sums_tpc[safe_qk, p_qk] / np.maximum(counts_tpc[safe_qk, p_qk], 1) * shown_qk[..., None]
        centre_qkc = _filled_centres(series, safe_qk, shown_qk, p_qk, rows, cols, fill_qkc)
      else:
        counts_tpc = _box_counts(series, rows, cols)
      empty_tp = counts_tpc.sum(axis=-1) == 0
      cached_qk = shown_qk & ~empty_tp[safe_qk, p_qk]
      if not cached_qk.all():   # hidden or fully clouded crops are all zeros after filling: one feature
        hidden_feat = engine.empty_feature(s)
    else:                 # "window": only crops without an invalid value are the same in every window
      sums_tpc, counts_tpc = _box_sums(series, rows, cols)
      clean_tp = counts_tpc.sum(axis=-1) == PATCH_PX * PATCH_PX * series.shape[-1]
      total_qc = (sums_tpc[safe_qk, p_qk] * shown_qk[..., None]).sum(axis=1)
      count_qc = (counts_tpc[safe_qk, p_qk] * shown_qk[..., None]).sum(axis=1)
      mean_qc = (total_qc / np.maximum(count_qc, 1)).astype(np.float32)
      cached_qk = clean_tp[safe_qk, p_qk] & shown_qk
      if centre_path:     # the centre pixel's fill is its window's mean (a hidden frame's too)
        centre_qkc = _filled_centres(series, safe_qk, shown_qk, p_qk, rows, cols, mean_qc[:, None, :])
    keys = np.unique(safe_qk[cached_qk] * n_pix + p_qk[cached_qk])
    cache = _crop_features(engine, s, series, keys, rows, cols, n_pix) if len(keys) else None
    prep[s] = (series, f_qk, cached_qk, mean_qc, hidden_feat, keys, cache, gaps[w_q], centre_qkc)
  offsets_q = offsets_for(model, windows.delta_days[w_q])
  zf = []
  group = engine.batch * 8   # windows whose per-window crops are encoded together (less padding per call)
  for start in range(0, len(w_q), group):
    sl = slice(start, start + group)
    arrays = {"offsets": offsets_q[sl]}
    for s, (series, f_qk, cached_qk, mean_qc, hidden_feat, keys, cache, gaps_q, centre_qkc) in prep.items():
      if centre_qkc is not None:
        arrays[f"{s}_centre"] = centre_qkc[sl]
      f, cached, p = f_qk[sl], cached_qk[sl], p_q[sl]
      rest_b, rest_k = np.nonzero(~cached)
      feat_rest = None
      if hidden_feat is not None:      # "frame": the uncached crops are the empty (all-zero) ones
        feat_rest = np.broadcast_to(hidden_feat, (len(rest_b),) + hidden_feat.shape)
      elif len(rest_b):                # "window": crops with invalid values, filled with the window mean
        crops = gather_patches(series, f[rest_b, rest_k][:, None], rows[p[rest_b]], cols[p[rest_b]])[:, 0]
        crops = np.where(np.isnan(crops), mean_qc[sl][rest_b][:, None, None, :], crops)
        feat_rest = engine.run(engine.conv_fns[s], f"conv_{s}", engine.conv_batch, {"crops": crops})
      shape = (cache if cache is not None else feat_rest).shape[1:]
      feats = np.empty(f.shape + shape, np.float32)
      if cached.any():
        cached_b, cached_k = np.nonzero(cached)
        feats[cached_b, cached_k] = cache[np.searchsorted(keys, f[cached_b, cached_k] * n_pix + p[cached_b])]
      if feat_rest is not None:
        feats[rest_b, rest_k] = feat_rest
      arrays[f"{s}_feats"], arrays[f"{s}_gaps"] = feats, gaps_q[sl]
    fn = lambda prm, offsets, **a: engine.tail_fn(
        prm, {s: a[f"{s}_feats"] for s in model.sensors}, {s: a[f"{s}_gaps"] for s in model.sensors}, offsets,
        {s: a[f"{s}_centre"] for s in model.sensors if f"{s}_centre" in a})
    zf.append(engine.run(fn, "tail", engine.batch, arrays))
  out[w_q, p_q] = np.concatenate(zf)
  return out.reshape(len(windows), ty, tx, engine.width)
