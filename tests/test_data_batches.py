"""vdm_jax.data.batches: shuffled, sharded, resumable training batches and padded eval passes,
over real Fashion-MNIST, synthetic MNIST files and arrays in memory."""
import itertools

import chex
import numpy as np
import pytest

from test_data_formats import indexed_images
from test_data_sources import ids, write_mnist
from vdm_jax import data


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv("VDM_DATA_DIR", raising=False)


@pytest.fixture
def mnist_dir(tmp_path):
  """A data_dir with a synthetic MNIST (103 train, 23 test) in its mnist/ subfolder."""
  write_mnist(tmp_path / "mnist")
  return tmp_path


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for key in x:
      chex.assert_type(x[key], y[key].dtype)
      np.testing.assert_array_equal(x[key], y[key])


# ----------------------------------------------------------------------------- real Fashion-MNIST


@pytest.fixture(scope="module")
def fashion():
  """Real Fashion-MNIST, found without configuration (tests/helpers_data.py)."""
  return {split: data.load_arrays("fashion_mnist", split) for split in data.SPLITS}


def test_real_train_batches(fashion):
  batch = next(data.get_dataset("fashion_mnist", "train", 32, seed=3))
  assert set(batch) == {"image", "label"}
  chex.assert_shape([batch["image"], batch["label"]], [(32, 28, 28, 1), (32,)])
  chex.assert_type([batch["image"], batch["label"]], [np.uint8, np.int32])
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
      chex.assert_shape(b["image"], (384, 28, 28, 1))
      chex.assert_type(b["mask"], np.bool_)
      images.append(b["image"]), labels.append(b["label"]), masks.append(b["mask"])
  mask = np.concatenate(masks)
  assert mask.sum() == 10000 and mask[:10000].all()
  np.testing.assert_array_equal(np.concatenate(images)[mask], x_test)
  np.testing.assert_array_equal(np.concatenate(labels)[mask], y_test)
  assert not np.concatenate(images)[~mask].any()


def test_real_in_memory_batches_equal_get_dataset(fashion):
  x_train, y_train = fashion["train"]
  x_test, y_test = fashion["test"]
  assert_same_batches(
      take(data.train_batches(x_train, y_train, 64, seed=4, start_batch=900, process_index=1,
                              process_count=2), 5),
      take(data.get_dataset("fashion_mnist", "train", 64, seed=4, start_batch=900,
                            process_index=1, process_count=2), 5))
  assert_same_batches(
      list(data.eval_batches(x_test, y_test, 384, process_index=1, process_count=2)),
      list(data.get_dataset("fashion_mnist", "test", 384, process_index=1, process_count=2)))


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
    chex.assert_shape(b["image"], (8, 28, 28, 1))
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


def test_arguments_are_checked_before_loading(tmp_path):
  """Bad arguments fail at once, not after reading a whole split (here: there is none)."""
  with pytest.raises(ValueError, match="start_batch must be a non-negative integer"):
    data.get_dataset("mnist", "test", 4, start_batch=-1, data_dir=tmp_path)
  with pytest.raises(FileNotFoundError, match="Dataset 'mnist' split 'test' was not found"):
    data.get_dataset("mnist", "test", 4, data_dir=tmp_path)


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
      chex.assert_shape([b["image"], b["mask"]], [(batch_size, 28, 28, 1), (batch_size,)])
      seen += list(ids(b)[b["mask"]])
      np.testing.assert_array_equal(b["label"][b["mask"]], ids(b)[b["mask"]] % 10)
      assert not b["image"][~b["mask"]].any() and not b["label"][~b["mask"]].any()
  assert seen == list(range(23))


# ----------------------------------------------------------------------------- arrays in memory


@pytest.mark.parametrize("batch_size,process_index,process_count,start_batch",
                         [(8, 0, 1, 0), (4, 1, 2, 0), (4, 0, 2, 13), (5, 0, 1, 40)])
def test_in_memory_batches_equal_get_dataset(mnist_dir, batch_size, process_index,
                                             process_count, start_batch):
  kw = dict(start_batch=start_batch, process_index=process_index, process_count=process_count)
  x_train, y_train = data.load_arrays("mnist", "train", mnist_dir)
  x_test, y_test = data.load_arrays("mnist", "test", mnist_dir)
  assert_same_batches(
      take(data.train_batches(x_train, y_train, batch_size, seed=6, **kw), 30),
      take(data.get_dataset("mnist", "train", batch_size, seed=6, data_dir=mnist_dir, **kw), 30))
  eval_kw = dict(kw, start_batch=start_batch % 3)
  assert_same_batches(
      list(data.eval_batches(x_test, y_test, batch_size, **eval_kw)),
      list(data.get_dataset("mnist", "test", batch_size, data_dir=mnist_dir, **eval_kw)))


def test_repeated_eval_passes_leave_the_arrays_untouched():
  """Padding writes into each batch's own copy; the arrays, even read-only, are only indexed."""
  images, labels = indexed_images(23)[..., None], np.arange(23, dtype=np.int32) % 10
  images.flags.writeable = labels.flags.writeable = False
  passes = [list(data.eval_batches(images, labels, 4, process_index=1, process_count=2))
            for _ in range(2)]
  assert_same_batches(*passes)
  assert [int(b["mask"].sum()) for b in passes[0]] == [4, 4, 3]
  np.testing.assert_array_equal(images[:, 0, 0, 0], np.arange(23))
  for b in passes[0]:
    assert b["image"].flags.writeable and not np.shares_memory(b["image"], images)


def test_in_memory_train_batches_keep_dtypes_and_shapes():
  images = np.arange(10 * 3 * 2, dtype=np.float32).reshape(10, 3, 2)
  labels = np.arange(10, dtype=np.int64)
  batch = next(data.train_batches(images, labels, 4, seed=1, process_index=0, process_count=1))
  chex.assert_shape([batch["image"], batch["label"]], [(4, 3, 2), (4,)])
  chex.assert_type([batch["image"], batch["label"]], [np.float32, np.int64])
  np.testing.assert_array_equal(batch["label"], np.random.default_rng([1, 0]).permutation(10)[:4])
  np.testing.assert_array_equal(batch["image"], images[batch["label"]])


def test_in_memory_iterators_check_their_arguments():
  images, labels = np.zeros((10, 2, 2, 1), np.uint8), np.zeros(10, np.int32)
  with pytest.raises(ValueError, match=r"images has 10 training examples, fewer than one global "
                                       r"batch \(6 per process x 2 processes\)"):
    data.train_batches(images, labels, 6, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="seed must be a non-negative integer, got -2"):
    data.train_batches(images, labels, 2, seed=-2)
  with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
    data.eval_batches(images, labels, 0)
  with pytest.raises(ValueError, match=r"process_index 3 not in \[0, 2\)"):
    data.eval_batches(images, labels, 2, process_index=3, process_count=2)
  with pytest.raises(ValueError, match="start_batch must be a non-negative integer"):
    data.eval_batches(images, labels, 2, start_batch=-1)
  with pytest.raises(ValueError, match=r"images \(10, 2, 2, 1\) and labels \(9,\) must be"):
    data.eval_batches(images, labels[:9], 2)
  with pytest.raises(ValueError, match=r"images \(10, 2, 2, 1\) and labels \(10, 1\) must be"):
    data.train_batches(images, labels[:, None], 2)
