"""Loading one split into memory: local files first, then the download cache, a prepared
tensorflow-datasets dataset, and last a download of the published files.

Every source gives the same arrays: images uint8 [N, H, W, C], upright, and labels int32 [N] in
[0, num_classes). The package docstring (``vdm_jax.data``) lists the datasets, the folders searched
and the conventions; when no source has a split, the FileNotFoundError says where it looked, the
URLs a download would fetch, and how to get the data.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from vdm_jax.data import download
from vdm_jax.data.registry import DatasetSpec, check_split, get_spec
from vdm_jax.data.tfds_source import NotInTfds, read_tfds, tfds_remedy

__all__ = ["NO_SYSTEM_DIRS_ENV", "SYSTEM_DATA_DIRS", "find_local_files", "load_arrays"]

logger = logging.getLogger(__name__)

# Folders searched for a dataset whatever data_dir / VDM_DATA_DIR say (after them).
SYSTEM_DATA_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",)}
# Set to 1, the system folders are not searched (e.g. to see a download happen on a machine
# with Debian's copy installed).
NO_SYSTEM_DIRS_ENV = "VDM_DATA_NO_SYSTEM_DIRS"


# ----------------------------------------------------------------------------- local files


def _search_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
  """Folders searched for local files of `name`, in order, without duplicates."""
  roots = [Path(data_dir)] if data_dir is not None else []
  if os.environ.get("VDM_DATA_DIR"):
    roots.append(Path(os.environ["VDM_DATA_DIR"]))
  if not download.env_flag(NO_SYSTEM_DIRS_ENV):
    roots += [Path(d) for d in SYSTEM_DATA_DIRS.get(name, ())]
  dirs = [root / sub for root in roots for sub in get_spec(name).subdirs]
  return list(dict.fromkeys(dirs))


def find_local_files(name: str, split: str,
                     data_dir: str | os.PathLike | None = None) -> list[Path] | None:
  """Local files of `name`/`split`, all from one folder, or None if no folder has them.

  Folders are searched in order: under `data_dir`, then under ``VDM_DATA_DIR``, then under the
  system folders of the dataset (unless ``VDM_DATA_NO_SYSTEM_DIRS=1``); under each, the spec's
  subdirs in order. A folder holding some but not all of a split's files is an error
  (FileNotFoundError naming the missing ones), not a miss. The download cache is not searched
  here (see ``load_arrays``).

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


# ----------------------------------------------------------------------------- loading


def _missing_message(name: str, split: str, data_dir: str | os.PathLike | None,
                     tfds_reason: str, download_reason: str) -> str:
  """The FileNotFoundError text: where we looked, what a download would fetch, and how to get
  the data."""
  spec = get_spec(name)
  file_names = "\n".join(f"    {' or '.join(names)}" for names in spec.files[split])
  dirs = _search_dirs(name, data_dir)
  cache = download.cache_folder(spec)
  looked = "\n".join([f"    {d}" for d in dirs]
                     + ([f"    {cache} (the download cache, {download.CACHE_ENV})"] if cache
                        else []))
  looked = looked or "    (none: no data_dir given and VDM_DATA_DIR not set)"
  remedy = tfds_remedy(spec, data_dir)
  if spec.downloads:
    urls = "\n".join(f"    {url}  (sha256 {sha})"
                     for url, sha in download.planned_urls(spec, split))
    fetched = f"; it fetches\n{urls}\n  into {download.cache_root() / spec.download_dir}"
    how_download = (f"  - download: run again with network access and {download.OFFLINE_ENV} "
                    f"unset, or set {download.MIRROR_ENV} to a copy of those files laid out "
                    f"as <mirror>/{spec.download_dir}/<file name>\n")
  else:
    fetched = how_download = ""
  return (
      f"Dataset {name!r} split {split!r} was not found.\n"
      f"  Looked for the local files\n{file_names}\n  in\n{looked}\n"
      f"  and in tensorflow-datasets: {tfds_reason}.\n"
      f"  Download: {download_reason}{fetched}.\n"
      f"How to get it, either:\n{how_download}"
      f"  - local files: {spec.how_to_get}; put them in a folder and pass it as data_dir= "
      "or set VDM_DATA_DIR to it (folders searched as listed above)"
      f"{remedy or '.'}")


def _standardise(spec: DatasetSpec, images: np.ndarray, labels: np.ndarray,
                 source: str) -> tuple[np.ndarray, np.ndarray]:
  """Applies the conventions (upright, labels from 0, writable) and checks shapes and labels."""
  images, labels = np.asarray(images), np.asarray(labels)
  if images.dtype != np.dtype(spec.dtype) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{source}: images {images.dtype} / labels {labels.dtype}, "
                     f"expected {spec.dtype} / integers.")
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
  """All of one split in memory, from the first source that has it.

  Sources, in order: local files (``find_local_files``: data_dir, VDM_DATA_DIR, system
  folders), the download cache, a prepared tensorflow-datasets dataset, and last a download of
  the spec's published files into the cache (``download.fetch``; not with VDM_DATA_OFFLINE=1).

  Args:
    name: dataset name (see ``dataset_names``).
    split: ``"train"`` or ``"test"``.
    data_dir: folder searched first for local files; also tfds's data_dir.

  Returns:
    images uint8 [N, H, W, C] (upright; for datasets of ``register_arrays``, [N, *shape] of the
    spec's dtype) and labels int32 [N] in [0, num_classes), both writable and in the source's
    order.

  Raises:
    ValueError: unknown name or split; corrupt or inconsistent files.
    download.ChecksumError (a ValueError): a downloaded file is not the published one (it was
      deleted; the message names it with both sha256).
    FileNotFoundError: no source has the dataset and it could not be downloaded; the message
      lists the places looked, why the download did not happen, its URLs, and how to get the
      data.
  """
  spec = get_spec(name)
  check_split(split)
  if spec.arrays is not None:   # held in memory: nothing to find
    images, labels = _standardise(spec, *spec.arrays(split), f"the arrays of {name!r}")
    logger.info("%s %s: %d examples %s from memory", name, split, len(images), images.shape[1:])
    return images, labels
  files = find_local_files(name, split, data_dir) or download.cached_files(spec, split)
  if files is None:
    try:
      images, labels = read_tfds(spec, split, data_dir)
      source = f"tensorflow-datasets {spec.tfds_name}"
    except NotInTfds as e:
      try:
        files = download.fetch(spec, split)
      except download.DownloadUnavailable as d:
        raise FileNotFoundError(_missing_message(name, split, data_dir, str(e), str(d))) from None
  if files is not None:
    source = str(files[0].parent)
    images, labels = _read_local(name, spec, files)
  images, labels = _standardise(spec, images, labels, source)
  logger.info("%s %s: %d images %s from %s", name, split, len(images), images.shape[1:], source)
  return images, labels
