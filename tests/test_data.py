"""vdm_jax.data: real Fashion-MNIST, file formats and their errors, iterators, the tfds path."""
import gzip
import importlib.util
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vdm_jax import data


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
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", indexed_images(n), gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, gz=gz)
    return folder


@pytest.fixture
def mnist_dir(tmp_path):
    """A data_dir with a synthetic MNIST (103 train, 23 test) in its mnist/ subfolder."""
    write_mnist(tmp_path / "mnist")
    return tmp_path


def take(iterator, n):
    return list(itertools.islice(iterator, n))


# ----------------------------------------------------------------------------- real Fashion-MNIST


@pytest.fixture(scope="module")
def fashion():
    """Fashion-MNIST from Debian's dataset-fashion-mnist (found without configuration)."""
    return {split: data.load_arrays("fashion_mnist", split) for split in data.SPLITS}


def test_fashion_mnist_from_debian_package(fashion):
    (x_train, y_train), (x_test, y_test) = fashion["train"], fashion["test"]
    assert x_train.shape == (60000, 28, 28, 1) and x_train.dtype == np.uint8
    assert x_test.shape == (10000, 28, 28, 1) and x_test.dtype == np.uint8
    assert y_train.shape == (60000,) and y_train.dtype == np.int32
    assert y_test.shape == (10000,) and y_test.dtype == np.int32
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


def test_real_train_batches(fashion):
    batch = next(data.get_dataset("fashion_mnist", "train", 32, seed=3))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (32, 28, 28, 1) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
    order = np.random.default_rng([3, 0]).permutation(60000)[:32]
    x_train, y_train = fashion["train"]
    np.testing.assert_array_equal(batch["image"], x_train[order])
    np.testing.assert_array_equal(batch["label"], y_train[order])


def test_real_eval_pass_two_processes(fashion):
    """Batch 384 x 2 processes does not divide 10000: padded last batch, every image once."""
    x_test, y_test = fashion["test"]
    runs = [list(data.get_dataset("fashion_mnist", "test", 384, process_index=p, process_count=2))
            for p in range(2)]
    assert len(runs[0]) == len(runs[1]) == 14  # ceil(10000 / 768)
    images, labels, masks = [], [], []
    for b0, b1 in zip(*runs):
        for b in (b0, b1):
            assert b["image"].shape == (384, 28, 28, 1) and b["mask"].dtype == np.bool_
            images.append(b["image"]), labels.append(b["label"]), masks.append(b["mask"])
    mask = np.concatenate(masks)
    assert mask.sum() == 10000 and mask[:10000].all()
    np.testing.assert_array_equal(np.concatenate(images)[mask], x_test)
    np.testing.assert_array_equal(np.concatenate(labels)[mask], y_test)
    assert not np.concatenate(images)[~mask].any()


# ----------------------------------------------------------------------------- training iterator


def test_train_same_seed_same_batches_and_other_seed_other_order(mnist_dir):
    def first(seed):
        return [ids(b) for b in take(data.get_dataset("mnist", "train", 8, seed=seed,
                                                       data_dir=mnist_dir), 12)]
    a, b, c = first(0), first(0), first(1)
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(np.stack(a), np.stack(c))
    for epoch in (a, c):  # each a random 96 of the 103 examples, none twice
        seen = set(np.concatenate(epoch))
        assert len(seen) == 96 and seen <= set(range(103))


def test_train_epochs_reshuffle_and_drop_remainder(mnist_dir):
    it = data.get_dataset("mnist", "train", 8, seed=0, data_dir=mnist_dir, process_count=1,
                          process_index=0)
    batches = take(it, 36)  # 103 // 8 = 12 batches per epoch, 3 epochs
    for b in batches:
        assert b["image"].shape == (8, 28, 28, 1)
        np.testing.assert_array_equal(b["label"], ids(b) % 10)
    epochs = [np.concatenate([ids(b) for b in batches[12 * e: 12 * (e + 1)]]) for e in range(3)]
    for e, epoch_ids in enumerate(epochs):
        assert len(set(epoch_ids)) == 96 and set(epoch_ids) <= set(range(103))
        np.testing.assert_array_equal(
            epoch_ids, np.random.default_rng([0, e]).permutation(103)[:96])
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])


def test_train_process_shards_partition_the_global_batch(mnist_dir):
    def run(batch_size, p, count):
        return take(data.get_dataset("mnist", "train", batch_size, seed=5, data_dir=mnist_dir,
                                     process_index=p, process_count=count), 30)
    whole = run(8, 0, 1)  # 12 global batches per epoch, 2.5 epochs
    shard0, shard1 = run(4, 0, 2), run(4, 1, 2)
    for g, s0, s1 in zip(whole, shard0, shard1):
        assert not set(ids(s0)) & set(ids(s1))
        np.testing.assert_array_equal(np.concatenate([ids(s0), ids(s1)]), ids(g))


@pytest.mark.parametrize("k", [0, 5, 11, 12, 13, 30])
@pytest.mark.parametrize("process_index,process_count", [(0, 1), (1, 2)])
def test_train_resume_equals_skipping(mnist_dir, k, process_index, process_count):
    def make(start_batch):
        return data.get_dataset("mnist", "train", 4, seed=7, data_dir=mnist_dir,
                                start_batch=start_batch, process_index=process_index,
                                process_count=process_count)
    skipped = take(make(0), k + 15)[k:]  # crosses at least one epoch boundary
    resumed = take(make(k), 15)
    for a, b in zip(skipped, resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_train_rejects_bad_arguments(mnist_dir):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        data.get_dataset("mnist", "train", 64, data_dir=mnist_dir, process_index=0,
                         process_count=2)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        data.get_dataset("mnist", "train", 0, data_dir=mnist_dir)
    with pytest.raises(ValueError, match=r"process_index 2 not in \[0, 2\)"):
        data.get_dataset("mnist", "train", 4, data_dir=mnist_dir, process_index=2,
                         process_count=2)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        data.get_dataset("mnist", "train", 4, seed=-1, data_dir=mnist_dir)


# ----------------------------------------------------------------------------- eval iterator


@pytest.mark.parametrize("batch_size,process_count", [(5, 1), (4, 2), (23, 1), (16, 2)])
def test_eval_pass_counts_every_image_once(mnist_dir, batch_size, process_count):
    runs = [list(data.get_dataset("mnist", "test", batch_size, data_dir=mnist_dir,
                                  process_index=p, process_count=process_count))
            for p in range(process_count)]
    expected_batches = -(-23 // (batch_size * process_count))
    assert [len(r) for r in runs] == [expected_batches] * process_count
    seen = []
    for batches in zip(*runs):
        for b in batches:
            assert set(b) == {"image", "label", "mask"}
            assert b["image"].shape == (batch_size, 28, 28, 1) and b["mask"].shape == (batch_size,)
            seen += list(ids(b)[b["mask"]])
            np.testing.assert_array_equal(b["label"][b["mask"]], ids(b)[b["mask"]] % 10)
            assert not b["image"][~b["mask"]].any() and not b["label"][~b["mask"]].any()
    assert seen == list(range(23))


# ----------------------------------------------------------------------------- file formats


def test_idx_round_trip_gzipped_and_plain(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 5), np.uint8)
    for gz in (True, False):
        path = write_idx(tmp_path / f"x{gz}", images, gz=gz)
        out = data.read_idx(path, data.IDX_IMAGES_MAGIC)
        np.testing.assert_array_equal(out, images)
        assert out.dtype == np.uint8 and out.flags.writeable


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


def test_bad_local_file_raises_instead_of_falling_back(mnist_dir):
    path = mnist_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(23) % 10)[:-1]))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: truncated"):
        data.load_arrays("mnist", "test", mnist_dir)
    write_idx(path, np.arange(22) % 10)
    with pytest.raises(ValueError, match="holds 23 images but .* 22 labels"):
        data.load_arrays("mnist", "test", mnist_dir)
    write_idx(path, np.full(23, 10))
    with pytest.raises(ValueError, match=r"labels span \[10, 10\] .* expected \[0, 10\)"):
        data.load_arrays("mnist", "test", mnist_dir)


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
    assert images.flags.c_contiguous and labels.dtype == np.int32
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
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    assert images[2, 7, 11, 1] == chw[5, 2, 1, 7, 11]  # [n, h, w, c] == [n, c, h, w]
    np.testing.assert_array_equal(images, chw[5].transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(test_labels, labels[5])
    assert test_labels.dtype == np.int32

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
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", {"fashion_mnist": (str(tmp_path / "sys"),)})
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
    assert train["image"].shape == (4, *shape) and train["image"].dtype == np.uint8
    assert train["label"].shape == (4,) and train["label"].dtype == np.int32
    assert [b["mask"].sum() for b in evals] == [4, 4, 2]
    assert all(b["mask"].dtype == np.bool_ and b["image"].dtype == np.uint8 for b in evals)
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
            assert images.shape == (10, 28, 28, 1) and images.dtype == np.uint8
            assert labels.shape == (10,) and labels.dtype == np.int32
        else:
            with pytest.raises(ImportError, match="only TensorFlow reads.*tfds build mnist "
                                                  "--file_format=array_record"):
                data.load_arrays("mnist", "test", data_dir=tmp_path)
