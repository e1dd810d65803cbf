"""GPP at flux towers from embeddings and baselines (ARCHITECTURE.md sections g, h).

features (footprint series, daily interpolation), baselines (S2 bands, indices, S1 dB), regressors
(temporal transformer, ridge, boosted trees), evaluate (splits, metrics), report (csv, markdown, PNG);
`python -m earthrep.gpp` runs them all (see __main__.py).
"""
