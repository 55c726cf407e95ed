"""Batches from arrays in memory: deterministic, sharded by process, resumable.

``train_batches`` and ``eval_batches`` only index the arrays they are given, batch by batch, so a
split loaded once with ``load_arrays`` can feed any number of iterators (a new evaluation pass
each evaluation, a resumed training run) without reading or copying it again. ``get_dataset``
loads a split and returns the matching iterator.
"""
from __future__ import annotations

import os
from typing import Iterator

import jax
import numpy as np

from vdm_jax.data import registry, sources

__all__ = ["eval_batches", "get_dataset", "train_batches"]

Batch = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- argument checks


def _check_non_negative(arg: str, value) -> None:
  if not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{arg} must be a non-negative integer, got {value!r}.")


def _check_batching(batch_size: int, start_batch: int, process_index: int | None,
                    process_count: int | None) -> tuple[int, int]:
  """Checks the arguments shared by both iterators.

  Returns:
    (process_index, process_count), the defaults being ``jax.process_index()`` and
    ``jax.process_count()``.

  Raises:
    ValueError naming the first bad argument.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  for arg, value in (("batch_size", batch_size), ("process_count", process_count)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{arg} must be a positive integer, got {value!r}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
  _check_non_negative("start_batch", start_batch)
  return process_index, process_count


def _check_one_global_batch(num_examples: int, batch_size: int, process_count: int,
                            owner: str) -> None:
  """A training epoch needs at least one full global batch, since the remainder is dropped."""
  if num_examples < batch_size * process_count:
    raise ValueError(f"{owner} has {num_examples} training examples, fewer than one global "
                     f"batch ({batch_size} per process x {process_count} processes).")


def _check_arrays(images: np.ndarray, labels: np.ndarray) -> None:
  if np.ndim(labels) != 1 or np.ndim(images) < 1 or len(images) != len(labels):
    raise ValueError(f"images {np.shape(images)} and labels {np.shape(labels)} must be "
                     "[N, ...] and [N].")


# ----------------------------------------------------------------------------- iterators


def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of the n examples in `epoch`: a function of (seed, epoch) only."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def _train_iterator(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                    start_batch: int, process_index: int,
                    process_count: int) -> Iterator[Batch]:
  """Endless shuffled batches: batch k here = rows [p*B, (p+1)*B) of global batch k."""
  global_batch = batch_size * process_count
  batches_per_epoch = len(images) // global_batch  # drop remainder
  epoch, step = divmod(start_batch, batches_per_epoch)
  while True:
    order = _epoch_permutation(seed, epoch, len(images))
    for k in range(step, batches_per_epoch):
      start = k * global_batch + process_index * batch_size
      idx = order[start:start + batch_size]
      yield {"image": images[idx], "label": labels[idx]}
    epoch, step = epoch + 1, 0


def _eval_iterator(images: np.ndarray, labels: np.ndarray, batch_size: int, start_batch: int,
                   process_index: int, process_count: int) -> Iterator[Batch]:
  """One ordered pass; rows past the end are zeros, mask False; same count on every process."""
  n = len(images)
  global_batch = batch_size * process_count
  for k in range(start_batch, -(-n // global_batch)):
    rows = k * global_batch + process_index * batch_size + np.arange(batch_size)
    mask = rows < n
    idx = np.where(mask, rows, 0)
    image, label = images[idx], labels[idx]  # fancy indexing copies: the source stays intact
    image[~mask] = 0
    label[~mask] = 0
    yield {"image": image, "label": label, "mask": mask}


def train_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int = 0,
                  start_batch: int = 0, process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[Batch]:
  """Endless shuffled batches of in-memory arrays for this process.

  Each epoch is a permutation of the N examples that depends only on (seed, epoch); the global
  batch k (``batch_size * process_count`` examples; the incomplete last one of each epoch
  dropped) is split between processes, process p taking rows [p * batch_size,
  (p + 1) * batch_size). ``start_batch=k`` starts at this process's batch k, exactly as a fresh
  iterator would after k batches, without producing the first k. Arguments are checked when
  this is called, before any iteration.

  Args:
    images: [N, ...] array, e.g. uint8 [N, H, W, C] from ``load_arrays``; indexed, not copied.
    labels: [N] array.
    batch_size: examples per batch on this process.
    seed: non-negative integer seed of the shuffling.
    start_batch: index of the first batch to yield.
    process_index, process_count: this process and how many; default ``jax.process_index()``
      and ``jax.process_count()``.

  Yields:
    dicts with ``image`` [B, ...] and ``label`` [B], of the dtypes of `images` and `labels`.

  Raises:
    ValueError: a bad argument, or fewer than one global batch of examples.
  """
  process_index, process_count = _check_batching(batch_size, start_batch, process_index,
                                                 process_count)
  _check_non_negative("seed", seed)
  _check_arrays(images, labels)
  _check_one_global_batch(len(images), batch_size, process_count, "images")
  return _train_iterator(images, labels, batch_size, seed, start_batch, process_index,
                         process_count)


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *,
                 start_batch: int = 0, process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[Batch]:
  """One ordered pass over in-memory arrays, sharded between processes.

  Global batch k holds rows [k * G, (k + 1) * G) with G = ``batch_size * process_count``,
  process p taking its rows [p * batch_size, (p + 1) * batch_size). Together the processes
  cover every example exactly once; every process yields the same number of batches,
  ceil(N / G) - start_batch, the last ones padded with zero rows that ``mask`` marks False.
  Arguments are checked when this is called, before any iteration.

  Args:
    images: [N, ...] array; indexed, not copied.
    labels: [N] array.
    batch_size: examples per batch on this process.
    start_batch: index of the first batch to yield.
    process_index, process_count: as in ``train_batches``.

  Yields:
    dicts with ``image`` [B, ...], ``label`` [B] and ``mask`` bool [B] (True for real rows).
  """
  process_index, process_count = _check_batching(batch_size, start_batch, process_index,
                                                 process_count)
  _check_arrays(images, labels)
  return _eval_iterator(images, labels, batch_size, start_batch, process_index, process_count)


def get_dataset(name: str, split: str, batch_size: int, *, seed: int = 0,
                data_dir: str | os.PathLike | None = None, start_batch: int = 0,
                process_index: int | None = None,
                process_count: int | None = None) -> Iterator[Batch]:
  """Iterator of numpy batches of one dataset split for this process.

  The arguments are checked, then the split is loaded (``load_arrays``), when this is called,
  so errors come before any iteration. ``split="train"`` gives ``train_batches`` (endless,
  shuffled by (seed, epoch)); ``split="test"`` gives ``eval_batches`` (one padded pass in the
  source's order; ``seed`` is not used).

  Args:
    name: dataset name (see ``dataset_names``).
    split: ``"train"`` or ``"test"``.
    batch_size: examples per batch on this process.
    seed: non-negative integer seed of the shuffling.
    data_dir: see ``load_arrays``.
    start_batch: index of the first batch to yield.
    process_index, process_count: this process and how many; default ``jax.process_index()``
      and ``jax.process_count()``.

  Yields:
    dicts with ``image`` uint8 [B, H, W, C] and ``label`` int32 [B]; for ``"test"`` also
    ``mask`` bool [B] (True for real rows).
  """
  registry.get_spec(name)
  registry.check_split(split)
  process_index, process_count = _check_batching(batch_size, start_batch, process_index,
                                                 process_count)
  _check_non_negative("seed", seed)
  images, labels = sources.load_arrays(name, split, data_dir)
  if split == "train":
    _check_one_global_batch(len(images), batch_size, process_count, name)
    return _train_iterator(images, labels, batch_size, seed, start_batch, process_index,
                           process_count)
  return _eval_iterator(images, labels, batch_size, start_batch, process_index, process_count)
