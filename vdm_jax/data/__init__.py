"""Datasets as numpy uint8 batches, from local files, tensorflow-datasets or a download.

Every source gives the same arrays: images uint8 [N, H, W, C], upright, and labels int32 [N] in
[0, num_classes). Batches are dicts of numpy arrays::

  it = get_dataset("fashion_mnist", "train", batch_size=128, seed=0)
  batch = next(it)   # {"image": uint8 [128, 28, 28, 1], "label": int32 [128]}

To serve a split many times (an evaluation pass per evaluation) load it once and build
iterators over the arrays, which are indexed, never re-read nor copied::

  images, labels = load_arrays("fashion_mnist", "test")   # uint8 [10000, 28, 28, 1], int32
  for batch in eval_batches(images, labels, 500):         # adds "mask": bool [500]
    ...

Names: ``mnist``, ``fashion_mnist``, ``cifar10`` and ``emnist/<split>`` with <split> one of
``byclass``, ``bymerge``, ``balanced``, ``letters``, ``digits``, ``mnist``, plus any registered
with ``register_dataset`` (``dataset_names()`` lists them all).
Splits: ``train``, ``test``.

Sources, first found wins:

1. Local files in their standard distribution formats, searched in ``data_dir``, then in the
   ``VDM_DATA_DIR`` environment variable, then in system folders (Debian's ``dataset-fashion-mnist``
   package: /usr/share/datasets/fashion-mnist; skipped with ``VDM_DATA_NO_SYSTEM_DIRS=1``), then
   in the download cache (3.). In each of those folders the dataset's own subfolders are searched
   first, then the folder itself:

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
   downloaded through tfds.
3. A download of the published files (``DatasetSpec.downloads``: MNIST's and Fashion-MNIST's four
   IDX .gz files, EMNIST's ``gzip.zip``, CIFAR-10's ``cifar-10-binary.tar.gz``), each checked
   against its sha256 and kept in ``VDM_DATA_CACHE`` (default ``~/.cache/vdm_jax``), so it
   happens once. ``VDM_DATA_MIRROR=<base URL>`` fetches ``<base URL>/<dataset>/<file name>``
   instead (``<dataset>``: ``mnist``, ``fashion_mnist``, ``emnist``, ``cifar10``);
   ``VDM_DATA_OFFLINE=1`` never downloads. ``vdm_jax.data.download`` has the details.

Conventions applied to every source:

- EMNIST images are stored transposed (mirrored and rotated) in the raw files and in tfds; they are
  transposed back so that all images are upright.
- EMNIST ``letters`` labels are 1..26 in the raw files and in tfds; they are shifted to 0..25
  (a = 0), so ``num_classes`` is 26 and every label in [0, num_classes) occurs.

Adding a dataset: describe it with a ``DatasetSpec`` whose ``reader`` turns the files of one split
into (images uint8 [N, H, W, C], labels [N]), and register it; every function here then knows
it, and its files are searched like the built-in ones. For KMNIST's .npz files::

  import numpy as np
  from vdm_jax import data

  def read_kmnist(files):  # [images .npz, labels .npz], in the order of spec.files[split]
    images, labels = (np.load(f)["arr_0"] for f in files)
    return images[..., None], labels  # uint8 [N, 28, 28, 1], uint8 [N]

  data.register_dataset("kmnist", data.DatasetSpec(
      shape=(28, 28, 1), num_classes=10, num_train=60000, num_test=10000,
      files={"train": ("kmnist-train-imgs.npz", "kmnist-train-labels.npz"),
             "test": ("kmnist-test-imgs.npz", "kmnist-test-labels.npz")},
      reader=read_kmnist, subdirs=("kmnist", ""),
      how_to_get="the four kmnist-*.npz files from https://github.com/rois-codh/kmnist"))
  it = data.get_dataset("kmnist", "train", 128, data_dir="/data")

Data of your own (any shape; floats for continuous data models): ``register_arrays(name, train,
test)`` for arrays in memory, ``register_npz(path)`` for an .npz file with ``x_train``,
``x_test`` (and optionally ``y_train``, ``y_test``); a dataset name that is the path of such a
file registers it on first use (``config.data.name = "/data/mine.npz"``).

The built-in formats are readers of the same kind: ``read_idx_split`` and ``read_cifar10_split``.
Give the spec ``downloads=(data.RemoteFile(url, sha256), ...)`` and ``download_dir=`` to have its
files fetched like the built-in ones.
"""
from vdm_jax.data.arrays import register_arrays, register_npz
from vdm_jax.data.batches import eval_batches, get_dataset, train_batches
from vdm_jax.data.formats import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    read_cifar10_bin,
    read_cifar10_split,
    read_idx,
    read_idx_split,
)
from vdm_jax.data.registry import (
    SPLITS,
    DatasetSpec,
    RemoteFile,
    dataset_info,
    dataset_names,
    get_spec,
    register_dataset,
)
from vdm_jax.data.sources import find_local_files, load_arrays

__all__ = [
    "DatasetSpec",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "RemoteFile",
    "SPLITS",
    "dataset_info",
    "dataset_names",
    "eval_batches",
    "find_local_files",
    "get_dataset",
    "get_spec",
    "load_arrays",
    "read_cifar10_bin",
    "read_cifar10_split",
    "read_idx",
    "read_idx_split",
    "register_arrays",
    "register_dataset",
    "register_npz",
    "train_batches",
]
