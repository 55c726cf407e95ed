"""Datasets as numpy uint8 batches, from local files or tensorflow-datasets.

Every source gives the same arrays: images uint8 [N, H, W, C], upright, and labels int32 [N] in
[0, num_classes). Batches are dicts of numpy arrays::

    it = get_dataset("fashion_mnist", "train", batch_size=128, seed=0)
    batch = next(it)   # {"image": uint8 [128, 28, 28, 1], "label": int32 [128]}

Names: ``mnist``, ``fashion_mnist``, ``cifar10`` and ``emnist/<split>`` with <split> one of
``byclass``, ``bymerge``, ``balanced``, ``letters``, ``digits``, ``mnist``.
Splits: ``train``, ``test``.

Sources, first found wins:

1. Local files in their standard distribution formats, searched in ``data_dir``, then in the
   ``VDM_DATA_DIR`` environment variable, then in system folders (Debian's ``dataset-fashion-mnist``
   package: /usr/share/datasets/fashion-mnist). In each of those folders the dataset's own
   subfolders are searched first, then the folder itself:

   - MNIST / Fashion-MNIST: ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
     ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz`` (also un-gzipped), in
     ``mnist/``, ``MNIST/raw/`` / ``fashion_mnist/``, ``fashion-mnist/``, ``FashionMNIST/raw/``.
     MNIST and Fashion-MNIST share these names: in a folder shared by both, keep each in its
     subfolder.
   - EMNIST: ``emnist-<split>-{train,test}-{images-idx3,labels-idx1}-ubyte.gz`` (also
     un-gzipped) as in the official ``gzip.zip``, in ``emnist/gzip/``, ``emnist/``,
     ``EMNIST/raw/``, ``gzip/``.
   - CIFAR-10, binary version: ``data_batch_{1..5}.bin`` and ``test_batch.bin`` (each record:
     1 label byte + 3072 pixel bytes, channel-major) in ``cifar10/cifar-10-batches-bin/``,
     ``cifar-10-batches-bin/``, ``cifar10/``. Read with numpy; nothing is unpickled.

   Reading local files never imports TensorFlow or tensorflow-datasets.
2. tensorflow-datasets, imported lazily, reading a dataset that is already prepared in
   ``data_dir`` (or tfds's default folder): random-access formats (``array_record``) are read
   without TensorFlow; a dataset prepared as ``tfrecord`` needs TensorFlow installed. Nothing is
   ever downloaded here.

Conventions applied to every source:

- EMNIST images are stored transposed (mirrored and rotated) in the raw files and in tfds; they are
  transposed back so that all images are upright.
- EMNIST ``letters`` labels are 1..26 in the raw files and in tfds; they are shifted to 0..25
  (a = 0), so ``num_classes`` is 26 and every label in [0, num_classes) occurs.
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
from typing import Iterator

import jax
import numpy as np

__all__ = [
    "dataset_info",
    "find_local_files",
    "get_dataset",
    "load_arrays",
    "read_cifar10_bin",
    "read_idx",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "SPLITS",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dims [N, H, W]
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dim [N]
_CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32

# Folders searched for a dataset whatever data_dir / VDM_DATA_DIR say (after them).
SYSTEM_DATA_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",)}


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What is known about one dataset before reading it.

    files: per split, the file names in the order they are read; each entry lists the accepted
      spellings of one file (e.g. gzipped or not), first match wins.
    subdirs: folders searched under each root, in order ("" is the root itself).
    """

    shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    num_test: int
    tfds_name: str
    file_format: str  # "idx" or "cifar10_bin"
    files: dict[str, tuple[tuple[str, ...], ...]]
    subdirs: tuple[str, ...]
    how_to_get: str  # for the missing-data message
    transposed: bool = False  # stored as [N, W, H, C]
    label_offset: int = 0  # subtracted from the stored labels


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

_SPECS: dict[str, _Spec] = {
    "mnist": _Spec(
        shape=(28, 28, 1), num_classes=10, num_train=60000, num_test=10000, tfds_name="mnist",
        file_format="idx", files=_idx_files("", "train", "t10k"),
        subdirs=("mnist", "MNIST/raw", ""),
        how_to_get="the four MNIST files from https://yann.lecun.com/exdb/mnist/ (or a mirror)"),
    "fashion_mnist": _Spec(
        shape=(28, 28, 1), num_classes=10, num_train=60000, num_test=10000,
        tfds_name="fashion_mnist", file_format="idx", files=_idx_files("", "train", "t10k"),
        subdirs=("fashion_mnist", "fashion-mnist", "FashionMNIST/raw", ""),
        how_to_get=("Debian's package (apt-get install dataset-fashion-mnist, files land in "
                    "/usr/share/datasets/fashion-mnist, found without configuration), or the four "
                    "files from https://github.com/zalandoresearch/fashion-mnist")),
    "cifar10": _Spec(
        shape=(32, 32, 3), num_classes=10, num_train=50000, num_test=10000, tfds_name="cifar10",
        file_format="cifar10_bin",
        files={"train": tuple((f"data_batch_{i}.bin",) for i in range(1, 6)),
               "test": (("test_batch.bin",),)},
        subdirs=("cifar10/cifar-10-batches-bin", "cifar-10-batches-bin", "cifar10", ""),
        how_to_get=("the CIFAR-10 binary version (cifar-10-binary.tar.gz from "
                    "https://www.cs.toronto.edu/~kriz/cifar.html), extracted so that "
                    "cifar-10-batches-bin/ lies in the folder")),
}
for _split, (_classes, _train, _test) in _EMNIST_SIZES.items():
    _SPECS[f"emnist/{_split}"] = _Spec(
        shape=(28, 28, 1), num_classes=_classes, num_train=_train, num_test=_test,
        tfds_name=f"emnist/{_split}", file_format="idx",
        files=_idx_files(f"emnist-{_split}-", "train", "test"),
        subdirs=("emnist/gzip", "emnist", "EMNIST/raw", "gzip", ""),
        transposed=True, label_offset=1 if _split == "letters" else 0,
        how_to_get=("the files of the EMNIST gzip.zip from "
                    "https://www.nist.gov/itl/products-and-services/emnist-dataset"))


def _spec(name: str) -> _Spec:
    """The spec of `name`; ValueError listing the valid names if unknown."""
    if name not in _SPECS:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(sorted(_SPECS))}.")
    return _SPECS[name]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")


def dataset_info(name: str) -> dict:
    """Static facts about a dataset, without reading any data.

    Returns:
      dict with ``shape`` (H, W, C) of one image, ``num_classes`` (labels lie in
      [0, num_classes)), ``num_train`` and ``num_test`` (examples in the full splits).
    """
    spec = _spec(name)
    return dict(shape=spec.shape, num_classes=spec.num_classes,
                num_train=spec.num_train, num_test=spec.num_test)


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


def read_cifar10_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads one file of the CIFAR-10 binary version.

    Each record is 1 label byte followed by 3072 pixel bytes: 1024 red, 1024 green, 1024 blue,
    each a row-major 32x32 plane.

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


# ----------------------------------------------------------------------------- local files


def _search_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Folders searched for local files of `name`, in order, without duplicates."""
    roots = [Path(data_dir)] if data_dir is not None else []
    if os.environ.get("VDM_DATA_DIR"):
        roots.append(Path(os.environ["VDM_DATA_DIR"]))
    roots += [Path(d) for d in SYSTEM_DATA_DIRS.get(name, ())]
    dirs = [root / sub for root in roots for sub in _spec(name).subdirs]
    return list(dict.fromkeys(dirs))


def find_local_files(name: str, split: str,
                     data_dir: str | os.PathLike | None = None) -> list[Path] | None:
    """Local files of `name`/`split`, all from one folder, or None if no folder has them.

    Folders are searched as the module docstring says. A folder holding some but not all of a
    split's files is an error (FileNotFoundError naming the missing ones), not a miss.

    Returns:
      the files in reading order (IDX: images then labels; CIFAR-10: the batches), or None.
    """
    spec = _spec(name)
    _check_split(split)
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


def _read_local(spec: _Spec, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Raw (as stored) images uint8 [N, H, W, C] and labels [N] from local files."""
    if spec.file_format == "cifar10_bin":
        parts = [read_cifar10_bin(f) for f in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    images_file, labels_file = files
    images = read_idx(images_file, IDX_IMAGES_MAGIC)[..., None]
    labels = read_idx(labels_file, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(
            f"{images_file} holds {len(images)} images but {labels_file} {len(labels)} labels.")
    return images, labels


# ----------------------------------------------------------------------------- tfds


class _NotInTfds(Exception):
    """tensorflow-datasets cannot provide the dataset; the message says why."""


def _read_tfds(spec: _Spec, split: str,
               data_dir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
    """Raw images uint8 [N, H, W, C] and labels [N] of an already prepared tfds dataset.

    Raises:
      _NotInTfds: tensorflow-datasets is not installed, or the dataset is not prepared.
      ImportError: the dataset is prepared as tfrecord and TensorFlow is not installed.
    """
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


def _missing_message(name: str, split: str, data_dir: str | os.PathLike | None,
                     tfds_reason: str) -> str:
    """The FileNotFoundError text: where we looked and how to get the data."""
    spec = _spec(name)
    file_names = "\n".join(f"    {' or '.join(names)}" for names in spec.files[split])
    dirs = _search_dirs(name, data_dir)
    looked = ("\n".join(f"    {d}" for d in dirs) if dirs
              else "    (none: no data_dir given and VDM_DATA_DIR not set)")
    tfds_dir = f" --data_dir {data_dir}" if data_dir is not None else ""
    tfds_dir_arg = f", data_dir={str(data_dir)!r}" if data_dir is not None else ""
    return (
        f"Dataset {name!r} split {split!r} was not found.\n"
        f"  Looked for the local files\n{file_names}\n  in\n{looked}\n"
        f"  and in tensorflow-datasets: {tfds_reason}.\n"
        "How to get it, either:\n"
        f"  - local files: {spec.how_to_get}; put them in a folder and pass it as data_dir= "
        "or set VDM_DATA_DIR to it (folders searched as listed above);\n"
        "  - or tensorflow-datasets, prepared once on a machine with network (the build needs "
        "TensorFlow, reading it back does not):\n"
        "      pip install tensorflow-datasets tensorflow-cpu\n"
        f"      tfds build {spec.tfds_name} --file_format=array_record{tfds_dir}\n"
        "    or in Python: import tensorflow_datasets as tfds; "
        f"tfds.builder({spec.tfds_name!r}{tfds_dir_arg}, "
        "file_format='array_record').download_and_prepare()"
    )


def _standardise(spec: _Spec, images: np.ndarray, labels: np.ndarray,
                 source: str) -> tuple[np.ndarray, np.ndarray]:
    """Applies the module's conventions (upright, labels from 0) and checks shapes and labels."""
    if spec.transposed:
        images = images.transpose(0, 2, 1, 3)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.asarray(labels).astype(np.int32) - spec.label_offset
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
      name: dataset name (see module docstring).
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
    spec = _spec(name)
    _check_split(split)
    files = find_local_files(name, split, data_dir)
    if files is not None:
        source = str(files[0].parent)
        images, labels = _read_local(spec, files)
    else:
        try:
            images, labels = _read_tfds(spec, split, data_dir)
        except _NotInTfds as e:
            raise FileNotFoundError(_missing_message(name, split, data_dir, str(e))) from None
        source = f"tensorflow-datasets {spec.tfds_name}"
    images, labels = _standardise(spec, images, labels, source)
    logger.info("%s %s: %d images %s from %s", name, split, len(images), images.shape[1:], source)
    return images, labels


# ----------------------------------------------------------------------------- iterators


def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n examples in `epoch`: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _train_batches(images, labels, batch_size, seed, start_batch,
                   process_index, process_count) -> Iterator[dict[str, np.ndarray]]:
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


def _eval_batches(images, labels, batch_size, start_batch,
                  process_index, process_count) -> Iterator[dict[str, np.ndarray]]:
    """One ordered pass; rows past the end are zeros, mask False; same count on every process."""
    n = len(images)
    global_batch = batch_size * process_count
    for k in range(start_batch, -(-n // global_batch)):
        rows = k * global_batch + process_index * batch_size + np.arange(batch_size)
        mask = rows < n
        idx = np.where(mask, rows, 0)
        image, label = images[idx], labels[idx]
        image[~mask] = 0
        label[~mask] = 0
        yield {"image": image, "label": label, "mask": mask}


def get_dataset(name: str, split: str, batch_size: int, *, seed: int = 0,
                data_dir: str | os.PathLike | None = None, start_batch: int = 0,
                process_index: int | None = None,
                process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Iterator of numpy batches of one dataset split for this process.

    The data is loaded (``load_arrays``) and the arguments checked when this is called, so errors
    come before any iteration.

    ``split="train"``: endless. Each epoch is a permutation of the examples that depends only on
    (seed, epoch); the global batch k (``batch_size * process_count`` examples; the incomplete
    last one of each epoch dropped) is split between processes, process p taking rows
    [p * batch_size, (p + 1) * batch_size). ``start_batch=k`` starts at this process's batch k,
    exactly as a fresh iterator would after k batches, without producing the first k.

    ``split="test"``: one pass in the source's order covering every example exactly once across
    processes; every process yields the same number of batches, the last padded with zero rows
    that ``mask`` marks False. ``seed`` is not used.

    Args:
      name: dataset name (see module docstring).
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
    _spec(name)
    _check_split(split)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    for arg, value in (("batch_size", batch_size), ("process_count", process_count)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}.")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
    for arg, value in (("seed", seed), ("start_batch", start_batch)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{arg} must be a non-negative integer, got {value!r}.")
    images, labels = load_arrays(name, split, data_dir)
    if split == "train":
        if len(images) < batch_size * process_count:
            raise ValueError(f"{name} has {len(images)} training examples, fewer than one global "
                             f"batch ({batch_size} per process x {process_count} processes).")
        return _train_batches(images, labels, batch_size, seed, start_batch,
                              process_index, process_count)
    return _eval_batches(images, labels, batch_size, start_batch, process_index, process_count)
