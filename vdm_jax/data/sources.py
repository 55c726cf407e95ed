"""Where datasets come from: their specs, file readers, local folders and tensorflow-datasets.

Every source gives the same arrays: images uint8 [N, H, W, C], upright, and labels int32 [N] in
[0, num_classes). The package docstring (``vdm_jax.data``) lists the datasets, the folders searched
and the conventions; ``register_dataset`` adds a dataset with its own file format.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import logging
import math
import os
import zlib
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "DatasetSpec",
    "Reader",
    "SPLITS",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "SYSTEM_DATA_DIRS",
    "check_split",
    "dataset_info",
    "dataset_names",
    "find_local_files",
    "get_spec",
    "load_arrays",
    "read_cifar10_bin",
    "read_cifar10_split",
    "read_idx",
    "read_idx_split",
    "register_dataset",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dims [N, H, W]
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dim [N]
_CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32

# Folders searched for a dataset whatever data_dir / VDM_DATA_DIR say (after them).
SYSTEM_DATA_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",)}

# reader(files) -> (images uint8 [N, H, W, C] as stored, labels integer [N]); `files` are the
# paths of one split, one per entry of DatasetSpec.files[split], in that order.
Reader = Callable[[list[Path]], tuple[np.ndarray, np.ndarray]]


# ----------------------------------------------------------------------------- file formats


def _read_bytes(path: Path) -> bytes:
  """The content of `path`, gunzipped when it starts with the gzip magic bytes."""
  raw = Path(path).read_bytes()
  if raw[:2] != b"\x1f\x8b":
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:  # bad CRC / header, cut short, bad deflate data
    raise ValueError(f"{path}: corrupt gzip file ({e}); delete it and fetch it again.") from e


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
  """Reads an IDX file (gzipped or not) of unsigned bytes.

  Args:
    path: the file.
    magic: the expected magic number, ``IDX_IMAGES_MAGIC`` (3 dims) or ``IDX_LABELS_MAGIC``
      (1 dim).

  Returns:
    uint8 array with the dims in the file's header: [N, H, W] for images, [N] for labels.

  Raises:
    ValueError naming the file: corrupt gzip, wrong magic number, header or data cut short, or
    bytes past the end of the data.
  """
  data = _read_bytes(Path(path))
  if len(data) < 4:
    raise ValueError(f"{path}: not an IDX file, only {len(data)} bytes.")
  found = int.from_bytes(data[:4], "big")
  if found != magic:
    raise ValueError(
        f"{path}: wrong IDX magic number 0x{found:08X}, expected 0x{magic:08X}; "
        "not an IDX file of this kind (images 0x00000803, labels 0x00000801).")
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{path}: truncated IDX header, {len(data)} bytes of {header}.")
  dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  expected = header + math.prod(dims)
  if len(data) != expected:
    problem = "truncated" if len(data) < expected else "has trailing bytes"
    raise ValueError(
        f"{path}: {problem}: header says dims {dims}, so {expected} bytes, "
        f"but the file holds {len(data)}.")
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims).copy()


def read_idx_split(files: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
  """Reader of the IDX format: `files` = [images file, labels file].

  Returns:
    images uint8 [N, H, W, 1] and labels uint8 [N], as stored.

  Raises:
    ValueError: a bad file (see ``read_idx``), or image and label counts that differ.
  """
  images_file, labels_file = files
  images = read_idx(images_file, IDX_IMAGES_MAGIC)[..., None]
  labels = read_idx(labels_file, IDX_LABELS_MAGIC)
  if len(images) != len(labels):
    raise ValueError(
        f"{images_file} holds {len(images)} images but {labels_file} {len(labels)} labels.")
  return images, labels


def read_cifar10_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads one file of the CIFAR-10 binary version.

  Each record is 1 label byte followed by 3072 pixel bytes: 1024 red, 1024 green, 1024 blue,
  each a row-major 32x32 plane. Read with numpy; nothing is unpickled.

  Returns:
    images uint8 [N, 32, 32, 3] (HWC) and labels int32 [N].

  Raises:
    ValueError naming the file when its length is not a positive multiple of 3073 bytes.
  """
  data = Path(path).read_bytes()
  if not data or len(data) % _CIFAR_RECORD_BYTES:
    raise ValueError(
        f"{path}: {len(data)} bytes is not a whole number of CIFAR-10 records "
        f"({_CIFAR_RECORD_BYTES} bytes each: 1 label byte + 3072 pixel bytes); truncated?")
  records = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD_BYTES)
  images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), records[:, 0].astype(np.int32)


def read_cifar10_split(files: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
  """Reader of the CIFAR-10 binary version: the batch files of a split, concatenated in order.

  Returns:
    images uint8 [N, 32, 32, 3] and labels int32 [N].
  """
  parts = [read_cifar10_bin(f) for f in files]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


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


# ----------------------------------------------------------------------------- local files


def _search_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
  """Folders searched for local files of `name`, in order, without duplicates."""
  roots = [Path(data_dir)] if data_dir is not None else []
  if os.environ.get("VDM_DATA_DIR"):
    roots.append(Path(os.environ["VDM_DATA_DIR"]))
  roots += [Path(d) for d in SYSTEM_DATA_DIRS.get(name, ())]
  dirs = [root / sub for root in roots for sub in get_spec(name).subdirs]
  return list(dict.fromkeys(dirs))


def find_local_files(name: str, split: str,
                     data_dir: str | os.PathLike | None = None) -> list[Path] | None:
  """Local files of `name`/`split`, all from one folder, or None if no folder has them.

  Folders are searched in order: under `data_dir`, then under ``VDM_DATA_DIR``, then under the
  system folders of the dataset; under each, the spec's subdirs in order. A folder holding some
  but not all of a split's files is an error (FileNotFoundError naming the missing ones), not a
  miss.

  Returns:
    the files in the order of ``spec.files[split]`` (IDX: images then labels; CIFAR-10: the
    batches), or None.
  """
  spec = get_spec(name)
  check_split(split)
  for folder in _search_dirs(name, data_dir):
    found = [next((folder / n for n in names if (folder / n).is_file()), None)
             for names in spec.files[split]]
    if all(found):
      return found
    if any(found):
      missing = [names[0] for names, f in zip(spec.files[split], found) if f is None]
      raise FileNotFoundError(
          f"{folder} holds part of {name} {split} but lacks {', '.join(missing)}.")
  return None


def _read_local(name: str, spec: DatasetSpec,
                files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
  """Raw (as stored) images [N, H, W, C] and labels [N] from the spec's reader."""
  out = spec.reader(list(files))
  if not (isinstance(out, tuple) and len(out) == 2):
    raise TypeError(f"The reader of {name!r} returned {type(out).__name__}, expected a pair "
                    "(images, labels).")
  return out


# ----------------------------------------------------------------------------- tfds


class _NotInTfds(Exception):
  """tensorflow-datasets cannot provide the dataset; the message says why."""


def _read_tfds(spec: DatasetSpec, split: str,
               data_dir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
  """Raw images uint8 [N, H, W, C] and labels [N] of an already prepared tfds dataset.

  Nothing is downloaded. tensorflow-datasets is imported here only, so that reading local files
  never imports it (nor TensorFlow).

  Raises:
    _NotInTfds: the dataset has no tfds name, tensorflow-datasets is not installed, or the
      dataset is not prepared.
    ImportError: the dataset is prepared as tfrecord and TensorFlow is not installed.
  """
  if spec.tfds_name is None:
    raise _NotInTfds("not available for this dataset (its spec has no tfds_name)")
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise _NotInTfds("not installed") from None
  builder = tfds.builder(spec.tfds_name, data_dir=None if data_dir is None else str(data_dir))
  if not builder.is_prepared():
    raise _NotInTfds(f"not prepared in {builder.data_path}")
  try:
    source = builder.as_data_source(split=split)
  except NotImplementedError:  # prepared in a format without random access (tfrecord)
    return _read_tfds_with_tensorflow(tfds, builder, split, spec.tfds_name)
  examples = [source[i] for i in range(len(source))]
  return (np.stack([ex["image"] for ex in examples]),
          np.asarray([ex["label"] for ex in examples]))


def _read_tfds_with_tensorflow(tfds, builder, split: str,
                               tfds_name: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a tfds split stored as tfrecord, which takes TensorFlow."""
  if importlib.util.find_spec("tensorflow") is None:
    raise ImportError(
        f"{tfds_name} is prepared in {builder.data_path} as {builder.info.file_format}, "
        "which only TensorFlow reads. Either pip install tensorflow-cpu, or prepare it again "
        f"in a format read without TensorFlow: tfds build {tfds_name} "
        "--file_format=array_record --overwrite")
  chunks = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=10000)))
  return (np.concatenate([c["image"] for c in chunks]),
          np.concatenate([c["label"] for c in chunks]))


# ----------------------------------------------------------------------------- loading


def _tfds_remedy(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> str:
  """The tensorflow-datasets part of the missing-data message ("" without a tfds name)."""
  if spec.tfds_name is None:
    return ""
  tfds_dir = f" --data_dir {data_dir}" if data_dir is not None else ""
  tfds_dir_arg = f", data_dir={str(data_dir)!r}" if data_dir is not None else ""
  return (
      ";\n  - or tensorflow-datasets, prepared once on a machine with network (the build needs "
      "TensorFlow, reading it back does not):\n"
      "      pip install tensorflow-datasets tensorflow-cpu\n"
      f"      tfds build {spec.tfds_name} --file_format=array_record{tfds_dir}\n"
      "    or in Python: import tensorflow_datasets as tfds; "
      f"tfds.builder({spec.tfds_name!r}{tfds_dir_arg}, "
      "file_format='array_record').download_and_prepare()")


def _missing_message(name: str, split: str, data_dir: str | os.PathLike | None,
                     tfds_reason: str) -> str:
  """The FileNotFoundError text: where we looked and how to get the data."""
  spec = get_spec(name)
  file_names = "\n".join(f"    {' or '.join(names)}" for names in spec.files[split])
  dirs = _search_dirs(name, data_dir)
  looked = ("\n".join(f"    {d}" for d in dirs) if dirs
            else "    (none: no data_dir given and VDM_DATA_DIR not set)")
  remedy = _tfds_remedy(spec, data_dir)
  return (
      f"Dataset {name!r} split {split!r} was not found.\n"
      f"  Looked for the local files\n{file_names}\n  in\n{looked}\n"
      f"  and in tensorflow-datasets: {tfds_reason}.\n"
      f"How to get it{', either' if remedy else ''}:\n"
      f"  - local files: {spec.how_to_get}; put them in a folder and pass it as data_dir= "
      "or set VDM_DATA_DIR to it (folders searched as listed above)"
      f"{remedy or '.'}")


def _standardise(spec: DatasetSpec, images: np.ndarray, labels: np.ndarray,
                 source: str) -> tuple[np.ndarray, np.ndarray]:
  """Applies the conventions (upright, labels from 0, writable) and checks shapes and labels."""
  images, labels = np.asarray(images), np.asarray(labels)
  if images.dtype != np.uint8 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{source}: images {images.dtype} / labels {labels.dtype}, "
                     "expected uint8 / integers.")
  if spec.transposed and images.ndim == 4:
    images = images.transpose(0, 2, 1, 3)
  images = np.ascontiguousarray(images)
  if not images.flags.writeable:  # a reader may hand out views of read-only buffers
    images = images.copy()
  labels = labels.astype(np.int32) - spec.label_offset
  if images.shape[1:] != spec.shape or labels.shape != images.shape[:1]:
    raise ValueError(f"{source}: images {images.shape} / labels {labels.shape}, "
                     f"expected [N, {', '.join(map(str, spec.shape))}] / [N].")
  if labels.size and not 0 <= labels.min() <= labels.max() < spec.num_classes:
    raise ValueError(f"{source}: labels span [{labels.min()}, {labels.max()}] after the "
                     f"offset {spec.label_offset}, expected [0, {spec.num_classes}).")
  return images, labels


def load_arrays(name: str, split: str,
                data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
  """All of one split in memory, from local files if present, else tensorflow-datasets.

  Args:
    name: dataset name (see ``dataset_names``).
    split: ``"train"`` or ``"test"``.
    data_dir: folder searched first for local files; also tfds's data_dir.

  Returns:
    images uint8 [N, H, W, C] (upright) and labels int32 [N] in [0, num_classes), both writable
    and in the source's order.

  Raises:
    ValueError: unknown name or split; corrupt or inconsistent files.
    FileNotFoundError: no source has the dataset; the message lists the places looked and how
      to get the data.
  """
  spec = get_spec(name)
  check_split(split)
  files = find_local_files(name, split, data_dir)
  if files is not None:
    source = str(files[0].parent)
    images, labels = _read_local(name, spec, files)
  else:
    try:
      images, labels = _read_tfds(spec, split, data_dir)
    except _NotInTfds as e:
      raise FileNotFoundError(_missing_message(name, split, data_dir, str(e))) from None
    source = f"tensorflow-datasets {spec.tfds_name}"
  images, labels = _standardise(spec, images, labels, source)
  logger.info("%s %s: %d images %s from %s", name, split, len(images), images.shape[1:], source)
  return images, labels
