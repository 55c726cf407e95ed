"""The datasets known by name: ``DatasetSpec``, the built-in specs and the registry.

A spec says what is known about a dataset before reading it: image shape, classes, split sizes,
the files of each split and the reader that parses them. ``register_dataset`` adds a spec under a
new name; ``get_spec`` and ``dataset_info`` look one up without reading any data.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from vdm_jax.data.formats import read_cifar10_split, read_idx_split

__all__ = [
    "DatasetSpec",
    "Reader",
    "SPLITS",
    "check_split",
    "dataset_info",
    "dataset_names",
    "get_spec",
    "register_dataset",
]

SPLITS = ("train", "test")

# reader(files) -> (images uint8 [N, H, W, C] as stored, labels integer [N]); `files` are the
# paths of one split, one per entry of DatasetSpec.files[split], in that order.
Reader = Callable[[list[Path]], tuple[np.ndarray, np.ndarray]]


# ----------------------------------------------------------------------------- specs


def _as_tuple(value) -> tuple:
  """`value` as a tuple; a bare string is one item, not a sequence of characters."""
  return (value,) if isinstance(value, (str, os.PathLike)) else tuple(value)


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What is known about one dataset before reading it.

  Attributes:
    shape: (H, W, C) of one image, as served (after ``transposed`` is undone).
    num_classes: labels lie in [0, num_classes) once ``label_offset`` is subtracted.
    num_train, num_test: examples in the full splits (reported by ``dataset_info``).
    files: per split (``"train"`` and ``"test"``), the files read, in the order the reader gets
      them. Each entry is one file: a name, or a tuple of accepted spellings of it (e.g. gzipped
      or not), first match wins. A bare string stands for one file.
    reader: ``reader(files: list[Path]) -> (images, labels)``, images uint8 [N, H, W, C] and
      labels integer [N] as stored in the files; called with the found files of one split.
    subdirs: folders searched under each root, in order (``""`` is the root itself).
    how_to_get: where the files come from, for the missing-data message.
    tfds_name: the tensorflow-datasets name, or None when tfds does not have the dataset.
    transposed: the source stores images as [N, W, H, C]; they are transposed back.
    label_offset: subtracted from the stored labels (e.g. 1 for labels stored as 1..K).
  """

  shape: tuple[int, int, int]
  num_classes: int
  num_train: int
  num_test: int
  files: Mapping[str, tuple[tuple[str, ...], ...]]
  reader: Reader
  subdirs: tuple[str, ...] = ("",)
  how_to_get: str = "the files listed above"
  tfds_name: str | None = None
  transposed: bool = False
  label_offset: int = 0

  def __post_init__(self):
    # Lists and bare strings are accepted where tuples are meant; the lookups rely on tuples.
    object.__setattr__(self, "shape", _as_tuple(self.shape))
    object.__setattr__(self, "subdirs", _as_tuple(self.subdirs))
    object.__setattr__(self, "files", _normalised_files(self.files))
    _check_spec(self)


def _normalised_files(files) -> dict[str, tuple[tuple[str, ...], ...]]:
  """``files`` as {split: ((spelling, ...), ...)}; ValueError unless it covers exactly SPLITS."""
  if not isinstance(files, Mapping) or set(files) != set(SPLITS):
    keys = sorted(files) if isinstance(files, Mapping) else type(files).__name__
    raise ValueError(f"DatasetSpec.files must map each of {', '.join(SPLITS)} to its files, "
                     f"got {keys}.")
  out = {}
  for split in SPLITS:
    entries = tuple(tuple(str(n) for n in _as_tuple(e)) for e in _as_tuple(files[split]))
    if not entries or not all(entries) or not all(n for e in entries for n in e):
      raise ValueError(f"DatasetSpec.files[{split!r}] must name at least one file, each with "
                       f"at least one non-empty spelling, got {files[split]!r}.")
    out[split] = entries
  return out


def _check_spec(spec: DatasetSpec) -> None:
  """Raises ValueError / TypeError naming the first bad field of `spec`."""
  if len(spec.shape) != 3 or not all(_is_int(d) and d > 0 for d in spec.shape):
    raise ValueError(f"DatasetSpec.shape must be 3 positive integers (H, W, C), got {spec.shape}.")
  for field in ("num_classes", "num_train", "num_test"):
    value = getattr(spec, field)
    if not _is_int(value) or value < 1:
      raise ValueError(f"DatasetSpec.{field} must be a positive integer, got {value!r}.")
  if not _is_int(spec.label_offset):
    raise ValueError(f"DatasetSpec.label_offset must be an integer, got {spec.label_offset!r}.")
  if not callable(spec.reader):
    raise TypeError(f"DatasetSpec.reader must be callable as reader(files) -> (images, labels), "
                    f"got {spec.reader!r}.")
  if not all(isinstance(s, str) for s in spec.subdirs):
    raise ValueError(f"DatasetSpec.subdirs must be folder names, got {spec.subdirs!r}.")
  if spec.tfds_name is not None and not (isinstance(spec.tfds_name, str) and spec.tfds_name):
    raise ValueError(f"DatasetSpec.tfds_name must be a non-empty string or None, "
                     f"got {spec.tfds_name!r}.")


# ----------------------------------------------------------------------------- built-in datasets


def _idx_files(prefix: str, train: str, test: str) -> dict[str, tuple[tuple[str, ...], ...]]:
  """IDX image and label file names for both splits, gzipped first."""
  def pair(split_name):
    return tuple(
        (f"{prefix}{split_name}-{kind}-ubyte.gz", f"{prefix}{split_name}-{kind}-ubyte")
        for kind in ("images-idx3", "labels-idx1"))
  return {"train": pair(train), "test": pair(test)}


_EMNIST_SIZES = {  # split: (num_classes, num_train, num_test)
    "byclass": (62, 697932, 116323),
    "bymerge": (47, 697932, 116323),
    "balanced": (47, 112800, 18800),
    "letters": (26, 88800, 14800),
    "digits": (10, 240000, 40000),
    "mnist": (10, 60000, 10000),
}


def _builtin_specs() -> dict[str, DatasetSpec]:
  """The datasets known without registration."""
  specs = {
      "mnist": DatasetSpec(
          shape=(28, 28, 1), num_classes=10, num_train=60000, num_test=10000,
          tfds_name="mnist", reader=read_idx_split, files=_idx_files("", "train", "t10k"),
          subdirs=("mnist", "MNIST/raw", ""),
          how_to_get="the four MNIST files from https://yann.lecun.com/exdb/mnist/ (or a mirror)"),
      "fashion_mnist": DatasetSpec(
          shape=(28, 28, 1), num_classes=10, num_train=60000, num_test=10000,
          tfds_name="fashion_mnist", reader=read_idx_split,
          files=_idx_files("", "train", "t10k"),
          subdirs=("fashion_mnist", "fashion-mnist", "FashionMNIST/raw", ""),
          how_to_get=("Debian's package (apt-get install dataset-fashion-mnist, files land in "
                      "/usr/share/datasets/fashion-mnist, found without configuration), or the "
                      "four files from https://github.com/zalandoresearch/fashion-mnist")),
      "cifar10": DatasetSpec(
          shape=(32, 32, 3), num_classes=10, num_train=50000, num_test=10000,
          tfds_name="cifar10", reader=read_cifar10_split,
          files={"train": tuple((f"data_batch_{i}.bin",) for i in range(1, 6)),
                 "test": (("test_batch.bin",),)},
          subdirs=("cifar10/cifar-10-batches-bin", "cifar-10-batches-bin", "cifar10", ""),
          how_to_get=("the CIFAR-10 binary version (cifar-10-binary.tar.gz from "
                      "https://www.cs.toronto.edu/~kriz/cifar.html), extracted so that "
                      "cifar-10-batches-bin/ lies in the folder")),
  }
  for split, (classes, train, test) in _EMNIST_SIZES.items():
    specs[f"emnist/{split}"] = DatasetSpec(
        shape=(28, 28, 1), num_classes=classes, num_train=train, num_test=test,
        tfds_name=f"emnist/{split}", reader=read_idx_split,
        files=_idx_files(f"emnist-{split}-", "train", "test"),
        subdirs=("emnist/gzip", "emnist", "EMNIST/raw", "gzip", ""),
        transposed=True, label_offset=1 if split == "letters" else 0,
        how_to_get=("the files of the EMNIST gzip.zip from "
                    "https://www.nist.gov/itl/products-and-services/emnist-dataset"))
  return specs


_SPECS: dict[str, DatasetSpec] = _builtin_specs()


# ----------------------------------------------------------------------------- registry


def register_dataset(name: str, spec: DatasetSpec, *, overwrite: bool = False) -> None:
  """Makes `name` a dataset for every function of ``vdm_jax.data``, in this process.

  Args:
    name: the new name: a non-empty string without whitespace.
    spec: its ``DatasetSpec`` (checked when it is built).
    overwrite: replace a dataset already known by this name.

  Raises:
    TypeError: `spec` is not a DatasetSpec.
    ValueError: a bad name, or the name is taken and `overwrite` is False.
  """
  if not isinstance(name, str) or not name or name != "".join(name.split()):
    raise ValueError(f"Dataset name must be a non-empty string without whitespace, got {name!r}.")
  if not isinstance(spec, DatasetSpec):
    raise TypeError(f"spec must be a vdm_jax.data.DatasetSpec, got {type(spec).__name__}.")
  if name in _SPECS and not overwrite:
    raise ValueError(f"Dataset {name!r} is already registered; pass overwrite=True to replace it.")
  _SPECS[name] = spec


def dataset_names() -> list[str]:
  """The known dataset names, sorted: the built-in ones and those registered."""
  return sorted(_SPECS)


def get_spec(name: str) -> DatasetSpec:
  """The spec of `name`; ValueError listing the valid names if unknown."""
  if name not in _SPECS:
    raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(dataset_names())}.")
  return _SPECS[name]


def check_split(split: str) -> None:
  """ValueError listing the valid splits unless `split` is one."""
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")


def dataset_info(name: str) -> dict:
  """Static facts about a dataset, without reading any data.

  Returns:
    dict with ``shape`` (H, W, C) of one image, ``num_classes`` (labels lie in
    [0, num_classes)), ``num_train`` and ``num_test`` (examples in the full splits).
  """
  spec = get_spec(name)
  return dict(shape=spec.shape, num_classes=spec.num_classes,
              num_train=spec.num_train, num_test=spec.num_test)
