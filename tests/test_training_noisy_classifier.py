"""A noisy classifier trained by the training system (its objective, eval by t-bin, resume), its
config checks, and classifier guidance of a diffusion run from the config (`guidance.guide`)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers_train import (assert_same_saved_states, restore_saved_state, straight_and_resumed,
                           tiny_config)
from vdm_jax import config as config_lib, data, logging_utils, parallel
from vdm_jax import noisy_classifier as nc
from vdm_jax import training
from vdm_jax.training import guidance, objectives

CLASSIFIER = {"model.network": "noisy_classifier", "model.num_classes": 10,
              "model.schedule": "fixed_linear",
              "model.noisy_classifier": dict(ch=8, ch_mult=(1, 2), num_res_blocks=1,
                                             dropout=0.0)}


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv("VDM_DATA_DIR", raising=False)


def _classifier_spec(**overrides):
  return config_lib.resolve(tiny_config(**{**CLASSIFIER, **overrides}))


@pytest.fixture(scope="module")
def classifier_runs(tmp_path_factory):
  """A 4-step classifier run straight, and one stopped at step 2 and resumed."""
  return straight_and_resumed(_classifier_spec, tmp_path_factory.mktemp("clf"),
                              **{"training.checkpoint_every": 2, "training.sample_every": 1})


@pytest.mark.heavy   # a whole run end to end: minutes on 2 CPU cores
def test_the_loop_trains_the_classifier_and_resume_is_bit_exact(classifier_runs):
  spec, straight, resumed, last = classifier_runs
  assert objectives.of(spec.model.build()) is objectives.NOISY_CLASSIFIER
  assert_same_saved_states(straight, resumed, spec, (2, 4))
  b = restore_saved_state(resumed, spec, 4)
  init = training.create_state(spec.model.build(), training.make_optimizer(spec.optimizer, 4),
                               0, parallel.make_mesh())
  moved = [float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(
      jax.tree_util.tree_leaves(b.params), jax.tree_util.tree_leaves(init.params))]
  assert max(moved) > 1e-4
  records = logging_utils.read_metrics(resumed)
  assert [r["step"] for r in records if "train/accuracy" in r] == [1, 2, 3, 4]
  assert all(0 <= r["train/accuracy"] <= 1 and r["train/loss"] > 0 for r in records
             if "train/loss" in r)
  # Its eval is by t-bin; a classifier is not sampled (sample_every is ignored).
  assert [r["step"] for r in records if "eval/accuracy" in r] == [2, 4]
  assert last["eval/num_images"] == 2000 and "eval/accuracy_bin9" in last
  assert not (resumed / "samples").exists()


def test_eval_by_t_bin_matches_the_closed_form_of_a_constant_classifier():
  # With the head's kernel and bias zero, the logits are 0 for every z_t: the cross-entropy is
  # log K in every bin and the argmax is class 0, so the accuracy is the share of label 0.
  spec = _classifier_spec()
  model = spec.model.build()
  params = training.create_state(model, training.make_optimizer(spec.optimizer, 2), 0,
                                 parallel.make_mesh()).params
  params = jax.tree_util.tree_map(np.asarray, params)
  head = params["classifier"]["head"]
  params["classifier"]["head"] = jax.tree_util.tree_map(np.zeros_like, head)
  images, labels = data.load_arrays("fashion_mnist", "test")
  split = (images[:300], labels[:300])
  result = objectives.evaluate_classifier(model, params, spec.eval, split, parallel.make_mesh(),
                                          jax.random.PRNGKey(0))
  assert result["eval/num_images"] == 300
  for j in range(objectives.NUM_T_BINS):
    np.testing.assert_allclose(result[f"eval/loss_bin{j}"], np.log(10.0), rtol=1e-6)
    np.testing.assert_allclose(result[f"eval/accuracy_bin{j}"], np.mean(split[1] == 0))


@pytest.mark.parametrize("overrides,message", [
    ({"model.schedule": "learned_linear"}, "fixed schedule"),
    ({"model.label_dropout": 0.1}, "label_dropout"),
    ({"model.T": 10}, "config.model.T"),
    ({"model.num_classes": 0}, "num_classes"),
    ({"sample_eval.every_steps": 5}, "not sampled"),
    ({"sampling.classifier_workdir": "/tmp/x"}, "not sampled"),
])
def test_bad_classifier_configs_are_refused(overrides, message):
  with pytest.raises(ValueError, match=message):
    _classifier_spec(**overrides)


def test_a_scale_without_a_classifier_is_refused():
  with pytest.raises(ValueError, match="classifier_workdir"):
    config_lib.resolve(tiny_config(**{"sampling.classifier_scale": 2.0}))
  with pytest.raises(ValueError, match="classifier_scale"):
    config_lib.resolve(tiny_config(**{"sample_eval.classifier_scale": -1.0,
                                      "sample_eval.classifier_workdir": "/tmp/x"}))


def _guided_pair():
  spec = config_lib.resolve(tiny_config())
  diffusion = spec.model.build()
  d_params = training.create_state(diffusion, training.make_optimizer(spec.optimizer, 2), 0,
                                   parallel.make_mesh()).params
  cspec = _classifier_spec()
  classifier = cspec.model.build()
  c_params = training.create_state(classifier, training.make_optimizer(cspec.optimizer, 2), 1,
                                   parallel.make_mesh()).params
  return diffusion, d_params, classifier, c_params


def test_the_guided_model_subtracts_scale_sigma_grad_log_p_and_leaves_null_rows_alone():
  diffusion, d_params, classifier, c_params = _guided_pair()
  z = jax.random.normal(jax.random.PRNGKey(3), (4, 28, 28, 1))
  gamma = jnp.array([-8.0, -2.0, 1.0, 4.0])
  labels = jnp.array([0, 3, 10, 7])   # 10: the null label, unguided
  variables = {"params": {"diffusion": d_params, "classifier": c_params}}
  base = jax.jit(functools.partial(diffusion.apply, method=diffusion.eps))(
      {"params": d_params}, z, gamma)

  def log_p(x):
    return jnp.sum(classifier.apply({"params": c_params}, x, gamma, jnp.array([0, 3, 0, 7]),
                                    method=classifier.log_prob) * jnp.array([1., 1., 0., 1.]))

  sigma = jnp.sqrt(jax.nn.sigmoid(gamma))[:, None, None, None]
  grad = jax.jit(jax.grad(log_p))(z)
  for scale in (0.0, 2.5):
    guided = nc.ClassifierGuided(diffusion=diffusion, classifier=classifier, scale=scale)
    out = jax.jit(functools.partial(guided.apply, method=guided.eps))(variables, z, gamma,
                                                                        labels)
    np.testing.assert_allclose(out, base - scale * sigma * grad, atol=2e-5)
    np.testing.assert_array_equal(out[2], base[2])


def test_guidance_of_mismatched_models_is_refused():
  diffusion, _, classifier, _ = _guided_pair()
  with pytest.raises(ValueError, match="scale"):
    nc.ClassifierGuided(diffusion=diffusion, classifier=classifier, scale=-1.0)
  other = classifier.clone(image_shape=(14, 14, 1))
  with pytest.raises(ValueError, match="shape"):
    nc.ClassifierGuided(diffusion=diffusion, classifier=other, scale=1.0)
  conditional = diffusion.clone(num_classes=5, network=diffusion.network.clone(num_classes=5))
  with pytest.raises(ValueError, match="classes"):
    nc.ClassifierGuided(diffusion=conditional, classifier=classifier, scale=1.0)


@pytest.mark.heavy   # a whole run end to end: minutes on 2 CPU cores
def test_sample_mode_guided_by_a_classifier_run(classifier_runs, tmp_path):
  _, _, clf_workdir, _ = classifier_runs
  spec = config_lib.resolve(tiny_config(**{"training.checkpoint_every": 2}))
  training.train_and_evaluate(spec, tmp_path)
  guided_spec = config_lib.resolve(tiny_config(**{
      "sampling.classifier_workdir": str(clf_workdir), "sampling.classifier_scale": 3.0,
      "sampling.per_device_batch": 20}))
  out = training.sample_checkpoint(guided_spec, tmp_path, num_samples=20)
  assert out["dir"].endswith("samples_step_2_cg3")
  shards = training.sample_shards.read_shards(out["dir"])
  np.testing.assert_array_equal(shards["labels"], np.arange(20) % 10)
  from PIL import Image
  grid = np.asarray(Image.open(out["png"]))
  assert grid.shape[1] > grid.shape[0]      # 2 rows of 10 classes, one class per column
  # What was sampled: the diffusion model guided by the classifier run at the config's scale.
  model, params = guidance.guide(guided_spec.sampling, spec.model.build(),
                                 training.restore_state(spec, tmp_path)[1].ema_params)
  assert isinstance(model, nc.ClassifierGuided) and model.scale == 3.0
  # A diffusion run is no classifier.
  wrong = config_lib.resolve(tiny_config(**{"sampling.classifier_workdir": str(tmp_path),
                                            "sampling.classifier_scale": 1.0}))
  with pytest.raises(ValueError, match="not a noisy classifier"):
    training.sample_checkpoint(wrong, tmp_path, num_samples=4)
