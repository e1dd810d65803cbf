"""The first layers of `ConvEncoder` for every 15x15 crop of an image at once (feature-cube fast path).

Neighbouring pixels' crops overlap in 14 of 15 rows and columns, and the reference encodes each crop on its
own. Up to block 1's branch convolutions the encoder is a 1x1 conv (`conv0`), SiLU and zero-padded k x k
convs, so the crops can share that work:
* a k x k conv of a crop differs from the conv of the whole image only where taps fall outside the crop,
  and at crop-local position p the taps inside form a rectangle of the kernel that depends only on p's
  *edge class* per axis (p for p < r, one class for the interior, p - (14 - 2r) for p > 14 - r: k classes
  for radius r = k // 2). `block1_maps` computes once per image, at every position and for every pair of
  classes, each branch conv with the taps of that pair (about one full-image conv of work);
* a crop with holes (NaN: clouds) is filled, per channel, with one value v (`preprocess.fill_patches`,
  "frame": the crop's own mean), so after `conv0` every hole holds silu(conv0(v)). The maps are built with
  the holes zeroed, and `encode` adds each crop's own term: the sum over the taps that fall on holes of
  kernel x silu(conv0(v)), a conv of the crop's 15x15 hole mask with a per-crop kernel (1/width of the
  work of the conv it replaces).
`gather` takes entry [slot, class(p_y), class(p_x), corner + p] for every crop position (`gather_host`:
the same in numpy from per-image host maps); `encode` adds the hole term, applies block 1's 1x1 fusion
and runs the rest of the encoder through the model's own `ConvEncoder.from_block1`. Both read the
encoder's first layers through `prepare` (the kernels in the layouts their matmuls take, laid out once).
Per crop this saves conv0 and both block-1 convs (~90 % of the encoder's FLOPs at any width).

Requires every pixel of a crop to be finite in all channels or NaN in all (the embedders send other crops
through the plain encoder). Only the summation order differs from `ConvEncoder` (float32 rounding). It reads
the params of `conv0` and block 1 (`convs_<i>`, `fusion`) by name, the layout that the torch mapping and the
checkpoints also fix; `tests/test_models.py` checks it against `ConvEncoder` on every kind of crop.

Dimension letters: D images, H/W image rows/columns, C input channels, O width, E edge classes, n crops.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from earthrep.models import blocks
from earthrep.models.autoencoder import TransformerAE
from earthrep.schema import PATCH_PX


def edge_class(radius: int) -> np.ndarray:
  """(PATCH_PX,) edge class of each crop-local row (or column) for kernels up to `radius`."""
  p = np.arange(PATCH_PX)
  return np.where(p < radius, p, np.where(p > PATCH_PX - 1 - radius, p - (PATCH_PX - 1 - 2 * radius), radius))


def tap_ranges(k: int, radius: int) -> list[tuple[int, int]]:
  """For each edge class, the taps [lo, hi) of a k-tap kernel (torch padding k//2) inside the crop."""
  r = k // 2
  out = []
  for i in range(2 * radius + 1):
    p = i if i < radius else (PATCH_PX // 2 if i == radius else PATCH_PX - 1 - (2 * radius - i))
    out.append((max(0, r - p), min(k, PATCH_PX - p + r)))
  return out


def _range_sums(slices: list, ranges: list[tuple[int, int]]) -> list:
  """Sums of slices[lo:hi] for ranges that are all prefixes or suffixes (as `tap_ranges` gives)."""
  prefix, suffix, acc = [], [], 0
  for s in slices:
    acc = acc + s
    prefix.append(acc)
  acc = 0
  for s in slices[::-1]:
    acc = acc + s
    suffix.append(acc)
  suffix = suffix[::-1]
  assert all(lo == 0 or hi == len(slices) for lo, hi in ranges), ranges
  return [prefix[hi - 1] if lo == 0 else suffix[lo] for lo, hi in ranges]


def prepare(enc: dict) -> dict:
  """`ConvEncoder` params -> what `block1_maps` and `encode` read, in the layouts their matmuls take:
  conv0, each block-1 branch's kernel as (C, k*k*O) (tap-major columns) and bias, and the fusion.
  Computed once per model (`inference.engine.Engine`), so no call re-lays out the kernels."""
  branches = []
  for c in _block1_convs(enc):
    k, _, cin, cout = c["kernel"].shape
    branches.append({"taps": jnp.transpose(c["kernel"], (2, 0, 1, 3)).reshape(cin, k * k * cout),
                     "bias": c["bias"]})
  return {"conv0": enc["conv0"], "branches": branches, "fusion": enc["block1"]["fusion"]}


def edge_conv(x_DHWC: jax.Array, taps_CT: jax.Array, k: int) -> jax.Array:
  """(D, E, E, H, W, O) with E = k (edge classes of this kernel's own radius): at every position, the
  conv (no bias) restricted to the taps that each pair of edge classes keeps inside the crop. `taps_CT`
  is the k x k kernel as (C, k*k*O) (`prepare`)."""
  d, h, w, c = x_DHWC.shape
  r = k // 2
  o = taps_CT.shape[1] // (k * k)
  # every tap's product at its input position: one matmul, (D, H, W, a, b, O)
  xp = jnp.pad(x_DHWC, ((0, 0), (r, r), (r, r), (0, 0)))
  y = (xp.reshape(-1, c) @ taps_CT).reshape(d, h + 2 * r, w + 2 * r, k, k, o)
  ranges = tap_ranges(k, r)
  # output (i, j) takes tap (a, b) from padded input (i + a, j + b): sum the rows, then the columns
  rows = _range_sums([y[:, a:a + h, :, a] for a in range(k)], ranges)   # E x (D, H, Wp, k, O)
  return jnp.stack([jnp.stack(_range_sums([rows_e[:, :, b:b + w, b] for b in range(k)], ranges), axis=1)
                    for rows_e in rows], axis=1)


def kernel_size(branch: dict) -> int:
  """k of a `prepare`d branch (its taps are (C, k*k*O))."""
  return math.isqrt(branch["taps"].shape[1] // branch["bias"].shape[0])


def _block1_convs(enc: dict) -> list[dict]:
  convs, i = [], 0
  while f"convs_{i}" in enc["block1"]:
    convs.append(enc["block1"][f"convs_{i}"])
    i += 1
  return convs


def block1_maps(prep: dict, x_DHWC: jax.Array, valid_DHW: jax.Array) -> dict:
  """`prepare`d encoder params, images (finite where valid) and their valid mask -> {'a0': conv0
  pre-activation (D, H, W, O), 'valid': the mask, 't': per block-1 branch, the conv (no bias) of silu(a0)
  with holes zeroed, per pair of edge classes (D, E, E, H, W, O)}."""
  a0 = x_DHWC @ prep["conv0"]["kernel"] + prep["conv0"]["bias"]
  x0 = jnp.where(valid_DHW[..., None], blocks.silu(a0), 0.0)
  return {"a0": a0, "valid": valid_DHW, "t": [edge_conv(x0, b["taps"], kernel_size(b)) for b in prep["branches"]]}


def map_bytes(enc: dict, h: int, w: int) -> int:
  """Bytes of `block1_maps` output for one h x w image (`enc`: the encoder's params)."""
  taps = sum(c["kernel"].shape[0] ** 2 for c in _block1_convs(enc))
  return h * w * ((taps + 1) * enc["conv0"]["kernel"].shape[-1] + 1) * 4


def _map_rows(slot_n, y0_n, x0_n, h: int, w: int, classes: int = 0):
  """(n, 15, 15) rows of a flattened map, (D, H, W) or with `classes` E (D, E, E, H, W), that hold each
  crop's positions: image `slot`, top-left corner (y0, x0) and, with classes, the positions' edge classes."""
  span = np.arange(PATCH_PX)
  s, py, px = slot_n[:, None, None], (y0_n[:, None] + span)[:, :, None], (x0_n[:, None] + span)[:, None, :]
  if not classes:
    return (s * h + py) * w + px
  cls = edge_class(classes // 2)
  return (((s * classes + cls[None, :, None]) * classes + cls[None, None, :]) * h + py) * w + px


def gather(maps: dict, slot_n, y0_n, x0_n, xp=jnp) -> dict:
  """Each crop's entries of the maps (image `slot`, top-left corner (y0, x0)): {'a0': (n, 15, 15, O),
  'valid': (n, 15, 15), 't': per branch (n, 15, 15, O) at the crop's edge classes}. `xp` is jnp (inside
  jit, on accelerators) or np (host maps: XLA's CPU gather is ~30x slower than numpy's take here)."""
  _, h, w = maps["valid"].shape

  def take(a, idx):   # rows of the flattened map: one gather of contiguous width-O rows
    return xp.take(a.reshape(-1, a.shape[-1]), idx, axis=0)

  pix = _map_rows(slot_n, y0_n, x0_n, h, w)
  return {"a0": take(maps["a0"], pix), "valid": take(maps["valid"][..., None], pix)[..., 0],
          "t": [take(t, _map_rows(slot_n, y0_n, x0_n, h, w, t.shape[1])) for t in maps["t"]]}


def gather_host(maps: list[dict], slot_n: np.ndarray, y0_n: np.ndarray, x0_n: np.ndarray, rows: int = 0,
                empty: Callable = np.empty) -> dict:
  """`gather` in numpy from per-image host maps (`maps[slot]` each holding one image), without first
  concatenating them: each image's crops are a contiguous run of `slot_n` (which must be sorted) and are
  taken straight into their rows of the output. `rows` (>= n) pads the output with zero rows;
  `empty(shape, dtype)` allocates it (e.g. `parallel.host_empty`, which a CPU device takes without a copy)."""
  if np.any(np.diff(slot_n) < 0):
    raise ValueError("gather_host: slot_n must be sorted")
  first = maps[0]
  n = len(slot_n)
  rows = max(rows, n)
  out = {"a0": empty((rows, PATCH_PX, PATCH_PX) + first["a0"].shape[-1:], first["a0"].dtype),
         "valid": empty((rows, PATCH_PX, PATCH_PX), bool),
         "t": [empty((rows, PATCH_PX, PATCH_PX) + t.shape[-1:], t.dtype) for t in first["t"]]}
  for a in jax.tree.leaves(out):
    a[n:] = 0

  def take(a, idx, into):   # as in `gather`, written straight into `into` ("raise" mode would buffer it)
    np.take(a.reshape(-1, a.shape[-1]), idx, axis=0, out=into, mode="clip")

  bounds = np.searchsorted(slot_n, np.arange(len(maps) + 1))
  for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
    if lo == hi:
      continue
    m = maps[s]
    _, h, w = m["valid"].shape
    where = (np.zeros(hi - lo, np.int64), y0_n[lo:hi], x0_n[lo:hi], h, w)   # each map holds one image
    pix = _map_rows(*where)
    take(m["a0"], pix, out["a0"][lo:hi])
    take(m["valid"][..., None], pix, out["valid"][lo:hi, ..., None])
    for t, into in zip(m["t"], out["t"]):
      take(t, _map_rows(*where, t.shape[1]), into[lo:hi])
  return out


def encode(ae: TransformerAE, ae_params: dict, prep: dict, crops: dict, fill_nC: jax.Array | None = None
           ) -> jax.Array:
  """ConvEncoder features (n, 4, 4, token channels) of crops `gather`ed from the `block1_maps` output
  (`prep`: the encoder's `prepare`d params); `fill_nC` is the value each crop's holes are filled with
  (None: the crops have no holes)."""
  a0_n = crops["a0"]
  if fill_nC is not None:
    holes_n = ~crops["valid"]
    v_nO = fill_nC @ prep["conv0"]["kernel"] + prep["conv0"]["bias"]
    a0_n = jnp.where(holes_n[..., None], v_nO[:, None, None], a0_n)
  branches = []
  for b, t_n in zip(prep["branches"], crops["t"]):
    k = kernel_size(b)
    r = k // 2
    if fill_nC is not None:   # + sum over the taps on holes of kernel . silu(conv0(fill))
      kv_nTO = (blocks.silu(v_nO) @ b["taps"]).reshape(len(v_nO), k * k, -1)
      hp = jnp.pad(holes_n.astype(t_n.dtype), ((0, 0), (r, r), (r, r)))   # zeros beyond the crop
      taps_nHWT = jnp.stack([hp[:, a:a + PATCH_PX, c:c + PATCH_PX] for a in range(k) for c in range(k)], -1)
      t_n = t_n + jnp.einsum("nhwt,nto->nhwo", taps_nHWT, kv_nTO)
    branches.append(blocks.leaky_relu(t_n + b["bias"], 0.1))
  fusion = prep["fusion"]
  fused_n = blocks.fuse_branches(branches, fusion["kernel"], fusion["bias"])
  return ae.apply({"params": ae_params}, a0_n, fused_n,
                  method=lambda m, a0, fused: m.conv_encoder.from_block1(a0, fused, train=False))
