"""vdm_jax.data.tfds_source: datasets prepared by tensorflow-datasets, served like local files."""
import importlib.util
import sys

import chex
import numpy as np
import pytest

from vdm_jax import data


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv("VDM_DATA_DIR", raising=False)


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
