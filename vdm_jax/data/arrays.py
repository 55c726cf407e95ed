"""A user's own data as a dataset: arrays in memory or an .npz file, any shape, integer or float.

    data.register_arrays("swirl", train=x_train, test=x_test)          # float32 [N, 2], no labels
    data.register_npz("/data/swirl.npz")                               # the same, from a file
    config.data.name = "/data/swirl.npz"                               # or name the file itself

The data are served as they are given: float data for a `likelihood.Continuous` model (scale them
as you want them modelled), integer data for a `likelihood.Discrete` one. Every function of
`vdm_jax.data` and the training system then treat the name like a built-in dataset (batches,
sharding across hosts, resume, evaluation); labels, when given, make class-conditional models
possible.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vdm_jax.data.registry import SPLITS, DatasetSpec, register_dataset

__all__ = ["NPZ_KEYS", "register_arrays", "register_npz"]

# The keys of an .npz file of `register_npz`: data per split, and optionally labels per split.
NPZ_KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}


def _as_data(x, where: str) -> np.ndarray:
  """The data array as served: float32 for floats, uint8 kept, other integers as int32."""
  x = np.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"{where} must be [N, ...] with at least one data dimension per example, "
                     f"got shape {x.shape} (reshape vectors of scalars to [N, 1]).")
  if np.issubdtype(x.dtype, np.floating):
    return np.ascontiguousarray(x, np.float32)
  if x.dtype == np.uint8:
    return np.ascontiguousarray(x)
  if np.issubdtype(x.dtype, np.integer):
    if x.size and (x.min() < np.iinfo(np.int32).min or x.max() > np.iinfo(np.int32).max):
      raise ValueError(f"{where} holds integers outside int32's range.")
    return np.ascontiguousarray(x, np.int32)
  raise TypeError(f"{where} must hold integers or floats, got dtype {x.dtype}.")


def _as_labels(y, n: int, where: str) -> np.ndarray:
  y = np.asarray(y)
  if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{where} must be integer labels of shape [{n}] (one per example), got "
                     f"{y.dtype} {y.shape}.")
  if n and y.min() < 0:
    raise ValueError(f"{where} must be labels >= 0, found {y.min()}.")
  return y.astype(np.int32)


def register_arrays(name: str, train, test, *, train_labels=None, test_labels=None,
                    num_classes: int | None = None, overwrite: bool = False) -> DatasetSpec:
  """Registers arrays held in memory as the dataset `name` (``register_dataset``).

  Args:
    name: the dataset's name (non-empty, no whitespace).
    train, test: the splits' data [N, ...], the same shape per example in both; floats are
      served as float32 (for `likelihood.Continuous`), uint8 as uint8, other integers as int32
      (for `likelihood.Discrete`).
    train_labels, test_labels: integer labels [N] of each split, both or neither; without
      them every example has label 0 (num_classes 1, for unconditional models).
    num_classes: labels lie in [0, num_classes); default: the largest label + 1.
    overwrite: replace a dataset already registered under `name`.

  Returns:
    the registered ``DatasetSpec``. The arrays are kept (not copied again) and served by
    ``load_arrays(name, split)``.

  Raises:
    ValueError / TypeError naming the argument: ranks, dtypes, shapes that differ between the
    splits, labels of the wrong shape or out of range.
  """
  xs = {"train": _as_data(train, "train"), "test": _as_data(test, "test")}
  if xs["train"].shape[1:] != xs["test"].shape[1:] or xs["train"].dtype != xs["test"].dtype:
    raise ValueError(f"train and test must have the same shape per example and the same kind "
                     f"of values, got {xs['train'].dtype} {xs['train'].shape[1:]} and "
                     f"{xs['test'].dtype} {xs['test'].shape[1:]}.")
  if (train_labels is None) != (test_labels is None):
    raise ValueError("give labels for both splits (train_labels and test_labels) or for neither.")
  if train_labels is None:
    ys = {split: np.zeros((len(xs[split]),), np.int32) for split in SPLITS}
    num_classes = 1 if num_classes is None else num_classes
  else:
    ys = {"train": _as_labels(train_labels, len(xs["train"]), "train_labels"),
          "test": _as_labels(test_labels, len(xs["test"]), "test_labels")}
    top = max(int(y.max()) + 1 if y.size else 1 for y in ys.values())
    num_classes = top if num_classes is None else num_classes
    if not isinstance(num_classes, (int, np.integer)) or num_classes < top:
      raise ValueError(f"num_classes={num_classes!r} but the labels go up to {top - 1}: pass "
                       f"num_classes >= {top} or leave it None.")
  if not all(len(xs[split]) for split in SPLITS):
    raise ValueError(f"both splits need at least one example, got {len(xs['train'])} train and "
                     f"{len(xs['test'])} test.")

  def arrays(split):
    return xs[split], ys[split]

  spec = DatasetSpec(shape=xs["train"].shape[1:], num_classes=int(num_classes),
                     num_train=len(xs["train"]), num_test=len(xs["test"]), files={},
                     dtype=str(xs["train"].dtype),
                     arrays=arrays, how_to_get="the arrays given to register_arrays")
  register_dataset(name, spec, overwrite=overwrite)
  return spec


def register_npz(path: str | os.PathLike, name: str | None = None, *,
                 overwrite: bool = False) -> str:
  """Registers the .npz file at `path` as a dataset and returns its name (default: the path).

  The file holds ``x_train`` and ``x_test`` (data [N, ...]) and, optionally, ``y_train`` and
  ``y_test`` (integer labels [N]); ``np.savez(path, x_train=..., x_test=...)`` writes one. It is
  read once, here, without unpickling (object arrays are refused).
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no .npz file at {path}.")
  with np.load(path, allow_pickle=False) as f:
    keys = set(f.files)
    needed = {NPZ_KEYS[split][0] for split in SPLITS}
    if not needed <= keys:
      raise ValueError(f"{path} must hold the arrays {sorted(needed)} (and optionally "
                       f"{sorted(NPZ_KEYS[s][1] for s in SPLITS)}); it holds {sorted(keys)}. "
                       "Write it with np.savez(path, x_train=..., x_test=...).")
    arrays = {k: f[k] for k in keys}
  name = str(path) if name is None else name
  x_key = {split: NPZ_KEYS[split][0] for split in SPLITS}
  y_key = {split: NPZ_KEYS[split][1] for split in SPLITS}
  register_arrays(name, arrays[x_key["train"]], arrays[x_key["test"]],
                  train_labels=arrays.get(y_key["train"]), test_labels=arrays.get(y_key["test"]),
                  overwrite=overwrite)
  return name
