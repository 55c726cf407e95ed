"""Reading a dataset already prepared by tensorflow-datasets, and how to prepare one.

tensorflow-datasets is imported lazily, inside ``read_tfds`` only, so that reading local files
never imports it (nor TensorFlow). Nothing is ever downloaded here.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from vdm_jax.data.registry import DatasetSpec

__all__ = ["NotInTfds", "read_tfds", "tfds_remedy"]


class NotInTfds(Exception):
  """tensorflow-datasets cannot provide the dataset; the message says why."""


def read_tfds(spec: DatasetSpec, split: str,
              data_dir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
  """Raw images uint8 [N, H, W, C] and labels [N] of an already prepared tfds dataset.

  Nothing is downloaded. tensorflow-datasets is imported here only (see the module docstring).

  Raises:
    NotInTfds: the dataset has no tfds name, tensorflow-datasets is not installed, or the
      dataset is not prepared.
    ImportError: the dataset is prepared as tfrecord and TensorFlow is not installed.
  """
  if spec.tfds_name is None:
    raise NotInTfds("not available for this dataset (its spec has no tfds_name)")
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise NotInTfds("not installed") from None
  builder = tfds.builder(spec.tfds_name, data_dir=None if data_dir is None else str(data_dir))
  if not builder.is_prepared():
    raise NotInTfds(f"not prepared in {builder.data_path}")
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


def tfds_remedy(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> str:
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
