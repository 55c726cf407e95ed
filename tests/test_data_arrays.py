"""A user's own data as a dataset (`vdm_jax.data.arrays`), and the training system on it:
continuous 2D data from an .npz file, an MLP score network, the bound it reports."""
import math

import numpy as np
import pytest

from helpers_train import tiny_config
from vdm_jax import config as config_lib, data, logging_utils, training

M = np.array([0.5, -1.0])     # the 2D Gaussian data of the training test
S = np.array([0.7, 1.5])


def _gaussian(n, seed):
  return (M + S * np.random.default_rng(seed).normal(size=(n, 2))).astype(np.float64)


def test_arrays_are_served_like_a_dataset():
  train, test = _gaussian(100, 0), _gaussian(30, 1)
  spec = data.register_arrays("gauss2d", train, test, overwrite=True)
  assert (spec.shape, spec.dtype, spec.num_classes) == ((2,), "float32", 1)
  assert data.dataset_info("gauss2d") == dict(shape=(2,), num_classes=1, num_train=100,
                                              num_test=30, dtype="float32")
  images, labels = data.load_arrays("gauss2d", "test")
  np.testing.assert_array_equal(images, test.astype(np.float32))
  np.testing.assert_array_equal(labels, np.zeros(30, np.int32))
  batch = next(data.get_dataset("gauss2d", "train", 16, seed=3))
  assert batch["image"].dtype == np.float32 and batch["image"].shape == (16, 2)
  # Every row comes from the training split.
  assert all(np.any(np.all(row == train.astype(np.float32), axis=1)) for row in batch["image"])
  batches = list(data.get_dataset("gauss2d", "test", 8))
  assert sum(int(b["mask"].sum()) for b in batches) == 30


def test_arrays_with_labels_and_integers():
  x = np.random.default_rng(0).integers(0, 16, (20, 3, 4)).astype(np.int64)
  y = np.arange(20) % 4
  spec = data.register_arrays("ints", x, x[:5], train_labels=y, test_labels=y[:5],
                              overwrite=True)
  assert (spec.dtype, spec.num_classes, spec.shape) == ("int32", 4, (3, 4))
  images, labels = data.load_arrays("ints", "train")
  np.testing.assert_array_equal(images, x)
  np.testing.assert_array_equal(labels, y)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(train=np.zeros((4, 2)), test=np.zeros((4, 3))), ValueError, "same shape per example"),
    (dict(train=np.zeros((4,)), test=np.zeros((4,))), ValueError, r"reshape vectors of scalars"),
    (dict(train=np.zeros((4, 2)), test=np.zeros((4, 2)), train_labels=np.zeros(4, int)),
     ValueError, "both splits"),
    (dict(train=np.zeros((4, 2)), test=np.zeros((2, 2)), train_labels=np.zeros(4, int),
          test_labels=np.zeros(3, int)), ValueError, r"shape \[2\]"),
    (dict(train=np.zeros((4, 2)), test=np.zeros((2, 2)), train_labels=np.arange(4),
          test_labels=np.zeros(2, int), num_classes=2), ValueError, "labels go up to 3"),
    (dict(train=np.zeros((4, 2), bool), test=np.zeros((2, 2), bool)), TypeError, "dtype bool"),
    (dict(train=np.zeros((0, 2)), test=np.zeros((2, 2))), ValueError, "at least one example"),
])
def test_bad_arrays_say_what_is_wrong(kwargs, error, match):
  with pytest.raises(error, match=match):
    data.register_arrays("bad", **kwargs, overwrite=True)


def test_npz_file_by_path(tmp_path):
  path = tmp_path / "gauss.npz"
  np.savez(path, x_train=_gaussian(64, 0), x_test=_gaussian(16, 1))
  assert data.dataset_info(str(path))["shape"] == (2,)    # registered on first use
  images, _ = data.load_arrays(str(path), "train")
  np.testing.assert_array_equal(images, _gaussian(64, 0).astype(np.float32))
  bad = tmp_path / "bad.npz"
  np.savez(bad, train=np.zeros((4, 2)))
  with pytest.raises(ValueError, match=r"must hold the arrays \['x_test', 'x_train'\]"):
    data.register_npz(bad)


def _continuous_config(path, **overrides):
  c = tiny_config(**overrides)
  c.data.name = str(path)
  c.model.update(network="mlp", image_shape=(2,), data="continuous", gamma_min=-10.0,
                 gamma_max=6.0)
  c.model.mlp = dict(hidden=64, num_layers=2, n_embd=32)
  c.training.update(batch_size=128, num_steps=300, log_every=100, sample_every=300)
  c.optimizer.update(lr=3e-3, warmup_steps=20)
  c.eval.update(batch_size=200, max_batches=None, num_time_samples=4)
  c.sampling.update(T=50, num_samples=16)
  return c


# A whole 300-step run with samples (20 s on 2 CPU cores): heavy tier. The default tier checks the
# continuous-data bound against closed forms (tests/test_data_models.py).
@pytest.mark.heavy
def test_training_on_continuous_data_reports_a_bound_above_the_entropy(tmp_path):
  path = tmp_path / "gauss.npz"
  np.savez(path, x_train=_gaussian(4096, 0), x_test=_gaussian(1000, 1))
  spec = config_lib.resolve(_continuous_config(path))
  training.train_and_evaluate(spec, tmp_path / "w")
  records = logging_utils.read_metrics(tmp_path / "w")
  final = [r for r in records if "eval/bpd" in r][-1]
  assert "density" in final["eval/bpd_meaning"]
  # nats per example: a bound on the entropy of the data, and not far above it after training.
  bound = final["eval/bpd"] * 2 * math.log(2)
  se = final["eval/bpd_se"] * 2 * math.log(2)
  entropy = float(np.sum(0.5 * np.log(2 * math.pi * math.e * S ** 2)))
  assert entropy - 4 * se < bound < entropy + 1.0, (bound, se, entropy)
  samples = np.load(tmp_path / "w" / "samples" / "step_300.npy")
  assert samples.shape == (16, 2) and samples.dtype == np.float32
  assert np.all(np.isfinite(samples)) and np.all(np.abs(samples - M) < 6 * S)


def test_config_says_which_data_model_a_dataset_needs(tmp_path):
  path = tmp_path / "gauss.npz"
  np.savez(path, x_train=_gaussian(64, 0), x_test=_gaussian(16, 1))
  c = _continuous_config(path)
  c.model.data = "discrete"
  with pytest.raises(ValueError, match=r"config.model.data='discrete' takes integer data, but "
                     r"dataset .* serves float32: set config.model.data = 'continuous'"):
    config_lib.resolve(c)
  c = tiny_config()
  c.model.data = "continuous"
  with pytest.raises(ValueError, match=r"serves uint8: set config.model.data = 'discrete'"):
    config_lib.resolve(c)
  c = _continuous_config(path)
  c.model.network = "unet"
  with pytest.raises(ValueError, match=r"this network takes images; for data of other shapes "
                     r"use nets.MLPScoreNet"):
    training.train_and_evaluate(config_lib.resolve(c), tmp_path / "w")
