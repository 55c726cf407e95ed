"""vdm_jax.data.registry: built-in specs, registered datasets with their own readers, bad specs."""
import chex
import numpy as np
import pytest

from vdm_jax import data
from vdm_jax.data import registry as registry_module


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv("VDM_DATA_DIR", raising=False)


# ----------------------------------------------------------------------------- built-in datasets


def test_unknown_names_list_the_valid_ones():
  # Datasets other tests registered may be listed too (one process runs them all).
  with pytest.raises(ValueError, match=r"Unknown dataset 'emnist/foo'; valid names: cifar10, "
                                       r"emnist/balanced, .*fashion_mnist, (.*, )?mnist "
                                       r"\(or the path"):
    data.get_dataset("emnist/foo", "train", 8)
  with pytest.raises(ValueError, match="Unknown split 'validation'; valid splits: train, test"):
    data.load_arrays("mnist", "validation")
  with pytest.raises(ValueError, match="valid names"):
    data.dataset_info("imagenet")


def test_dataset_info_needs_no_data():
  assert data.dataset_info("cifar10") == dict(shape=(32, 32, 3), num_classes=10,
                                              num_train=50000, num_test=10000, dtype="uint8")
  assert data.dataset_info("emnist/byclass")["num_classes"] == 62
  assert data.dataset_info("emnist/balanced")["num_train"] == 112800


# ----------------------------------------------------------------------------- registered datasets


@pytest.fixture
def registry(monkeypatch):
  """The registry, restored after the test so registrations do not leak into other tests."""
  monkeypatch.setattr(registry_module, "_SPECS", dict(registry_module._SPECS))
  return registry_module._SPECS


def read_npz(files):
  """Reader of one .npz per split holding `images` [N, H, W] and `labels` [N]."""
  with np.load(files[0]) as f:
    return f["images"][..., None], f["labels"]


def npz_spec(**overrides):
  fields = dict(shape=(6, 5, 1), num_classes=3, num_train=20, dtype="uint8", num_test=7,
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
                                          num_test=7, dtype="uint8")
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
