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


def _check_flags(coordinator_address, num_processes, process_id) -> None:
  given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
           "--process_id": process_id}
  missing = [k for k, v in given.items() if v is None]
  if missing:
    raise ValueError(
        f"{', '.join(missing)} missing: --coordinator_address, --num_processes and --process_id "
        "go together (the same address and count on every process, ids 0..n-1); or pass none "
        "of them and --multihost for the auto-detection of TPU pods, SLURM and Open MPI.")
  host, _, port = str(coordinator_address).rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"--coordinator_address must be host:port (e.g. 10.0.0.1:1234), got "
                     f"{coordinator_address!r}.")
  if num_processes < 1:
    raise ValueError(f"--num_processes must be >= 1, got {num_processes}.")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} must lie in [0, --num_processes="
                     f"{num_processes}): ids run from 0 to {num_processes - 1}.")


def initialize_distributed(multihost: bool = False, *, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           timeout_s: int = 300) -> bool:
  """Runs `jax.distributed.initialize` for multi-process runs (see the module docstring).

  Explicit flags (all three) win; else the environment (JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID); else, with `multihost` or VDM_MULTIHOST=1, JAX's own
  detection (TPU pods, SLURM, Open MPI). CPU devices talk across processes through gloo.

  Returns True when it initialised, False for a single-process run. Call it first: before any
  other JAX call (device queries included). Raises ValueError for inconsistent flags and
  RuntimeError when the coordinator does not answer within `timeout_s` seconds.
  """
  env = os.environ
  if coordinator_address is None and env.get("JAX_COORDINATOR_ADDRESS"):
    coordinator_address = env["JAX_COORDINATOR_ADDRESS"]
    num_processes = int(env["JAX_NUM_PROCESSES"]) if env.get("JAX_NUM_PROCESSES") else None
    process_id = int(env["JAX_PROCESS_ID"]) if env.get("JAX_PROCESS_ID") else None
  explicit = (coordinator_address, num_processes, process_id) != (None, None, None)
  if explicit:
    _check_flags(coordinator_address, num_processes, process_id)
  elif not (multihost or env.get("VDM_MULTIHOST", "").lower() in ("1", "true", "yes")):
    return False
  # Cross-process collectives of the CPU backend (harmless for GPU / TPU runs).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=int(timeout_s))
  except Exception as e:
    where = (f"the coordinator at --coordinator_address={coordinator_address}" if explicit
             else "the coordinator found by auto-detection")
    raise RuntimeError(
        f"Could not join {where} within {timeout_s}s: start every process (process 0 runs the "
        "coordinator), check the host and port are reachable from this host, or raise "
        f"--distributed_timeout_s. ({type(e).__name__}: {str(e)[:300]})") from e
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
