"""The shipped Fashion-MNIST feature network (vdm_jax.metrics.load_feature_network) and the
script that trains it (experiments/train_classifier.py): the weights load only with their
recorded sha256, classify real test images as well as measured, give finite features of the
documented shape, refuse images of another shape or type; training is a function of its seed."""
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import train_classifier
from experiments.configs import classifier_fashion_mnist
from vdm_jax import data, metrics
from vdm_jax.metrics import features

# Measured: 0.929 on the first 1,000 test images; two points below that.
FIRST_1000_MIN_ACCURACY = 0.909

SHIPPED_PATH = features.WEIGHTS_DIR / features.SHIPPED["fashion_mnist"][0]


@pytest.fixture(scope="module")
def net():
  return metrics.load_feature_network("fashion_mnist")


@pytest.fixture(scope="module")
def first_1000():
  images, labels = data.load_arrays("fashion_mnist", "test")
  return images[:1000], labels[:1000]


def _leaves(variables):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(variables)]


# --------------------------------------------------------------------------- shipped weights


def test_shipped_weights_load_with_their_recorded_sha256(net):
  assert net.sha256 == features.FASHION_MNIST_SHA256 == features.sha256_of(SHIPPED_PATH)
  assert (net.dataset, net.feature_dim, net.num_classes, net.image_shape) == \
      ("fashion_mnist", 128, 10, (28, 28, 1))
  assert net.num_test == 10_000 and net.test_accuracy >= 0.92
  assert "[0, 255]" in net.input_convention


def test_a_changed_weights_file_is_refused_naming_both_digests(tmp_path):
  copy = tmp_path / "copy.npz"
  shutil.copyfile(SHIPPED_PATH, copy)
  assert metrics.load_feature_network(path=copy).sha256 == features.FASHION_MNIST_SHA256
  raw = bytearray(copy.read_bytes())
  raw[len(raw) // 2] ^= 0x01           # one bit of one parameter
  copy.write_bytes(bytes(raw))
  changed = features.sha256_of(copy)
  with pytest.raises(features.WeightsChecksumError) as e:
    metrics.load_feature_network(path=copy)
  assert isinstance(e.value, ValueError)
  assert changed in str(e.value) and features.FASHION_MNIST_SHA256 in str(e.value)
  assert str(copy) in str(e.value)


def test_unknown_name_and_missing_file_are_explained(tmp_path):
  with pytest.raises(KeyError, match="fashion_mnist"):
    metrics.load_feature_network("cifar10")
  with pytest.raises(FileNotFoundError, match="No feature network weights"):
    metrics.load_feature_network(path=tmp_path / "absent.npz")


# ---------------------------------------------------------------------------- on real images


def test_accuracy_and_features_on_the_first_1000_test_images(net, first_1000):
  images, labels = first_1000
  logits, feats = (np.asarray(a) for a in net.apply(images))
  assert feats.shape == (1000, net.feature_dim) and feats.dtype == np.float32
  assert logits.shape == (1000, 10) and logits.dtype == np.float32
  assert np.isfinite(feats).all() and np.isfinite(logits).all()
  assert (feats >= 0).all()                        # ReLU activations
  assert feats.std(axis=0).max() > 0               # not a constant map
  accuracy = float(np.mean(np.asarray(net.classify(images)) == labels))
  assert accuracy >= FIRST_1000_MIN_ACCURACY, accuracy
  # The same numbers through feature_fn / logits_fn, eagerly and inside jax.jit (on a batch of
  # another size: float32 rounding of the convolutions differs, about 1e-6 relative).
  np.testing.assert_allclose(np.asarray(net.feature_fn(images[:8])), feats[:8], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.jit(net.feature_fn)(images[:8])), feats[:8],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(net.logits_fn(images[:8])), logits[:8], rtol=1e-5,
                             atol=1e-5)


def test_features_feed_the_metrics(net, first_1000):
  images, _ = first_1000
  a = metrics.feature_stats(np.asarray(net.feature_fn(images[:500])))
  b = metrics.feature_stats(np.asarray(net.feature_fn(images[500:])))
  assert a.mean.shape == (net.feature_dim,)
  assert 0 <= metrics.frechet_distance(a, b) < metrics.frechet_distance(
      a, metrics.feature_stats(np.asarray(net.feature_fn(255 - images[500:]))))


def test_bad_images_are_refused_with_what_to_do(net):
  with pytest.raises(ValueError, match=r"\[B, 28, 28, 1\], got shape \(2, 32, 32, 3\)"):
    net.feature_fn(np.zeros((2, 32, 32, 3), np.uint8))
  with pytest.raises(ValueError, match=r"\[B, 28, 28, 1\]"):
    net.feature_fn(np.zeros((28, 28, 1), np.uint8))          # one image without its batch axis
  with pytest.raises(ValueError, match=r"\[B, 28, 28, 1\]"):  # also when traced
    jax.jit(net.feature_fn)(jnp.zeros((2, 32, 32, 3), jnp.uint8))
  with pytest.raises(TypeError, match=r"integer pixel values in \[0, 255\].*float32"):
    net.feature_fn(np.zeros((2, 28, 28, 1), np.float32))
  with pytest.raises(ValueError, match=r"\[0, 255\], got values in \[0, 300\]"):
    net.feature_fn(np.arange(2 * 28 * 28).reshape(2, 28, 28, 1) % 301)
  assert net.feature_fn(np.full((2, 28, 28, 1), 255, np.int32)).shape == (2, 128)


# -------------------------------------------------------------------------------- training


def _tiny_config(seed):
  c = classifier_fashion_mnist.get_config()
  c.seed = seed
  c.model.update(widths=(4, 8), feature_dim=8)
  c.training.update(batch_size=16, num_steps=3, log_every=1000, eval_batch_size=32)
  return c


def test_training_is_a_function_of_its_seed(tmp_path):
  images, labels = data.load_arrays("fashion_mnist", "test")
  arrays = (images[:64], labels[:64], images[64:96], labels[64:96])
  quiet = lambda line: None
  runs = [train_classifier.train(_tiny_config(seed), arrays, log=quiet) for seed in (0, 0, 1)]
  (p0, r0), (p0_again, r0_again), (p1, _) = runs
  for a, b in zip(_leaves(p0), _leaves(p0_again)):
    np.testing.assert_array_equal(a, b)
  assert r0["test_correct"] == r0_again["test_correct"] and r0["num_test"] == 32
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(p0), _leaves(p1)))
  # The same parameters give the same file (the sha256 identifies the weights), and the file
  # loads back as exactly those parameters.
  written = [train_classifier.write(tmp_path / name, _tiny_config(0), p, r0)
             for name, p in (("a", p0), ("b", p0_again))]
  assert written[0]["sha256"] == written[1]["sha256"]
  loaded = metrics.load_weights_file(written[0]["weights"], written[0]["sha256"])
  assert (loaded.feature_dim, loaded.image_shape) == (8, (28, 28, 1))
  for a, b in zip(_leaves(p0), _leaves(loaded.params)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(features.WeightsChecksumError):
    metrics.load_weights_file(written[0]["weights"], features.FASHION_MNIST_SHA256)
