"""Readers of the built-in file formats: IDX (MNIST, Fashion-MNIST, EMNIST) and CIFAR-10 binary.

Each split reader turns the files of one split into (images uint8 [N, H, W, C], labels [N]) as
stored, the contract of ``DatasetSpec.reader``. Everything is parsed with numpy; nothing is
unpickled, and neither TensorFlow nor tensorflow-datasets is imported.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "CIFAR10_RECORDS_PER_FILE",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "read_cifar10_bin",
    "read_cifar10_split",
    "read_idx",
    "read_idx_split",
]

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dims [N, H, W]
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dim [N]
_CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32
# Each file of the official CIFAR-10 binary version (data_batch_1..5.bin, test_batch.bin) holds
# this many records; only the count tells a file cut on a record boundary from a whole one.
CIFAR10_RECORDS_PER_FILE = 10000


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


def read_cifar10_bin(path: str | os.PathLike,
                     expected_records: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads one file of the CIFAR-10 binary version.

  Each record is 1 label byte followed by 3072 pixel bytes: 1024 red, 1024 green, 1024 blue,
  each a row-major 32x32 plane. Read with numpy; nothing is unpickled.

  Args:
    path: the file.
    expected_records: the number of records the file must hold (``CIFAR10_RECORDS_PER_FILE``
      for an official file), or None to accept any positive whole number of records.

  Returns:
    images uint8 [N, 32, 32, 3] (HWC) and labels int32 [N].

  Raises:
    ValueError naming the file when its length is not a positive multiple of 3073 bytes, or
    when it holds other than `expected_records` records.
  """
  data = Path(path).read_bytes()
  if not data or len(data) % _CIFAR_RECORD_BYTES:
    raise ValueError(
        f"{path}: {len(data)} bytes is not a whole number of CIFAR-10 records "
        f"({_CIFAR_RECORD_BYTES} bytes each: 1 label byte + 3072 pixel bytes); truncated?")
  num_records = len(data) // _CIFAR_RECORD_BYTES
  if expected_records is not None and num_records != expected_records:
    raise ValueError(
        f"{path}: holds {num_records} CIFAR-10 records, expected {expected_records}; the file "
        "is incomplete or not from the official CIFAR-10 binary version: delete it and extract "
        "it again.")
  records = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD_BYTES)
  images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), records[:, 0].astype(np.int32)


def read_cifar10_split(
    files: Sequence[Path],
    records_per_file: int | None = CIFAR10_RECORDS_PER_FILE) -> tuple[np.ndarray, np.ndarray]:
  """Reader of the CIFAR-10 binary version: the batch files of a split, concatenated in order.

  Args:
    files: the split's batch files (5 for train, 1 for test).
    records_per_file: the record count each file must hold (`read_cifar10_bin`'s
      `expected_records`); the default is that of the official files. None accepts any count,
      e.g. for a registered dataset stored in this format with files of other sizes (bind it
      with ``functools.partial``).

  Returns:
    images uint8 [N, 32, 32, 3] and labels int32 [N].
  """
  parts = [read_cifar10_bin(f, records_per_file) for f in files]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
