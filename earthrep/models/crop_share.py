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
`gather` takes entry [slot, class(p_y), class(p_x), corner + p] for every crop position; `encode` adds the
hole term, applies block 1's 1x1 fusion and runs the rest of the encoder through the model's own
`ConvEncoder.from_block1`. Per crop this saves conv0 and both block-1 convs (~90 % of the encoder's FLOPs
at any width).

Requires every pixel of a crop to be finite in all channels or NaN in all (the embedders send other crops
through the plain encoder). Only the summation order differs from `ConvEncoder` (float32 rounding). It reads
the params of `conv0` and block 1 (`convs_<i>`, `fusion`) by name, the layout that the torch mapping and the
checkpoints also fix; `tests/test_models.py` checks it against `ConvEncoder` on every kind of crop.

Dimension letters: D images, H/W image rows/columns, C input channels, O width, E edge classes, n crops.
"""
from __future__ import annotations

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


def edge_conv(x_DHWC: jax.Array, k_KKCO: jax.Array) -> jax.Array:
  """(D, E, E, H, W, O) with E = k (edge classes of this kernel's own radius): at every position, the
  conv (no bias) restricted to the taps that each pair of edge classes keeps inside the crop."""
  _, h, w, _ = x_DHWC.shape
  k = k_KKCO.shape[0]
  r = k // 2
  y = jnp.einsum("dhwc,abco->dabhwo", x_DHWC, k_KKCO)   # every tap's product at its input position
  y = jnp.pad(y, ((0, 0), (0, 0), (0, 0), (r, r), (r, r), (0, 0)))
  ranges = tap_ranges(k, r)
  # output (i, j) takes tap (a, b) from padded input (i + a, j + b): sum the rows, then the columns
  rows = jnp.stack(_range_sums([y[:, a, :, a:a + h] for a in range(k)], ranges), axis=1)   # (D, E, k, H, Wp, O)
  return jnp.stack(_range_sums([rows[:, :, b, :, b:b + w] for b in range(k)], ranges), axis=2)


def _block1_convs(enc: dict) -> list[dict]:
  convs, i = [], 0
  while f"convs_{i}" in enc["block1"]:
    convs.append(enc["block1"][f"convs_{i}"])
    i += 1
  return convs


def block1_maps(enc: dict, x_DHWC: jax.Array, valid_DHW: jax.Array) -> dict:
  """`ConvEncoder` params, images (finite where valid) and their valid mask -> {'a0': conv0 pre-activation
  (D, H, W, O), 'valid': the mask, 't': per block-1 branch, the conv (no bias) of silu(a0) with holes
  zeroed, per pair of edge classes (D, E, E, H, W, O)}."""
  a0 = x_DHWC @ enc["conv0"]["kernel"] + enc["conv0"]["bias"]
  x0 = jnp.where(valid_DHW[..., None], blocks.silu(a0), 0.0)
  return {"a0": a0, "valid": valid_DHW, "t": [edge_conv(x0, c["kernel"]) for c in _block1_convs(enc)]}


def map_bytes(enc: dict, h: int, w: int) -> int:
  """Bytes of `block1_maps` output for one h x w image."""
  taps = sum(c["kernel"].shape[0] ** 2 for c in _block1_convs(enc))
  return h * w * ((taps + 1) * enc["conv0"]["kernel"].shape[-1] + 1) * 4


def gather(maps: dict, slot_n, y0_n, x0_n, xp=jnp) -> dict:
  """Each crop's entries of the maps (image `slot`, top-left corner (y0, x0)): {'a0': (n, 15, 15, O),
  'valid': (n, 15, 15), 't': per branch (n, 15, 15, O) at the crop's edge classes}. `xp` is jnp (inside
  jit, on accelerators) or np (host maps: XLA's CPU gather is ~30x slower than numpy's take here)."""
  span = np.arange(PATCH_PX)
  s, py, px = slot_n[:, None, None], (y0_n[:, None] + span)[:, :, None], (x0_n[:, None] + span)[:, None, :]
  d, h, w = maps["valid"].shape

  def take(a, idx):   # rows of the flattened map: one gather of contiguous width-O rows
    return xp.take(a.reshape(-1, a.shape[-1]), idx, axis=0)

  pix = (s * h + py) * w + px
  out = {"a0": take(maps["a0"], pix), "valid": take(maps["valid"][..., None], pix)[..., 0], "t": []}
  for t in maps["t"]:
    e = t.shape[1]
    cls = edge_class(e // 2)
    out["t"].append(take(t, (((s * e + cls[None, :, None]) * e + cls[None, None, :]) * h + py) * w + px))
  return out


def encode(ae: TransformerAE, ae_params: dict, crops: dict, fill_nC: jax.Array | None = None) -> jax.Array:
  """ConvEncoder features (n, 4, 4, token channels) of crops `gather`ed from the `block1_maps` output;
  `fill_nC` is the value each crop's holes are filled with (None: the crops have no holes)."""
  enc = ae_params["conv_encoder"]
  a0_n = crops["a0"]
  if fill_nC is not None:
    holes_n = ~crops["valid"]
    v_nO = fill_nC @ enc["conv0"]["kernel"] + enc["conv0"]["bias"]
    a0_n = jnp.where(holes_n[..., None], v_nO[:, None, None], a0_n)
  branches = []
  for c, t_n in zip(_block1_convs(enc), crops["t"]):
    k = c["kernel"].shape[0]
    r = k // 2
    if fill_nC is not None:   # + sum over the taps on holes of kernel . silu(conv0(fill))
      kv_nTO = jnp.einsum("nc,abco->nabo", blocks.silu(v_nO), c["kernel"]).reshape(len(v_nO), k * k, -1)
      hp = jnp.pad(holes_n.astype(t_n.dtype), ((0, 0), (r, r), (r, r)))   # zeros beyond the crop
      taps_nHWT = jnp.stack([hp[:, a:a + PATCH_PX, b:b + PATCH_PX] for a in range(k) for b in range(k)], -1)
      t_n = t_n + jnp.einsum("nhwt,nto->nhwo", taps_nHWT, kv_nTO)
    branches.append(blocks.leaky_relu(t_n + c["bias"], 0.1))
  fusion = enc["block1"]["fusion"]
  fused_n = blocks.fuse_branches(branches, fusion["kernel"], fusion["bias"])
  return ae.apply({"params": ae_params}, a0_n, fused_n,
                  method=lambda m, a0, fused: m.conv_encoder.from_block1(a0, fused, train=False))
