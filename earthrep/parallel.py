"""Device mesh and shardings: one `data` axis over every device of every host.

Params and optimizer state are replicated; batches are split along their leading axis. On several
hosts call `maybe_initialize_distributed()` first (it wraps `jax.distributed.initialize`), then each
host feeds its own slice of the global batch and `host_batch_to_global` assembles the global array.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
  """Joins a multi-host run when the environment describes one (TPU VM pods, SLURM, explicit vars)."""
  if jax.process_count() > 1:
    return
  explicit = os.environ.get("EARTHREP_COORDINATOR")
  if explicit:
    jax.distributed.initialize(
        coordinator_address=explicit,
        num_processes=int(os.environ["EARTHREP_NUM_PROCESSES"]),
        process_id=int(os.environ["EARTHREP_PROCESS_ID"]))
  elif os.environ.get("EARTHREP_DISTRIBUTED", "0") == "1":
    jax.distributed.initialize()  # auto-detects TPU pods, SLURM, Open MPI, k8s


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D `data` mesh over all (or the first `num_devices`) devices, with Auto axis types."""
  devices = jax.devices()
  n = len(devices) if not num_devices else num_devices
  return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def host_batch_to_global(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Puts this host's slice of the batch onto the mesh as one global array per key."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def host_empty(shape: tuple[int, ...], dtype: Any = np.float32, align: int = 64) -> np.ndarray:
  """An uninitialised numpy array whose data is `align`-byte aligned: a CPU device takes such an array
  without copying it (`host_batch_to_global`; numpy's own allocations are 16-byte aligned and are copied)."""
  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape)) * dtype.itemsize
  raw = np.empty(nbytes + align, np.uint8)
  start = -raw.ctypes.data % align
  return raw[start:start + nbytes].view(dtype).reshape(shape)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def check_divisible(global_batch_size: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the {n} devices of the mesh")
  if global_batch_size % jax.process_count():
    raise ValueError(f"batch_size {global_batch_size} is not divisible by {jax.process_count()} hosts")


def assert_same_across_hosts(value: np.ndarray, what: str) -> None:
  """Safety switch: RNG seeds etc. must agree on every host."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  multihost_utils.assert_equal(np.asarray(value), f"{what} differs across hosts")
