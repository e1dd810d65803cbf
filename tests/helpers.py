"""Helpers shared by the tests: random-weight fusion models and their model directories."""
from __future__ import annotations

from pathlib import Path

from earthrep.interop import convert, torch_import


def random_fusion(variant: str = "test", **kwargs):
  """(FusionModel, params) with torch-like random weights (`torch_import.random_fusion`), tiny by default."""
  return torch_import.random_fusion(variant, **kwargs)


def save_fusion_dir(model, params, out: str | Path) -> Path:
  """A model directory in the converted-checkpoint layout: `<out>/model_config.json` + `<out>/0/params`."""
  return convert.save_params(out, params, convert.model_config(model))
