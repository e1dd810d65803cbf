"""Shapes of a model's inputs and params, without computing anything (for restores and random inits)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from earthrep.models.autoencoder import TransformerAE
from earthrep.models.fusion import FusionModel
from earthrep.schema import PATCH_PX

Model = TransformerAE | FusionModel


def example_inputs(model: Model, batch: int = 1) -> tuple[Any, ...]:
  """Zero inputs of the right shapes for `model.init` / `model.apply` (positional args)."""
  def ae_inputs(ae: TransformerAE):
    return (jnp.zeros((batch, ae.frames, PATCH_PX, PATCH_PX, ae.channels), jnp.float32),
            jnp.zeros((batch, ae.frames - 1), jnp.int32))
  if isinstance(model, FusionModel):
    inputs = {s: ae_inputs(ae) for s, ae in zip(model.sensors, model.autoencoders)}
    return inputs, jnp.zeros((batch, len(model.sensors)), jnp.int32)
  return ae_inputs(model)


def example_kwargs(model: Model, batch: int = 1) -> dict[str, Any]:
  """Keyword inputs `model.apply` needs beside `example_inputs`: the centre pixels' validity of a fusion
  model with an anchored centre head (`FusionModel.centre_anchor`)."""
  if isinstance(model, FusionModel) and model.centre_anchor:
    return {"valid": {s: jnp.zeros((batch, ae.frames, ae.channels), bool)
                      for s, ae in zip(model.sensors, model.autoencoders)}}
  return {}


def abstract_params(model: Model) -> Any:
  """The params tree of `model` as ShapeDtypeStructs (nothing is computed)."""
  init = lambda: model.init(jax.random.key(0), *example_inputs(model), train=False,
                            **example_kwargs(model))["params"]
  return jax.eval_shape(init)
