"""vdm_jax.data.sources: real Fashion-MNIST, file formats and their errors, the search for local
files, registered datasets, the tfds path."""
import gzip
import importlib.util
import subprocess
import sys
from pathlib import Path

import chex
import numpy as np
import pytest

from vdm_jax import data
from vdm_jax.data import sources


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv("VDM_DATA_DIR", raising=False)


# ----------------------------------------------------------------------------- synthetic files


def idx_bytes(array, magic=None):
  """An IDX file's content: magic, big-endian dims, uint8 data."""
  magic = magic if magic is not None else (0x803 if array.ndim == 3 else 0x801)
  dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  return magic.to_bytes(4, "big") + dims + np.asarray(array, np.uint8).tobytes()


def write_idx(path, array, magic=None, gz=True):
  path.parent.mkdir(parents=True, exist_ok=True)
  content = idx_bytes(array, magic)
  path.write_bytes(gzip.compress(content) if gz else content)
  return path


def indexed_images(n):
  """[n, 28, 28] images whose pixels (0, 0) and (0, 1) encode the row index."""
  images = np.zeros((n, 28, 28), np.uint8)
  images[:, 0, 0] = np.arange(n) % 256
  images[:, 0, 1] = np.arange(n) // 256
  return images


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


def test_fashion_mnist_from_debian_package():
  """Found without configuration in Debian's dataset-fashion-mnist folder."""
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
  assert info == dict(shape=(28, 28, 1), num_classes=10, num_train=60000, num_test=10000)


def test_local_files_do_not_import_tensorflow():
  code = ("import sys; from vdm_jax import data;"
          "x, _ = data.load_arrays('fashion_mnist', 'test');"
          "assert x.shape == (10000, 28, 28, 1);"
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules];"
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# ----------------------------------------------------------------------------- file formats


def test_idx_round_trip_gzipped_and_plain(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (3, 4, 5), np.uint8)
  for gz in (True, False):
    path = write_idx(tmp_path / f"x{gz}", images, gz=gz)
    out = data.read_idx(path, data.IDX_IMAGES_MAGIC)
    np.testing.assert_array_equal(out, images)
    chex.assert_type(out, np.uint8)
    assert out.flags.writeable


def test_truncated_idx_is_a_clear_error(tmp_path):
  content = idx_bytes(indexed_images(10))
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(gzip.compress(content[:-100]))
  with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: truncated: header says "
                                       r"dims \(10, 28, 28\), so 7856 bytes, but the file "
                                       r"holds 7756"):
    data.read_idx(path, data.IDX_IMAGES_MAGIC)
  path.write_bytes(content[:10])
  with pytest.raises(ValueError, match="truncated IDX header, 10 bytes of 16"):
    data.read_idx(path, data.IDX_IMAGES_MAGIC)
  path.write_bytes(content + b"\0")
  with pytest.raises(ValueError, match="has trailing bytes"):
    data.read_idx(path, data.IDX_IMAGES_MAGIC)


def test_corrupt_gzip_is_a_clear_error(tmp_path):
  compressed = gzip.compress(idx_bytes(np.random.default_rng(1).integers(0, 256, (50, 28, 28))))
  path = tmp_path / "t10k-images-idx3-ubyte.gz"
  bad_crc = bytearray(compressed)
  bad_crc[-8] ^= 0xFF  # CRC32 in the trailer
  corrupted = bytearray(compressed)
  corrupted[len(compressed) // 2: len(compressed) // 2 + 20] = bytes(20)
  for content in (bytes(bad_crc), bytes(corrupted), compressed[:-30]):
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: corrupt gzip file"):
      data.read_idx(path, data.IDX_IMAGES_MAGIC)


def test_wrong_magic_is_a_clear_error(tmp_path):
  path = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", indexed_images(3))  # images magic
  with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: wrong IDX magic number "
                                       r"0x00000803, expected 0x00000801"):
    data.read_idx(path, data.IDX_LABELS_MAGIC)


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


def write_cifar(path, chw, labels):
  records = np.concatenate([np.asarray(labels, np.uint8)[:, None],
                            chw.reshape(len(chw), -1)], axis=1)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(records.tobytes())


def test_cifar10_binary_is_parsed_to_hwc(tmp_path):
  folder = tmp_path / "cifar-10-batches-bin"
  rng = np.random.default_rng(3)
  chw = rng.integers(0, 256, (6, 5, 3, 32, 32), np.uint8)  # 5 train files + test, 5 records each
  labels = rng.integers(0, 10, (6, 5))
  for i in range(5):
    write_cifar(folder / f"data_batch_{i + 1}.bin", chw[i], labels[i])
  write_cifar(folder / "test_batch.bin", chw[5], labels[5])

  images, test_labels = data.load_arrays("cifar10", "test", data_dir=tmp_path)
  chex.assert_shape(images, (5, 32, 32, 3))
  chex.assert_type([images, test_labels], [np.uint8, np.int32])
  assert images[2, 7, 11, 1] == chw[5, 2, 1, 7, 11]  # [n, h, w, c] == [n, c, h, w]
  np.testing.assert_array_equal(images, chw[5].transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(test_labels, labels[5])

  images, train_labels = data.load_arrays("cifar10", "train", data_dir=tmp_path)
  np.testing.assert_array_equal(images, chw[:5].reshape(25, 3, 32, 32).transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(train_labels, labels[:5].reshape(-1))

  (folder / "test_batch.bin").write_bytes(b"\0" * 3075)
  with pytest.raises(ValueError, match=r"test_batch.bin: 3075 bytes is not a whole number of "
                                       r"CIFAR-10 records"):
    data.load_arrays("cifar10", "test", data_dir=tmp_path)


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
               f"tfds build cifar10 --file_format=array_record --data_dir {tmp_path}"):
    assert part in message, part


def test_missing_fashion_mnist_suggests_debian_package(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", {"fashion_mnist": (str(tmp_path / "sys"),)})
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
    data.load_arrays("fashion_mnist", "test")
  assert str(tmp_path / "sys" / "fashion-mnist") in str(e.value)
  assert "train-images" not in str(e.value) and "t10k-images-idx3-ubyte.gz" in str(e.value)


def test_unknown_names_list_the_valid_ones():
  with pytest.raises(ValueError, match=r"Unknown dataset 'emnist/foo'; valid names: cifar10, "
                                       r"emnist/balanced, .*, fashion_mnist, mnist"):
    data.get_dataset("emnist/foo", "train", 8)
  with pytest.raises(ValueError, match="Unknown split 'validation'; valid splits: train, test"):
    data.load_arrays("mnist", "validation")
  with pytest.raises(ValueError, match="valid names"):
    data.dataset_info("imagenet")


def test_dataset_info_needs_no_data():
  assert data.dataset_info("cifar10") == dict(shape=(32, 32, 3), num_classes=10,
                                              num_train=50000, num_test=10000)
  assert data.dataset_info("emnist/byclass")["num_classes"] == 62
  assert data.dataset_info("emnist/balanced")["num_train"] == 112800


# ----------------------------------------------------------------------------- registered datasets


@pytest.fixture
def registry(monkeypatch):
  """The registry, restored after the test so registrations do not leak into other tests."""
  monkeypatch.setattr(sources, "_SPECS", dict(sources._SPECS))
  return sources._SPECS


def read_npz(files):
  """Reader of one .npz per split holding `images` [N, H, W] and `labels` [N]."""
  with np.load(files[0]) as f:
    return f["images"][..., None], f["labels"]


def npz_spec(**overrides):
  fields = dict(shape=(6, 5, 1), num_classes=3, num_train=20, num_test=7,
                files={"train": "toy-train.npz", "test": ("toy-test.npz",)},
                reader=read_npz, subdirs=("toy", ""), how_to_get="the toy .npz files")
  return data.DatasetSpec(**{**fields, **overrides})


def write_toy(folder, split, n, seed):
  """toy-<split>.npz: n random [6, 5] images, labels in [0, 3); returns them as served."""
  rng = np.random.default_rng(seed)
  images, labels = rng.integers(0, 256, (n, 6, 5), np.uint8), rng.integers(0, 3, n)
  folder.mkdir(parents=True, exist_ok=True)
  np.savez(folder / f"toy-{split}.npz", images=images, labels=labels)
  return images[..., None], labels


def test_registered_dataset_with_its_own_reader(tmp_path, registry):
  data.register_dataset("toy", npz_spec())
  assert "toy" in data.dataset_names() and "mnist" in data.dataset_names()
  assert data.dataset_info("toy") == dict(shape=(6, 5, 1), num_classes=3, num_train=20,
                                          num_test=7)
  train_images, train_labels = write_toy(tmp_path / "toy", "train", 20, seed=0)
  test_images, test_labels = write_toy(tmp_path / "toy", "test", 7, seed=1)
  assert data.find_local_files("toy", "test", tmp_path) == [tmp_path / "toy" / "toy-test.npz"]

  images, labels = data.load_arrays("toy", "train", data_dir=tmp_path)
  chex.assert_shape([images, labels], [(20, 6, 5, 1), (20,)])
  chex.assert_type([images, labels], [np.uint8, np.int32])
  np.testing.assert_array_equal(images, train_images)
  np.testing.assert_array_equal(labels, train_labels)

  batch = next(data.get_dataset("toy", "train", 4, seed=2, data_dir=tmp_path))
  order = np.random.default_rng([2, 0]).permutation(20)[:4]
  np.testing.assert_array_equal(batch["image"], train_images[order])
  np.testing.assert_array_equal(batch["label"], train_labels[order])
  evals = list(data.get_dataset("toy", "test", 4, data_dir=tmp_path))
  assert [b["mask"].sum() for b in evals] == [4, 3]
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in evals])[:7], test_images)
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in evals])[:7], test_labels)


def test_registered_dataset_without_tfds_says_where_it_looked(tmp_path, registry):
  data.register_dataset("toy", npz_spec())
  with pytest.raises(FileNotFoundError) as e:
    data.load_arrays("toy", "test", data_dir=tmp_path)
  message = str(e.value)
  for part in ("Dataset 'toy' split 'test' was not found", "toy-test.npz",
               str(tmp_path / "toy"), "its spec has no tfds_name", "the toy .npz files"):
    assert part in message, part
  assert "tfds build" not in message


def test_registered_reader_output_is_checked(tmp_path, registry):
  write_toy(tmp_path, "test", 7, seed=1)
  data.register_dataset("floats", npz_spec(reader=lambda f: (np.zeros((7, 6, 5, 1)),
                                                             np.zeros(7, int))))
  with pytest.raises(ValueError, match="images float64 / labels int64, expected uint8"):
    data.load_arrays("floats", "test", data_dir=tmp_path)
  data.register_dataset("flat", npz_spec(reader=lambda f: np.load(f[0])["images"]))
  with pytest.raises(TypeError, match="reader of 'flat' returned ndarray, expected a pair"):
    data.load_arrays("flat", "test", data_dir=tmp_path)
  data.register_dataset("wrong_shape", npz_spec(shape=(5, 6, 1)))
  with pytest.raises(ValueError, match=r"images \(7, 6, 5, 1\) / labels \(7,\), "
                                       r"expected \[N, 5, 6, 1\] / \[N\]"):
    data.load_arrays("wrong_shape", "test", data_dir=tmp_path)


def test_register_refuses_a_taken_name_unless_overwrite(registry):
  with pytest.raises(ValueError, match="Dataset 'mnist' is already registered; pass "
                                       "overwrite=True"):
    data.register_dataset("mnist", npz_spec())
  data.register_dataset("toy", npz_spec())
  with pytest.raises(ValueError, match="'toy' is already registered"):
    data.register_dataset("toy", npz_spec(num_classes=4))
  data.register_dataset("toy", npz_spec(num_classes=4), overwrite=True)
  assert data.dataset_info("toy")["num_classes"] == 4
  for name in ("", "two words", None):
    with pytest.raises(ValueError, match="non-empty string without whitespace"):
      data.register_dataset(name, npz_spec())
  with pytest.raises(TypeError, match="spec must be a vdm_jax.data.DatasetSpec, got dict"):
    data.register_dataset("toy2", dict(shape=(6, 5, 1)))
  assert "toy2" not in data.dataset_names()


@pytest.mark.parametrize("overrides,error,match", [
    (dict(shape=(28, 28)), ValueError, r"shape must be 3 positive integers \(H, W, C\), "
                                       r"got \(28, 28\)"),
    (dict(shape=(28, 0, 1)), ValueError, "shape must be 3 positive integers"),
    (dict(num_classes=0), ValueError, "num_classes must be a positive integer, got 0"),
    (dict(num_train=2.5), ValueError, "num_train must be a positive integer, got 2.5"),
    (dict(files={"train": "a.npz"}), ValueError, r"files must map each of train, test to its "
                                                 r"files, got \['train'\]"),
    (dict(files={"train": (), "test": "b.npz"}), ValueError,
     r"files\['train'\] must name at least one file"),
    (dict(reader="npz"), TypeError, "reader must be callable"),
    (dict(tfds_name=""), ValueError, "tfds_name must be a non-empty string or None"),
])
def test_bad_spec_is_a_clear_error(overrides, error, match):
  with pytest.raises(error, match="DatasetSpec." + match):
    npz_spec(**overrides)


def test_spec_accepts_lists_and_bare_names():
  spec = npz_spec(shape=[6, 5, 1], subdirs="toy",
                  files={"train": ["a.npz", ("b.npz.gz", "b.npz")], "test": "c.npz"})
  assert spec.shape == (6, 5, 1) and spec.subdirs == ("toy",)
  assert spec.files == {"train": (("a.npz",), ("b.npz.gz", "b.npz")), "test": (("c.npz",),)}


# ----------------------------------------------------------------------------- tensorflow-datasets


@pytest.fixture
def tfds(monkeypatch):
  """tensorflow_datasets with every dataset reported prepared.

  Inside ``tfds.testing.mock_data`` the builders serve random deterministic examples, but
  ``is_prepared`` stays False; vdm_jax.data never downloads, so it checks that first.
  """
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
  return tfds


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3)),
                                        ("emnist/digits", (28, 28, 1))])
def test_tfds_path_same_format(tmp_path, tfds, name, shape):
  tensorflow_loaded = "tensorflow" in sys.modules
  with tfds.testing.mock_data(num_examples=10):
    raw = tfds.data_source(name, split="test", download=False)
    raw_images = np.stack([raw[i]["image"] for i in range(len(raw))])
    raw_labels = np.array([raw[i]["label"] for i in range(len(raw))])
    train = next(data.get_dataset(name, "train", 4, data_dir=tmp_path))
    evals = list(data.get_dataset(name, "test", 4, data_dir=tmp_path))
  assert ("tensorflow" in sys.modules) == tensorflow_loaded  # array_record: no TensorFlow
  assert set(train) == {"image", "label"}
  chex.assert_shape([train["image"], train["label"]], [(4, *shape), (4,)])
  chex.assert_type([train["image"], train["label"]], [np.uint8, np.int32])
  assert [b["mask"].sum() for b in evals] == [4, 4, 2]
  for b in evals:
    chex.assert_type([b["mask"], b["image"]], [np.bool_, np.uint8])
  images = np.concatenate([b["image"][b["mask"]] for b in evals])
  labels = np.concatenate([b["label"][b["mask"]] for b in evals])
  if name.startswith("emnist"):  # tfds keeps EMNIST transposed, like the raw files
    upright = raw_images.transpose(0, 2, 1, 3)
    assert not np.array_equal(upright, raw_images)
  else:
    upright = raw_images
  np.testing.assert_array_equal(images, upright)
  np.testing.assert_array_equal(labels, raw_labels)


def test_tfds_tfrecord_needs_tensorflow(tmp_path, tfds):
  """A dataset prepared without random access is read through TensorFlow, if installed."""
  def no_random_access(self, *args, **kwargs):
    raise NotImplementedError("prepared as tfrecord")

  with tfds.testing.mock_data(num_examples=10, as_data_source_fn=no_random_access):
    if importlib.util.find_spec("tensorflow") is not None:
      images, labels = data.load_arrays("mnist", "test", data_dir=tmp_path)
      chex.assert_shape([images, labels], [(10, 28, 28, 1), (10,)])
      chex.assert_type([images, labels], [np.uint8, np.int32])
    else:
      with pytest.raises(ImportError, match="only TensorFlow reads.*tfds build mnist "
                                            "--file_format=array_record"):
        data.load_arrays("mnist", "test", data_dir=tmp_path)
