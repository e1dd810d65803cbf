"""The one mapping between reference torch `state_dict` keys and earthrep params trees.

`params_from_state_dict` turns a reference state dict (numpy arrays, torch layouts) into the params of a
`TransformerAE` or `FusionModel` and raises `StateDictError` naming every missing, unexpected or
misshaped key and every alias pair that differs. Shared modules appear under several torch keys (the AE
time table under three names, the transformer as `*.transformer_enc.*` and `*.transformer_dec.*`); they
load once and their aliases must be equal. `state_dict_from_params` is the inverse (all aliases written).
The fusion model's `bottleneck_expander.0.*` is unused by the reference forward pass: it is accepted and
ignored on import and not written on export. Layouts: Linear (out, in) -> Dense (in, out); Conv2d
(out, in, kh, kw) -> (kh, kw, in, out), or Dense (in, out) for our 1x1 convs; ConvTranspose2d
(in, out, kh, kw) -> (kh, kw, in, out); LayerNorm weight -> scale; Embedding weight -> embedding.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import numpy as np

from earthrep import sensors
from earthrep.errors import EarthrepError
from earthrep.models.autoencoder import TransformerAE
from earthrep.models.fusion import FusionModel
from earthrep.models.params import abstract_params

Model = TransformerAE | FusionModel
Path = tuple[str, ...]


class StateDictError(EarthrepError):
  pass


# kind -> (torch array -> flax array, flax shape -> torch shape, flax array -> torch array)
_KINDS: dict[str, tuple[Callable, Callable, Callable]] = {
    "same": (lambda a: a, lambda s: tuple(s), lambda a: a),
    "dense": (lambda a: a.T, lambda s: (s[1], s[0]), lambda a: a.T),
    "conv": (lambda a: a.transpose(2, 3, 1, 0), lambda s: (s[3], s[2], s[0], s[1]),
             lambda a: a.transpose(3, 2, 0, 1)),
    "conv1x1": (lambda a: a[:, :, 0, 0].T, lambda s: (s[1], s[0], 1, 1), lambda a: a.T[:, :, None, None]),
    "convT": (lambda a: a.transpose(2, 3, 0, 1), lambda s: (s[2], s[3], s[0], s[1]),
              lambda a: a.transpose(2, 3, 0, 1)),
}


@dataclasses.dataclass(frozen=True)
class Rule:
  torch_keys: tuple[str, ...]   # primary key first, then aliases of the same shared tensor
  path: Path                    # inside the params tree (below 'params')
  kind: str


def _module(torch_key: str, path: Path, weight_kind: str, bias: bool = True) -> list[Rule]:
  rules = [Rule((f"{torch_key}.weight",), path + ("kernel",), weight_kind)]
  if bias:
    rules.append(Rule((f"{torch_key}.bias",), path + ("bias",), "same"))
  return rules


def _cbam(t: str, p: Path) -> list[Rule]:
  return (_module(f"{t}.ca.se.0", p + ("ca", "fc1"), "conv1x1", bias=False)
          + _module(f"{t}.ca.se.2", p + ("ca", "fc2"), "conv1x1", bias=False)
          + _module(f"{t}.sa.conv", p + ("sa", "conv"), "conv"))


def _conv_attention(t: str, p: Path) -> list[Rule]:
  return _module(f"{t}.conv.0", p + ("conv",), "conv") + _cbam(f"{t}.attention", p + ("attention",))


def _multi_scale(t: str, p: Path) -> list[Rule]:
  return [*_module(f"{t}.convs.0.0", p + ("convs_0",), "conv"),
          *_module(f"{t}.convs.1.0", p + ("convs_1",), "conv"),
          *_cbam(f"{t}.attention", p + ("attention",)),
          *_module(f"{t}.fusion.0", p + ("fusion",), "conv1x1")]


def _transformer(prefixes: tuple[str, ...], p: Path, layers: int) -> list[Rule]:
  rules = []
  for i in range(layers):
    lp = p + (f"layer_{i}",)
    for sub, kind, leaf in (("self_attn.in_proj_weight", "dense", ("self_attn", "in_proj", "kernel")),
                            ("self_attn.in_proj_bias", "same", ("self_attn", "in_proj", "bias")),
                            ("self_attn.out_proj.weight", "dense", ("self_attn", "out_proj", "kernel")),
                            ("self_attn.out_proj.bias", "same", ("self_attn", "out_proj", "bias")),
                            ("linear1.weight", "dense", ("linear1", "kernel")),
                            ("linear1.bias", "same", ("linear1", "bias")),
                            ("linear2.weight", "dense", ("linear2", "kernel")),
                            ("linear2.bias", "same", ("linear2", "bias")),
                            ("norm1.weight", "same", ("norm1", "scale")),
                            ("norm1.bias", "same", ("norm1", "bias")),
                            ("norm2.weight", "same", ("norm2", "scale")),
                            ("norm2.bias", "same", ("norm2", "bias"))):
      rules.append(Rule(tuple(f"{pre}.layers.{i}.{sub}" for pre in prefixes), lp + leaf, kind))
  return rules


def ae_rules(model: TransformerAE, enc: str = "encoder", dec: str = "decoder",
             table_keys: tuple[str, ...] | None = None, root: Path = ()) -> list[Rule]:
  """Rules for one AE whose torch encoder/decoder live under `enc.`/`dec.` (`enc_s1.` in the fusion)."""
  table = "positional_embedding_shared.position_embeddings.weight"
  if table_keys is None:   # a standalone AE also lists the table at its top level
    table_keys = (table, f"{enc}.{table}", f"{dec}.{table}")
  e, d = f"{enc}.dim_reducer", f"{dec}.upscaler"
  ce, cd = root + ("conv_encoder",), root + ("conv_decoder",)
  return [
      Rule(table_keys, root + ("time_table", "embedding"), "same"),
      *_module(f"{e}.conv0.0", ce + ("conv0",), "conv1x1"),
      *_multi_scale(f"{e}.block1", ce + ("block1",)),
      *_module(f"{e}.conv1.0", ce + ("conv1",), "conv"),
      *_conv_attention(f"{e}.block2", ce + ("block2",)),
      *_module(f"{e}.conv2.0", ce + ("conv2",), "conv"),
      *_conv_attention(f"{e}.block3", ce + ("block3",)),
      *_transformer((f"{enc}.transformer_enc", f"{dec}.transformer_dec"), root + ("transformer",),
                    model.layers),
      *_module(f"{enc}.encoder_linear.0", root + ("encoder_linear",), "dense"),
      *_module(f"{enc}.token_reducer.0", root + ("token_reducer",), "dense"),
      *_module(f"{enc}.bottleneck_reducer.0", root + ("bottleneck_reducer",), "dense"),
      *_conv_attention(f"{d}.block1", cd + ("block1",)),
      *_module(f"{d}.conv1.0", cd + ("conv1",), "convT"),
      *_conv_attention(f"{d}.block2", cd + ("block2",)),
      *_module(f"{d}.upsample2", cd + ("upsample2",), "convT"),
      *_multi_scale(f"{d}.block3", cd + ("block3",)),
      *_module(f"{d}.final_refinement.0", cd + ("refine1",), "conv"),
      *_module(f"{d}.final_refinement.2", cd + ("refine2",), "conv"),
      *_module(f"{dec}.decoder_linear.0", root + ("decoder_linear",), "dense"),
      *_module(f"{dec}.token_upsampler.0", root + ("token_upsampler",), "dense"),
      *_module(f"{dec}.bottleneck_expander.0", root + ("bottleneck_expander",), "dense"),
  ]


FUSION_IGNORED = ("bottleneck_expander.0.weight", "bottleneck_expander.0.bias")


def fusion_rules(model: FusionModel) -> list[Rule]:
  table = "positional_embedding_shared.position_embeddings.weight"
  rules = []
  for s, ae in zip(model.sensors, model.autoencoders):
    rules += ae_rules(ae, f"enc_{s}", f"dec_{s}", (f"enc_{s}.{table}", f"dec_{s}.{table}"),
                      root=model.sensor_param_path(s))
  for s in model.sensors:
    rules += _module(f"proj_{s}", (f"proj_{s}",), "dense")
  rules += [Rule(("type_embed.weight",), ("type_embed", "embedding"), "same"),
            Rule(("pair_pos_emb.position_embeddings.weight",), ("pair_pos", "embedding"), "same")]
  rules += _transformer(("fuser",), ("fuser",), model.layers)
  rules += [Rule(("norm_out.weight",), ("norm_out", "scale"), "same"),
            Rule(("norm_out.bias",), ("norm_out", "bias"), "same")]
  for s in model.sensors:
    rules += _module(f"head_{s}", (f"head_{s}",), "dense")
  return rules + _module("bottleneck_reducer.0", ("bottleneck_reducer",), "dense")


def rules_for(model: Model) -> tuple[list[Rule], tuple[str, ...]]:
  if isinstance(model, FusionModel):
    return fusion_rules(model), FUSION_IGNORED
  if isinstance(model, TransformerAE):
    return ae_rules(model), ()
  raise TypeError(f"no torch mapping for {type(model).__name__}")


def random_fusion(variant: str = "test", sensor_names: tuple[str, ...] = ("s1", "s2"), seed: int = 0,
                  fill: str = "frame", channels: dict[str, int] | None = None,
                  centre_path: bool = False, centre_head: bool = False, pixel_token: bool = False,
                  centre_anchor: bool = False) -> tuple[FusionModel, Any]:
  """(FusionModel, random params) at the widths of a config variant (`training.configs`: "" full size,
  "runlocal", "test"), the registry's sensor shapes (`channels` overrides band counts) and `random_params`:
  a model directory's worth of weights without training, for tests and benchmarks."""
  from earthrep.training import configs   # the config variants' sizes (a layer above the models)
  aes = tuple(TransformerAE(**{**sensors.get(s).stage1, **({"channels": channels[s]} if channels and s in channels
                                                              else {})},
                            **configs.WIDTHS[variant], fill=fill, centre_path=centre_path) for s in sensor_names)
  model = FusionModel(aes, tuple(sensor_names), **{**configs.FUSION_SIZES[variant], "centre_head": centre_head,
                                                   "pixel_token": pixel_token, "centre_anchor": centre_anchor})
  return model, random_params(model, seed)


def random_params(model: Model, seed: int = 0) -> Any:
  """Torch-like random params built in numpy: LayerNorm scales 1, embeddings N(0, 1), every other
  tensor U(-1, 1)/sqrt(fan_in). For tests and benchmarks: `model.init` compiles one sampler per leaf,
  which takes 10-40 s on a CPU."""
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = path[-1].key
    if name == "scale":
      return np.ones(a.shape, np.float32)
    if name == "embedding":
      return rng.normal(size=a.shape).astype(np.float32)
    fan_in = int(np.prod(a.shape[:-1])) if len(a.shape) > 1 else a.shape[0]
    return (rng.uniform(-1, 1, a.shape) / np.sqrt(fan_in)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(leaf, abstract_params(model))


def _get(tree: Any, path: Path) -> Any:
  for k in path:
    tree = tree[k]
  return tree


def _set(tree: dict, path: Path, value: Any) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _flat_paths(tree: Any) -> set[Path]:
  return {tuple(str(k.key) for k in kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _checked_rules(model: Model) -> tuple[list[Rule], tuple[str, ...], Any]:
  rules, ignored = rules_for(model)
  target = abstract_params(model)
  covered, leaves = [r.path for r in rules], _flat_paths(target)
  if len(set(covered)) != len(covered) or set(covered) != leaves:
    raise AssertionError(f"torch mapping out of sync with {type(model).__name__}: uncovered "
                         f"{sorted(leaves - set(covered))}, stale {sorted(set(covered) - leaves)}")
  return rules, ignored, target


def params_from_state_dict(model: Model, state_dict: Mapping[str, Any]) -> dict:
  """Reference state dict (numpy arrays in torch layouts) -> params tree of `model` (float32 numpy)."""
  rules, ignored, target = _checked_rules(model)
  expected = {k for r in rules for k in r.torch_keys}
  problems = [f"missing key {k}" for k in sorted(expected - set(state_dict))]
  problems += [f"unexpected key {k}" for k in sorted(set(state_dict) - expected - set(ignored))]
  params: dict = {}
  for rule in rules:
    present = [k for k in rule.torch_keys if k in state_dict]
    if not present:
      continue
    to_flax, torch_shape, _ = _KINDS[rule.kind]
    want = torch_shape(_get(target, rule.path).shape)
    arrays = {}
    for k in present:
      a = np.asarray(state_dict[k])
      if a.shape != want:
        problems.append(f"misshaped key {k}: {a.shape}, expected {want}")
      elif not (np.issubdtype(a.dtype, np.floating)):
        problems.append(f"key {k}: dtype {a.dtype}, expected a float")
      else:
        arrays[k] = a.astype(np.float32)
    ref = next(iter(arrays.values()), None)
    for k, a in arrays.items():
      if a is not ref and not np.array_equal(a, ref):
        problems.append(f"alias key {k} differs from {present[0]} (shared tensor)")
    if ref is not None:
      _set(params, rule.path, np.ascontiguousarray(to_flax(ref)))
  if problems:
    raise StateDictError(f"state dict does not fit {type(model).__name__} ({len(problems)} problems):\n  "
                         + "\n  ".join(problems))
  return params


def state_dict_from_params(model: Model, params: Any) -> dict[str, np.ndarray]:
  """Params tree of `model` -> reference state dict (numpy, torch layouts, every alias key written)."""
  rules, _, _ = _checked_rules(model)
  out = {}
  for rule in rules:
    a = _KINDS[rule.kind][2](np.asarray(_get(params, rule.path), np.float32))
    for k in rule.torch_keys:
      out[k] = np.ascontiguousarray(a)
  return out
