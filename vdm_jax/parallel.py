"""Device mesh, batch sharding and multi-host start-up for data-parallel training.

Training is data parallel over one `jax.sharding.Mesh` with a single axis, 'data', holding every
device of every process: the batch is split along 'data', parameters and optimizer state are
replicated. The batch size in a config is the *global* batch (summed over all devices and hosts);
each process loads `global / jax.process_count()` examples and
`jax.make_array_from_process_local_data` assembles them into one global `jax.Array`.

Multi-host (several machines, one process each): call `initialize_distributed()` before anything
else touches JAX. It runs `jax.distributed.initialize()` when

  * `force=True` (the CLI's `--multihost` flag), or
  * the environment says so: `VDM_MULTIHOST=1`, or `JAX_COORDINATOR_ADDRESS` is set (then
    `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` give the process count and this process's id).

On Cloud TPU pods, SLURM and Open MPI, `jax.distributed.initialize()` finds the coordinator by
itself, so `--multihost` (or `VDM_MULTIHOST=1`) is all it takes; elsewhere set, on every host::

    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=4 JAX_PROCESS_ID=<0..3> \\
        python -m experiments.train --config=... --workdir=<shared folder>

Every host runs the same command with the same workdir (a shared filesystem or a bucket).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

logger = logging.getLogger(__name__)

DATA_AXIS = "data"


def initialize_distributed(force: bool = False) -> bool:
  """Runs `jax.distributed.initialize()` for multi-host runs (see the module docstring).

  Returns True when it initialised, False for a single-process run. Call it first: before any
  other JAX call (device queries included).
  """
  env = os.environ
  wanted = force or env.get("VDM_MULTIHOST", "").lower() in ("1", "true", "yes") or bool(
      env.get("JAX_COORDINATOR_ADDRESS"))
  if not wanted:
    return False
  kwargs = {}
  if env.get("JAX_COORDINATOR_ADDRESS"):
    kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
  if env.get("JAX_NUM_PROCESSES"):
    kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
  if env.get("JAX_PROCESS_ID"):
    kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
  jax.distributed.initialize(**kwargs)
  logger.info("jax.distributed initialised: process %d of %d, %d local / %d global devices",
              jax.process_index(), jax.process_count(), jax.local_device_count(),
              jax.device_count())
  return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process), axis 'data'."""
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError("make_mesh needs at least one device.")
  return Mesh(np.asarray(devices, dtype=object), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays copied on every device of the mesh (parameters, optimizer state)."""
  return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh, batch_dim: int = 0) -> NamedSharding:
  """Sharding splitting axis `batch_dim` over the 'data' axis (earlier axes unsplit)."""
  return NamedSharding(mesh, P(*([None] * batch_dim), DATA_AXIS))


def check_batch_size(global_batch: int, num_devices: int, num_processes: int = 1,
                     what: str = "config.training.batch_size") -> None:
  """Raises ValueError (saying what to change) unless the global batch splits evenly over
  `num_devices` devices and `num_processes` processes."""
  if isinstance(global_batch, bool) or not isinstance(global_batch, (int, np.integer)) or \
      global_batch < 1:
    raise ValueError(f"{what} must be a positive integer, got {global_batch!r}.")
  if global_batch % num_devices:
    suggest = max(num_devices, round(global_batch / num_devices) * num_devices)
    raise ValueError(
        f"{what}={global_batch} is not divisible by the number of devices ({num_devices}): set "
        f"{what} to a multiple of {num_devices} (e.g. --{what}={suggest}), or run on a number "
        f"of devices that divides {global_batch}.")
  if global_batch % num_processes:
    raise ValueError(f"{what}={global_batch} is not divisible by the number of processes "
                     f"({num_processes}): use a multiple of {num_processes}.")


def per_process_batch(global_batch: int, mesh: Mesh,
                      what: str = "config.training.batch_size") -> int:
  """The examples each process loads: global_batch / process_count (checked to split evenly)."""
  check_batch_size(global_batch, mesh.devices.size, jax.process_count(), what)
  return global_batch // jax.process_count()


def shard_batch(batch: Mapping[str, Any], mesh: Mesh, batch_dim: int = 0) -> dict[str, jax.Array]:
  """Host-local numpy batch (this process's rows) -> global jax.Arrays split over 'data'.

  Every array's axis `batch_dim` is the batch axis; the global array has process_count times as
  many rows, in process order.
  """
  sharding = data_sharding(mesh, batch_dim)
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    global_shape = list(v.shape)
    global_shape[batch_dim] *= jax.process_count()
    out[k] = jax.make_array_from_process_local_data(sharding, v, tuple(global_shape))
  return out
