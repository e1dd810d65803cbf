"""Files in and out: site cubes (Zarr, GeoTIFF stacks, Sentinel-2 band files), flux-tower files, feature
cubes, Orbax checkpoints, atomic writes and provenance. Imports only the contracts (`earthrep.schema`,
`earthrep.sensors`) from earthrep."""
