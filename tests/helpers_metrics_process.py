"""One process of the 2-process test of `vdm_jax.metrics.gather_merge` (tests/test_metrics.py).

    python tests/helpers_metrics_process.py <port> <process_id> <out.npz>

Joins a 2-process run on 127.0.0.1:<port> (2 CPU devices each), then streams its own rows of
`all_features()` two ways and gathers them over both processes:

  * "host": this process's rows of an uneven split (SPLIT rows on process 0), as numpy
    batches of uneven sizes;
  * "global": the first GLOBAL_ROWS rows as one float32 jax.Array sharded over all 4 devices of
    both processes (each process supplies its half), given to update_stats as it is.

Writes count, mean and m2 of both gathered states to out.npz.
"""
import sys

import numpy as np

N, D = 1201, 5
SPLIT = 377                 # rows of process 0 in the "host" split
GLOBAL_ROWS = 1200          # rows of the "global" array: 300 per device
HOST_BATCHES = (0, 1, 50, 199, 7)   # batch sizes before the remainder, for each process


def all_features() -> np.ndarray:
  """[N, D] float64 features with a mean large against their spread (1e3 vs ~1)."""
  rng = np.random.default_rng(7)
  return 1e3 + rng.normal(size=(N, D)) @ rng.normal(size=(D, D))


def _batches(rows: np.ndarray):
  edges = np.cumsum(HOST_BATCHES)
  return np.split(rows, edges[edges < len(rows)])


def main(port: int, process_id: int, out: str) -> None:
  from vdm_jax import parallel
  parallel.initialize_distributed(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                  process_id=process_id, timeout_s=60)
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from vdm_jax import metrics
  assert jax.process_count() == 2 and jax.device_count() == 4

  x = all_features()
  mine = x[:SPLIT] if process_id == 0 else x[SPLIT:]
  host = metrics.init_stats(D)
  for batch in _batches(mine):
    host = metrics.update_stats(host, batch)
  host = metrics.gather_merge(host)

  sharding = NamedSharding(parallel.make_mesh(), P("data", None))
  half = GLOBAL_ROWS // 2
  local = x[process_id * half:(process_id + 1) * half].astype(np.float32)
  global_array = jax.make_array_from_process_local_data(sharding, local, (GLOBAL_ROWS, D))
  assert not global_array.is_fully_addressable
  glob = metrics.gather_merge(metrics.update_stats(metrics.init_stats(D), global_array))

  np.savez(out, host_count=host.count, host_mean=host.mean, host_m2=host.m2,
           global_count=glob.count, global_mean=glob.mean, global_m2=glob.m2)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
