"""The datasets known by name: ``DatasetSpec``, the built-in specs and the registry.

A spec says what is known about a dataset before reading it: image shape, classes, split sizes,
the files of each split, the reader that parses them and where they are published (``RemoteFile``:
URL and sha256). ``register_dataset`` adds a spec under a new name; ``get_spec`` and
``dataset_info`` look one up without reading any data.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from vdm_jax.data.formats import read_cifar10_split, read_idx_split

__all__ = [
    "ARCHIVE_SUFFIXES",
    "ArraysSource",
    "DTYPES",
    "DatasetSpec",
    "Reader",
    "RemoteFile",
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
# arrays(split) -> (data [N, *shape] of the spec's dtype, labels integer [N]): a dataset held in
# memory (`vdm_jax.data.register_arrays`), read from no file.
ArraysSource = Callable[[str], tuple[np.ndarray, np.ndarray]]
# The dtypes a dataset may serve: integers for discrete data models, float32 for continuous ones.
DTYPES = ("uint8", "int32", "float32")


# Archive formats a RemoteFile may be: zip, tar, gzipped tar (by the end of its name).
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# ----------------------------------------------------------------------------- specs


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """One file of a dataset as its authors publish it.

  Attributes:
    url: the canonical address (http, https or file). Its last path component is the file's
      name, in the download cache and on a mirror (``VDM_DATA_MIRROR``).
    sha256: the file's SHA-256, 64 lower-case hex digits; a download that differs is deleted.
    archive_dir: None for a file that is itself one of ``DatasetSpec.files``. For an archive
      (a name ending in one of ``ARCHIVE_SUFFIXES``), the folder inside it that holds the
      spec's files, e.g. ``"cifar-10-batches-bin"`` (``""``: its top level); they are extracted
      from it, not the whole archive.
  """

  url: str
  sha256: str
  archive_dir: str | None = None

  def __post_init__(self):
    if not (isinstance(self.url, str) and re.match(r"^(https?|file)://.+/[^/]+$", self.url)):
      raise ValueError(f"RemoteFile.url must be an http(s) or file address ending in a file "
                       f"name, got {self.url!r}.")
    if not (isinstance(self.sha256, str) and _SHA256.match(self.sha256)):
      raise ValueError(f"RemoteFile.sha256 must be 64 lower-case hex digits, got "
                       f"{self.sha256!r} for {self.url}.")
    if self.archive_dir is not None:
      if not isinstance(self.archive_dir, str) or self.archive_dir.startswith("/"):
        raise ValueError(f"RemoteFile.archive_dir must be a relative folder inside the archive "
                         f"or None, got {self.archive_dir!r}.")
      if not self.name.endswith(ARCHIVE_SUFFIXES):
        raise ValueError(f"RemoteFile {self.name} has an archive_dir but is not an archive "
                         f"(names ending in {', '.join(ARCHIVE_SUFFIXES)}).")

  @property
  def name(self) -> str:
    """The file name: the last path component of `url`."""
    return self.url.rsplit("/", 1)[-1]


def _as_tuple(value) -> tuple:
  """`value` as a tuple; a bare string is one item, not a sequence of characters."""
  return (value,) if isinstance(value, (str, os.PathLike)) else tuple(value)


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What is known about one dataset before reading it.

  Attributes:
    shape: the shape of one example as served: (H, W, C) for images (after ``transposed`` is
      undone), any shape for data served by ``arrays``.
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
    downloads: where the files are published, fetched when no local folder holds a split:
      either one ``RemoteFile`` per file (named like one spelling of each entry of ``files``)
      or a single archive holding them all. Empty: never downloaded.
    download_dir: the dataset's folder in the download cache and on a mirror (e.g. ``"emnist"``
      for every EMNIST split); required when there are downloads.
    dtype: what the data are, one of ``DTYPES``: "uint8" for 8-bit images (the files'
      readers), "int32" for other integers, "float32" for continuous data.
    arrays: for data in memory, ``arrays(split) -> (data, labels)``; then ``files`` may be
      empty and nothing is searched or downloaded (``register_arrays`` builds such specs).
  """

  shape: tuple[int, ...]
  num_classes: int
  num_train: int
  num_test: int
  files: Mapping[str, tuple[tuple[str, ...], ...]]
  reader: Reader | None = None
  subdirs: tuple[str, ...] = ("",)
  how_to_get: str = "the files listed above"
  tfds_name: str | None = None
  transposed: bool = False
  label_offset: int = 0
  downloads: tuple[RemoteFile, ...] = ()
  download_dir: str | None = None
  dtype: str = "uint8"
  arrays: ArraysSource | None = None

  def __post_init__(self):
    # Lists and bare strings are accepted where tuples are meant; the lookups rely on tuples.
    object.__setattr__(self, "shape", _as_tuple(self.shape))
    object.__setattr__(self, "subdirs", _as_tuple(self.subdirs))
    object.__setattr__(self, "downloads",
                       (self.downloads,) if isinstance(self.downloads, RemoteFile)
                       else tuple(self.downloads))
    object.__setattr__(self, "files", {} if self.arrays is not None and not self.files
                       else _normalised_files(self.files))
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
  rank_ok = len(spec.shape) >= 1 if spec.arrays is not None else len(spec.shape) == 3
  if not rank_ok or not all(_is_int(d) and d > 0 for d in spec.shape):
    want = "positive integers" if spec.arrays is not None else "3 positive integers (H, W, C)"
    raise ValueError(f"DatasetSpec.shape must be {want}, got {spec.shape}.")
  if spec.dtype not in DTYPES:
    raise ValueError(f"DatasetSpec.dtype must be one of {DTYPES}, got {spec.dtype!r}.")
  if spec.arrays is not None and not callable(spec.arrays):
    raise TypeError(f"DatasetSpec.arrays must be callable as arrays(split) -> (data, labels) "
                    f"or None, got {spec.arrays!r}.")
  for field in ("num_classes", "num_train", "num_test"):
    value = getattr(spec, field)
    if not _is_int(value) or value < 1:
      raise ValueError(f"DatasetSpec.{field} must be a positive integer, got {value!r}.")
  if not _is_int(spec.label_offset):
    raise ValueError(f"DatasetSpec.label_offset must be an integer, got {spec.label_offset!r}.")
  if spec.arrays is None and not callable(spec.reader):
    raise TypeError(f"DatasetSpec.reader must be callable as reader(files) -> (images, labels), "
                    f"got {spec.reader!r}.")
  if not all(isinstance(s, str) for s in spec.subdirs):
    raise ValueError(f"DatasetSpec.subdirs must be folder names, got {spec.subdirs!r}.")
  if spec.tfds_name is not None and not (isinstance(spec.tfds_name, str) and spec.tfds_name):
    raise ValueError(f"DatasetSpec.tfds_name must be a non-empty string or None, "
                     f"got {spec.tfds_name!r}.")
  _check_downloads(spec)


def _check_downloads(spec: DatasetSpec) -> None:
  """ValueError unless the downloads provide every file of both splits, and have a folder."""
  if not spec.downloads:
    return
  if not all(isinstance(r, RemoteFile) for r in spec.downloads):
    raise TypeError(f"DatasetSpec.downloads must be RemoteFile objects, got {spec.downloads!r}.")
  if not (isinstance(spec.download_dir, str) and spec.download_dir
          and Path(spec.download_dir).parts == (spec.download_dir,)):
    raise ValueError(f"DatasetSpec.download_dir must be a folder name (no '/') when there are "
                     f"downloads, got {spec.download_dir!r}.")
  archives = [r.name for r in spec.downloads if r.archive_dir is not None]
  if archives and len(spec.downloads) > 1:
    raise ValueError(f"DatasetSpec.downloads must be one archive or only plain files, got the "
                     f"archive {archives[0]} among {[r.name for r in spec.downloads]}.")
  if archives:
    return
  names = {r.name for r in spec.downloads}
  for split in SPLITS:
    missing = [entry[0] for entry in spec.files[split] if not names.intersection(entry)]
    if missing:
      raise ValueError(f"DatasetSpec.downloads provide no file for {', '.join(missing)} "
                       f"({split}); they are {', '.join(sorted(names))}.")


# ----------------------------------------------------------------------------- built-in datasets


def _idx_files(prefix: str, train: str, test: str) -> dict[str, tuple[tuple[str, ...], ...]]:
  """IDX image and label file names for both splits, gzipped first."""
  def pair(split_name):
    return tuple(
        (f"{prefix}{split_name}-{kind}-ubyte.gz", f"{prefix}{split_name}-{kind}-ubyte")
        for kind in ("images-idx3", "labels-idx1"))
  return {"train": pair(train), "test": pair(test)}


def _remote_files(base_url: str, sha256: Mapping[str, str]) -> tuple[RemoteFile, ...]:
  """One RemoteFile per {file name: sha256}, published under `base_url`."""
  return tuple(RemoteFile(f"{base_url}/{name}", digest) for name, digest in sha256.items())


# The published files and their SHA-256 (the values tensorflow-datasets verifies its downloads
# against, in its url_checksums; tests/test_data_download.py compares them).
_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz":
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz":
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz":
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
# MNIST's own host (yann.lecun.com) refuses downloads; this copy serves the same bytes.
_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist"
_FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
_CIFAR10_DOWNLOAD = RemoteFile(
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    archive_dir="cifar-10-batches-bin")
# All EMNIST splits come in one archive (561753746 bytes).
_EMNIST_DOWNLOAD = RemoteFile(
    "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",
    "fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e", archive_dir="gzip")

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
          downloads=_remote_files(_MNIST_URL, _MNIST_SHA256), download_dir="mnist",
          how_to_get=f"the four MNIST files from {_MNIST_URL}/ (or any copy of them)"),
      "fashion_mnist": DatasetSpec(
          shape=(28, 28, 1), num_classes=10, num_train=60000, num_test=10000,
          tfds_name="fashion_mnist", reader=read_idx_split,
          files=_idx_files("", "train", "t10k"),
          subdirs=("fashion_mnist", "fashion-mnist", "FashionMNIST/raw", ""),
          downloads=_remote_files(_FASHION_MNIST_URL, _FASHION_MNIST_SHA256),
          download_dir="fashion_mnist",
          how_to_get=("Debian's package (apt-get install dataset-fashion-mnist, files land in "
                      "/usr/share/datasets/fashion-mnist, found without configuration), or the "
                      "four files from https://github.com/zalandoresearch/fashion-mnist")),
      "cifar10": DatasetSpec(
          shape=(32, 32, 3), num_classes=10, num_train=50000, num_test=10000,
          tfds_name="cifar10", reader=read_cifar10_split,
          files={"train": tuple((f"data_batch_{i}.bin",) for i in range(1, 6)),
                 "test": (("test_batch.bin",),)},
          subdirs=("cifar10/cifar-10-batches-bin", "cifar-10-batches-bin", "cifar10", ""),
          downloads=(_CIFAR10_DOWNLOAD,), download_dir="cifar10",
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
        downloads=(_EMNIST_DOWNLOAD,), download_dir="emnist",
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
  """The spec of `name`; ValueError listing the valid names if unknown.

  A name that is the path of an existing .npz file is registered on first use
  (``vdm_jax.data.register_npz``), so configs and the command line can name such files.
  """
  if name not in _SPECS and isinstance(name, str) and name.endswith(".npz") and \
      os.path.isfile(name):
    from vdm_jax.data import arrays   # it builds specs of this module
    arrays.register_npz(name)
  if name not in _SPECS:
    # .npz files registered by path earlier in the process are not names to offer.
    names = [n for n in dataset_names() if not n.endswith(".npz")]
    raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(names)} (or the path "
                     f"of an existing .npz file).")
  return _SPECS[name]


def check_split(split: str) -> None:
  """ValueError listing the valid splits unless `split` is one."""
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")


def dataset_info(name: str) -> dict:
  """Static facts about a dataset, without reading any data.

  Returns:
    dict with ``shape`` of one example ((H, W, C) for images), ``num_classes`` (labels lie in
    [0, num_classes)), ``num_train`` and ``num_test`` (examples in the full splits) and
    ``dtype`` (one of ``DTYPES``).
  """
  spec = get_spec(name)
  return dict(shape=spec.shape, num_classes=spec.num_classes,
              num_train=spec.num_train, num_test=spec.num_test, dtype=spec.dtype)
