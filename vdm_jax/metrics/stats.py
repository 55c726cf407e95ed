"""Mean and covariance of features, one-shot or streamed batch by batch over devices and hosts.

A running `StatsState` holds (count, mean, M2) in float64, M2 the centred sum of squares
sum_i (x_i - mean)(x_i - mean)^T. Each batch is reduced to its own (n, mean, M2), centred on
its own mean, and merged into the state with the parallel update of Chan, Golub & LeVeque
(1979):

    n = n_a + n_b,   delta = mean_b - mean_a,
    mean = mean_a + delta n_b / n,
    M2 = M2_a + M2_b + delta delta^T n_a n_b / n.

Nothing is ever summed uncentred, so features whose mean is large against their spread lose
no precision (the one-pass sum of x x^T minus n mean mean^T would cancel catastrophically);
the streamed statistics equal the one-shot ones to rounding, whatever the batch sizes.

    state = init_stats(dim)
    for batch in batches:                      # [B, D] features, any B (0 included)
      state = update_stats(state, batch)
    state = gather_merge(state)                # all hosts' rows; a no-op for one process
    stats = finalize_stats(state)              # FeatureStats(mean, cov, count)
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import numpy as np

from vdm_jax.metrics import _checks


class FeatureStats(NamedTuple):
  """Gaussian summary of N feature vectors, all float64.

  mean: [D], the sample mean.
  cov: [D, D], the unbiased sample covariance, normalised by N - 1 (`np.cov`'s default, the
    one the Fréchet Inception Distance of Heusel et al. 2017 uses).
  count: N, the number of samples.
  """
  mean: np.ndarray
  cov: np.ndarray
  count: int


class StatsState(NamedTuple):
  """Running statistics of the rows seen so far, all float64 (see the module docstring).

  count: n, rows seen (0 for a fresh state).
  mean: [D], their mean (zeros while count == 0).
  m2: [D, D], their centred sum of squares sum_i (x_i - mean)(x_i - mean)^T.
  """
  count: int
  mean: np.ndarray
  m2: np.ndarray


def init_stats(dim: int) -> StatsState:
  """An empty state for features of `dim` columns."""
  dim = _checks.check_int("dim", dim, 1)
  return StatsState(0, np.zeros(dim), np.zeros((dim, dim)))


def _batch_state(x: np.ndarray) -> StatsState:
  """(n, mean, M2) of the rows of x [n, D] (n >= 1, float32 or float64), centred on their own
  mean, in float64."""
  mean = x.mean(axis=0, dtype=np.float64)
  centred = x - mean                        # float64 (mean is), the batch's only copy
  return StatsState(x.shape[0], mean, centred.T @ centred)


def _local_blocks(x) -> list:
  """The rows of `x` this process holds, as host arrays: `x` itself, or for a jax.Array spread
  over several processes its addressable shards with replica_id 0 (so rows copied on several
  devices count once over all processes; `gather_merge` then adds the other processes' rows)."""
  if not (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return [x]
  if x.ndim != 2:
    raise ValueError(f"features must be of shape [N, D], got shape {x.shape}.")
  blocks = []
  for shard in x.addressable_shards:
    if shard.replica_id != 0:
      continue
    if shard.data.shape[1] != x.shape[1]:
      raise ValueError(
          f"features {x.shape} are sharded along the feature axis (shard {shard.data.shape}): "
          "shard them along rows only, e.g. NamedSharding(mesh, P('data', None)).")
    blocks.append(np.asarray(shard.data))
  return blocks


def update_stats(state: StatsState, features) -> StatsState:
  """`state` with the rows of `features` [B, D] (B >= 0; numpy or jax, any float dtype) added.

  A jax.Array spread over several processes contributes this process's rows (its addressable
  shards, each row once); call `gather_merge` at the end for everyone's. Raises ValueError for
  a D other than the state's, or non-finite features. Memory: one float64 copy of the batch.
  """
  if not isinstance(state, StatsState):
    raise TypeError(f"state must be a StatsState (from init_stats), got {type(state).__name__}.")
  for block in _local_blocks(features):
    block = _checks.features("features", block, min_rows=0, why="a batch")
    if block.shape[1] != state.mean.shape[0]:
      raise ValueError(f"features have D={block.shape[1]} columns but the state was made for "
                       f"D={state.mean.shape[0]} (init_stats(dim)): one state per feature layer.")
    if block.shape[0]:
      state = merge(state, _batch_state(block))
  return state


def merge(a: StatsState, b: StatsState) -> StatsState:
  """The state of the rows of `a` and `b` together (Chan et al.'s update, float64).

  Order-independent and associative up to rounding, so partial states of devices, hosts or
  batches can be merged in any grouping.
  """
  for name, s in (("a", a), ("b", b)):
    if not isinstance(s, StatsState):
      raise TypeError(f"{name} must be a StatsState, got {type(s).__name__}.")
  if a.mean.shape != b.mean.shape:
    raise ValueError(f"Cannot merge states of D={a.mean.shape[0]} and D={b.mean.shape[0]} "
                     "features: both must come from the same feature layer.")
  if b.count == 0:
    return a
  if a.count == 0:
    return b
  n = a.count + b.count
  delta = b.mean - a.mean
  mean = a.mean + delta * (b.count / n)
  m2 = a.m2 + b.m2 + np.outer(delta, delta) * (a.count * b.count / n)
  return StatsState(n, mean, m2)


def _pack(state: StatsState) -> np.ndarray:
  """[count, mean, M2] as one float64 vector viewed as uint32 words: the collectives carry
  32-bit words bit for bit, while float64 would be cut to float32 unless jax_enable_x64 is on
  (counts are exact in float64 up to 2^53)."""
  flat = np.concatenate([[float(state.count)], state.mean, state.m2.ravel()])
  return np.ascontiguousarray(flat, np.float64).view(np.uint32)


def _unpack(words: np.ndarray, dim: int) -> StatsState:
  flat = np.ascontiguousarray(words, np.uint32).view(np.float64)
  return StatsState(int(flat[0]), flat[1:1 + dim].copy(),
                    flat[1 + dim:].reshape(dim, dim).copy())


def gather_merge(state: StatsState) -> StatsState:
  """The state of every process's rows, on every process: each process's (count, mean, M2)
  gathered with `multihost_utils.process_allgather` and merged in process order, so all
  processes get the same numbers bit for bit. The state itself for a single process.

  Every process must call it (it is a collective), each with a state of the same D (a process
  without rows passes its empty state). Memory: the states of all processes,
  num_processes * (D^2 + D + 1) * 8 bytes (e.g. 34 MB per process for D = 2048).
  """
  if not isinstance(state, StatsState):
    raise TypeError(f"state must be a StatsState, got {type(state).__name__}.")
  if jax.process_count() == 1:
    return state
  from jax.experimental import multihost_utils
  dim = state.mean.shape[0]
  dims = np.asarray(multihost_utils.process_allgather(np.int32(dim))).ravel()
  if np.any(dims != dim):
    raise ValueError(f"gather_merge: the processes' states have D = {dims.tolist()} (in process "
                     "order): every process must accumulate the same feature layer.")
  words = np.asarray(multihost_utils.process_allgather(_pack(state)))   # [processes, words]
  return functools.reduce(merge, (_unpack(w, dim) for w in words))


def finalize_stats(state: StatsState) -> FeatureStats:
  """FeatureStats of the rows of `state`: the mean and the N-1 normalised covariance.

  Raises ValueError for fewer than 2 rows (the unbiased covariance needs N >= 2).
  """
  if not isinstance(state, StatsState):
    raise TypeError(f"state must be a StatsState, got {type(state).__name__}.")
  if state.count < 2:
    raise ValueError(f"The covariance needs at least 2 samples, the state has {state.count}: "
                     "add more batches (after gather_merge, for all processes).")
  cov = state.m2 / (state.count - 1)
  return FeatureStats(state.mean.copy(), (cov + cov.T) / 2, state.count)


def feature_stats(features) -> FeatureStats:
  """FeatureStats of all rows of `features` [N, D] at once (N >= 2), in float64.

  Equal to `np.mean(features, 0)` and `np.cov(features, rowvar=False)` to rounding. Memory: one
  float64 copy of the features; for more features than fit, stream them with `update_stats`.
  """
  x = _checks.features("features", features, min_rows=2, why="the covariance")
  return finalize_stats(_batch_state(x))
