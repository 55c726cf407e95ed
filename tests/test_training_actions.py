"""Eval and sample of given parameters, as the loop and the checkpoint modes run them."""
import jax
import numpy as np
import pytest

from helpers_train import tiny_model_and_params
from vdm_jax import data, evaluation, parallel, sampling, training
from vdm_jax.training import actions


@pytest.fixture(scope="module")
def setup():
  return tiny_model_and_params(**{"model.num_classes": 10, "eval.batch_size": 512})


def test_evaluate_params_is_evaluate_on_the_test_split(setup):
  spec, model, params = setup
  mesh = parallel.make_mesh()
  test_split = data.load_arrays("fashion_mnist", "test")
  key = actions.eval_key(spec.training.seed)
  out = training.evaluate_params(model, params, spec.eval, test_split, mesh, key)
  assert out["eval/num_images"] == 512      # max_batches=1 of batch 512
  # The split's first batch through the library evaluator gives the same numbers.
  first = evaluation.evaluate(model, {"params": params},
                              [next(data.get_dataset("fashion_mnist", "test", 512))], key,
                              put_batch=lambda b: parallel.shard_batch(b, mesh))
  np.testing.assert_allclose(out["eval/bpd"], first["bpd"], rtol=1e-6)
  np.testing.assert_allclose(out["eval/bpd_se"], first["bpd_se"], rtol=1e-6)
  assert out["eval/seconds"] > 0


def test_sample_params_cycles_labels_and_repeats_for_a_key(setup):
  spec, model, params = setup
  key = actions.sample_key(spec.training.seed)
  images = training.sample_params(model, params, spec.sampling, key, num_samples=12)
  assert images.shape == (12, 28, 28, 1) and images.dtype == np.int32
  assert images.min() >= 0 and images.max() < 256
  np.testing.assert_array_equal(training.sample_params(model, params, spec.sampling, key, 12),
                                images)
  expected = sampling.sample_model(model, {"params": params}, key, 12, T=spec.sampling.T,
                                   labels=np.arange(12) % 10)
  np.testing.assert_array_equal(images, np.asarray(expected))
  np.testing.assert_array_equal(np.asarray(actions.sample_labels(model, 12)), np.arange(12) % 10)
  assert actions.sample_labels(model.clone(num_classes=0, network=model.network.clone(
      num_classes=0)), 3) is None


def test_run_keys_are_fixed_and_distinct():
  assert np.array_equal(actions.eval_key(3), actions.eval_key(3))
  assert not np.array_equal(actions.eval_key(3), actions.sample_key(3))
  assert not np.array_equal(actions.eval_key(3), actions.eval_key(4))
  assert jax.random.key_data(actions.eval_key(0)).shape == (2,)
