"""The evaluation of embeddings behind `python -m earthrep.evaluate` (and `earthrep.gpp`): GPP at flux towers
with and without meteorology under nested leave-sites-out and leave-year-out splits, ceilings from a
simulator's truth, per-pixel probes and the boundary contrast, one report (`pipeline` names the modules)."""
