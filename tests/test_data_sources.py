"""vdm_jax.data.sources: real Fashion-MNIST, the search for local files, the conventions applied
to what is read, and the missing-data message."""
import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import chex
import numpy as np
import pytest

from helpers_data import fashion_mnist_dir
from test_data_formats import idx_bytes, indexed_images, write_idx
from vdm_jax import data
from vdm_jax.data import sources


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv("VDM_DATA_DIR", raising=False)


# ----------------------------------------------------------------------------- synthetic files


def ids(batch):
  """Row indices encoded by `indexed_images`, for the rows of a batch."""
  image = batch["image"].astype(np.int64)
  return image[:, 0, 0, 0] + 256 * image[:, 0, 1, 0]


def write_mnist(folder, n_train=103, n_test=23, gz=True):
  """Synthetic MNIST files in `folder`: `indexed_images` with labels index % 10."""
  suffix = ".gz" if gz else ""
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", indexed_images(n), gz=gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, gz=gz)
  return folder


# ----------------------------------------------------------------------------- real Fashion-MNIST


def test_fashion_mnist_from_a_system_folder(tmp_path, monkeypatch):
  """Found without configuration in a system folder (as Debian's dataset-fashion-mnist lays it
  out), before the download cache."""
  shutil.copytree(fashion_mnist_dir(), tmp_path / "fashion-mnist")
  monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", {"fashion_mnist": (str(tmp_path),)})
  monkeypatch.setenv("VDM_DATA_CACHE", str(tmp_path / "empty_cache"))
  assert data.find_local_files("fashion_mnist", "test") == [
      tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte.gz",
      tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"]
  x_train, y_train = data.load_arrays("fashion_mnist", "train")
  x_test, y_test = data.load_arrays("fashion_mnist", "test")
  chex.assert_shape(x_train, (60000, 28, 28, 1))
  chex.assert_shape(x_test, (10000, 28, 28, 1))
  chex.assert_shape([y_train, y_test], [(60000,), (10000,)])
  chex.assert_type([x_train, x_test], np.uint8)
  chex.assert_type([y_train, y_test], np.int32)
  np.testing.assert_array_equal(np.bincount(y_train), np.full(10, 6000))
  np.testing.assert_array_equal(np.bincount(y_test), np.full(10, 1000))
  assert abs(x_train.mean() - 72.94) < 0.05
  info = data.dataset_info("fashion_mnist")
  assert info == dict(shape=(28, 28, 1), num_classes=10, num_train=60000, num_test=10000,
                     dtype="uint8")


def test_local_files_do_not_import_tensorflow():
  code = ("import sys; from vdm_jax import data;"
          "x, _ = data.load_arrays('fashion_mnist', 'test');"
          "assert x.shape == (10000, 28, 28, 1);"
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules];"
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# ----------------------------------------------------------------------------- what is read


def test_bad_local_file_raises_instead_of_falling_back(tmp_path):
  write_mnist(tmp_path / "mnist")
  path = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
  path.write_bytes(gzip.compress(idx_bytes(np.arange(23) % 10)[:-1]))
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: truncated"):
    data.load_arrays("mnist", "test", tmp_path)
  write_idx(path, np.arange(22) % 10)
  with pytest.raises(ValueError, match="holds 23 images but .* 22 labels"):
    data.load_arrays("mnist", "test", tmp_path)
  write_idx(path, np.full(23, 10))
  with pytest.raises(ValueError, match=r"labels span \[10, 10\] .* expected \[0, 10\)"):
    data.load_arrays("mnist", "test", tmp_path)


@pytest.mark.parametrize("subdir,gz", [("gzip", True), ("EMNIST/raw", False), ("", True)])
def test_local_emnist_comes_out_upright(tmp_path, subdir, gz):
  """EMNIST files hold transposed images and letters labels 1..26."""
  rng = np.random.default_rng(2)
  upright = rng.integers(0, 256, (40, 28, 28), np.uint8)
  raw_labels = rng.integers(1, 27, 40)
  folder, suffix = tmp_path / subdir, ".gz" if gz else ""
  write_idx(folder / f"emnist-letters-test-images-idx3-ubyte{suffix}",
            upright.transpose(0, 2, 1), gz=gz)
  write_idx(folder / f"emnist-letters-test-labels-idx1-ubyte{suffix}", raw_labels, gz=gz)
  images, labels = data.load_arrays("emnist/letters", "test", data_dir=tmp_path)
  np.testing.assert_array_equal(images, upright[..., None])
  np.testing.assert_array_equal(labels, raw_labels - 1)
  assert images.flags.c_contiguous
  chex.assert_type(labels, np.int32)
  assert data.dataset_info("emnist/letters")["num_classes"] == 26


# ----------------------------------------------------------------------------- finding the data


def test_env_var_and_folder_order(tmp_path, monkeypatch):
  write_mnist(tmp_path / "env" / "mnist", n_test=7, gz=False)
  monkeypatch.setenv("VDM_DATA_DIR", str(tmp_path / "env"))
  assert data.find_local_files("mnist", "test") == [
      tmp_path / "env" / "mnist" / "t10k-images-idx3-ubyte",
      tmp_path / "env" / "mnist" / "t10k-labels-idx1-ubyte"]
  assert len(data.load_arrays("mnist", "test")[0]) == 7
  write_mnist(tmp_path / "arg", n_test=5)  # data_dir comes before VDM_DATA_DIR
  assert len(data.load_arrays("mnist", "test", data_dir=tmp_path / "arg")[0]) == 5


def test_partial_local_files_are_an_error(tmp_path):
  write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", indexed_images(3))
  with pytest.raises(FileNotFoundError, match="lacks t10k-labels-idx1-ubyte.gz"):
    data.load_arrays("mnist", "test", data_dir=tmp_path)


def test_missing_data_names_places_and_remedy(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    data.load_arrays("cifar10", "train", data_dir=tmp_path)
  message = str(e.value)
  for part in ("Dataset 'cifar10' split 'train' was not found", "data_batch_1.bin",
               "data_batch_5.bin", str(tmp_path / "cifar-10-batches-bin"),
               "and in tensorflow-datasets: not ", "cifar-10-binary.tar.gz", "VDM_DATA_DIR",
               "Download: not tried, VDM_DATA_OFFLINE=1 is set; it fetches\n    https://www."
               "cs.toronto.edu/~kriz/cifar-10-binary.tar.gz  (sha256 c4a38c50a1bc5f3a1c5537f21",
               f"tfds build cifar10 --file_format=array_record --data_dir {tmp_path}"):
    assert part in message, part


def test_missing_fashion_mnist_suggests_debian_package(tmp_path, monkeypatch):
  monkeypatch.setenv("VDM_DATA_CACHE", str(tmp_path / "empty_cache"))
  monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", {"fashion_mnist": (str(tmp_path / "sys"),)})
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
    data.load_arrays("fashion_mnist", "test")
  assert str(tmp_path / "sys" / "fashion-mnist") in str(e.value)
  assert "train-images" not in str(e.value) and "t10k-images-idx3-ubyte.gz" in str(e.value)
