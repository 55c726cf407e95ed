"""vdm_jax.data.formats: IDX and CIFAR-10 binary files, read back, and the errors of bad ones."""
import dataclasses
import functools
import gzip

import chex
import numpy as np
import pytest

from vdm_jax import data
from vdm_jax.data import formats
from vdm_jax.data import registry as registry_module


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


def write_cifar(path, chw, labels):
  records = np.concatenate([np.asarray(labels, np.uint8)[:, None],
                            chw.reshape(len(chw), -1)], axis=1)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(records.tobytes())


# ----------------------------------------------------------------------------- IDX


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


# ----------------------------------------------------------------------------- CIFAR-10 binary


@pytest.fixture
def cifar10_with_5_records_per_file(monkeypatch):
  """The cifar10 spec with files of 5 records (the official ones hold 10000), restored after."""
  spec = dataclasses.replace(registry_module.get_spec("cifar10"),
                             reader=functools.partial(data.read_cifar10_split,
                                                      records_per_file=5))
  monkeypatch.setitem(registry_module._SPECS, "cifar10", spec)


def test_cifar10_binary_is_parsed_to_hwc(tmp_path, cifar10_with_5_records_per_file):
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


def test_cifar10_file_cut_on_a_record_boundary_is_a_clear_error(tmp_path):
  folder = tmp_path / "cifar-10-batches-bin"
  records = np.zeros((formats.CIFAR10_RECORDS_PER_FILE, 1 + 3 * 32 * 32), np.uint8)
  folder.mkdir()
  (folder / "test_batch.bin").write_bytes(records[:-1].tobytes())   # 9999 of 10000 records
  with pytest.raises(ValueError, match=r"test_batch.bin: holds 9999 CIFAR-10 records, expected "
                                       r"10000; the file is incomplete"):
    data.load_arrays("cifar10", "test", data_dir=tmp_path)
  (folder / "test_batch.bin").write_bytes(records.tobytes())
  images, labels = data.load_arrays("cifar10", "test", data_dir=tmp_path)
  chex.assert_shape([images, labels], [(10000, 32, 32, 3), (10000,)])


def test_read_cifar10_bin_checks_the_count_only_when_given(tmp_path):
  path = tmp_path / "part.bin"
  write_cifar(path, np.zeros((7, 3, 32, 32), np.uint8), np.arange(7))
  images, labels = data.read_cifar10_bin(path)
  chex.assert_shape([images, labels], [(7, 32, 32, 3), (7,)])
  np.testing.assert_array_equal(data.read_cifar10_bin(path, expected_records=7)[1], labels)
  with pytest.raises(ValueError, match=r"part.bin: holds 7 CIFAR-10 records, expected 10000"):
    data.read_cifar10_bin(path, expected_records=10000)
  with pytest.raises(ValueError, match=r"part.bin: holds 7 CIFAR-10 records, expected 10000"):
    data.read_cifar10_split([path])
  np.testing.assert_array_equal(data.read_cifar10_split([path, path], records_per_file=None)[1],
                                np.tile(labels, 2))
