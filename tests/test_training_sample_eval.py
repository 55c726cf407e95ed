"""Sample quality in the training system: the streamed, sharded evaluation equals a one-shot
computation on the same samples, on any mesh; the reference statistics are cached under their
key; the loop logs the metrics; bad settings fail before anything is sampled."""
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers_train import tiny_config, tiny_model_and_params
from vdm_jax import config as config_lib
from vdm_jax import data, logging_utils, metrics, parallel, training
from vdm_jax.training import sample_eval, sample_shards

REPO = Path(__file__).resolve().parents[1]
# 20 samples: chunks of 8 + 8 + 4 on 8 devices with one image each, the last one cut short.
N = 20
SETTINGS = {"sample_eval.num_samples": N, "sample_eval.T": 2, "sample_eval.max_features": 16,
            "sample_eval.kid_subsets": 5, "sample_eval.kid_subset_size": 8,
            "sample_eval.per_device_batch": 1}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("feature_cache"))


@pytest.fixture(scope="module")
def test_images():
  return data.load_arrays("fashion_mnist", "test")[0]


def _setup(cache_dir, **overrides):
  return tiny_model_and_params(**{**SETTINGS, "sample_eval.cache_dir": cache_dir, **overrides})


@pytest.fixture(scope="module")
def conditional(cache_dir, test_images):
  spec, model, params = _setup(cache_dir, **{"model.num_classes": 10})
  return spec, model, params, sample_eval.SampleEvaluator(spec, model, test_images)


def test_streamed_sharded_metrics_equal_one_shot_metrics_of_the_same_samples(
    conditional, test_images, tmp_path):
  spec, model, params, evaluator = conditional
  mesh, key = parallel.make_mesh(), jax.random.PRNGKey(3)
  result = evaluator(model, params, mesh, key)

  # The same samples (same key and chunk size), written to disk and read back whole.
  sample_shards.write_shards(model, {"params": params}, spec.sample_eval.sampling(), key, mesh,
                             tmp_path, N, per_device_batch=1)
  shards = sample_shards.read_shards(tmp_path)
  net = metrics.load_feature_network("fashion_mnist")
  fake = np.asarray(net.feature_fn(shards["images"]))
  real = np.concatenate([np.asarray(net.feature_fn(test_images[i:i + 2500]))
                         for i in range(0, len(test_images), 2500)])
  s = spec.sample_eval
  fd = metrics.frechet_distance(metrics.feature_stats(real), metrics.feature_stats(fake))
  kept = fake[:s.max_features]                   # against as many reference rows
  kid = metrics.kernel_inception_distance(real[:len(kept)], kept, num_subsets=s.kid_subsets,
                                          subset_size=s.kid_subset_size)
  pr = metrics.precision_recall(real[:len(kept)], kept, k=s.pr_k)
  accuracy = np.mean(np.asarray(net.classify(shards["images"])) == np.arange(N) % 10)

  r = {k.split("/", 1)[1]: v for k, v in result.items()}
  np.testing.assert_allclose(r["fd"], fd, rtol=1e-6)
  np.testing.assert_allclose((r["kid"], r["kid_std"]), kid, rtol=1e-5, atol=1e-9)
  assert (r["precision"], r["recall"]) == pr
  assert r["accuracy"] == accuracy
  assert (r["num_samples"], r["num_features"], r["reference_count"]) == (N, 16, 10_000)
  assert r["feature_sha256"] == net.sha256 and r["sampler"] == "ddim"
  assert r["fd"] > 0 and r["images_per_s"] > 0


def test_the_same_numbers_on_one_device_and_on_eight(cache_dir, test_images):
  spec, model, params = _setup(cache_dir, **{"sample_eval.per_device_batch": 8,
                                             "sample_eval.num_samples": 12})
  evaluator = sample_eval.SampleEvaluator(spec, model, test_images)
  key = jax.random.PRNGKey(4)
  one = evaluator(model, params, parallel.make_mesh(jax.devices()[:1]), key)
  spec8, _, _ = _setup(cache_dir, **{"sample_eval.per_device_batch": 1,
                                     "sample_eval.num_samples": 12})
  eight = sample_eval.SampleEvaluator(spec8, model, test_images)(model, params,
                                                                  parallel.make_mesh(), key)
  for k in ("fd", "kid", "kid_std", "precision", "recall", "num_samples"):
    np.testing.assert_allclose(eight[f"sample_eval/{k}"], one[f"sample_eval/{k}"], rtol=1e-9)


def test_reference_statistics_are_cached_under_their_key(tmp_path, test_images, caplog):
  net = metrics.load_feature_network("fashion_mnist")
  images = test_images[:300]
  first = sample_eval.reference_stats(net, "fashion_mnist", "test", images, 50, tmp_path)
  files = list((tmp_path / "reference_stats").glob("*.npz"))
  assert len(files) == 1
  direct = metrics.feature_stats(np.asarray(net.feature_fn(images)))
  np.testing.assert_allclose(first[0].cov, direct.cov, rtol=1e-9, atol=1e-12)
  assert first[1].shape == (50, net.feature_dim)

  with caplog.at_level(logging.INFO, logger="vdm_jax"):
    again = sample_eval.reference_stats(net, "fashion_mnist", "test", images, 50, tmp_path)
  assert any("from" in r.getMessage() and str(files[0]) in r.getMessage()
             for r in caplog.records)
  np.testing.assert_array_equal(again[0].cov, first[0].cov)
  np.testing.assert_array_equal(again[1], first[1])

  # Other content, split or max_features: another file. A damaged file: recomputed.
  sample_eval.reference_stats(net, "fashion_mnist", "test", images[:299], 50, tmp_path)
  sample_eval.reference_stats(net, "fashion_mnist", "train", images, 50, tmp_path)
  sample_eval.reference_stats(net, "fashion_mnist", "test", images, 40, tmp_path)
  assert len(list((tmp_path / "reference_stats").glob("*.npz"))) == 4
  files[0].write_bytes(b"not an npz")
  with caplog.at_level(logging.WARNING, logger="vdm_jax"):
    redone = sample_eval.reference_stats(net, "fashion_mnist", "test", images, 50, tmp_path)
  assert any("recomputing" in r.getMessage() for r in caplog.records)
  np.testing.assert_array_equal(redone[0].mean, first[0].mean)


@pytest.mark.heavy   # a whole run end to end: minutes on 2 CPU cores
def test_the_training_loop_logs_sample_quality(cache_dir, tmp_path):
  spec = config_lib.resolve(tiny_config(**{
      **SETTINGS, "sample_eval.cache_dir": cache_dir, "sample_eval.every_steps": 1,
      "sample_eval.num_samples": 8, "sample_eval.max_features": 8}))
  training.train_and_evaluate(spec, tmp_path)
  records = [r for r in logging_utils.read_metrics(tmp_path) if "sample_eval/fd" in r]
  assert [r["step"] for r in records] == [1, 2]
  for r in records:
    assert np.isfinite(r["sample_eval/fd"]) and r["sample_eval/num_samples"] == 8
    assert 0 <= r["sample_eval/precision"] <= 1 and 0 <= r["sample_eval/recall"] <= 1
  # The mode on the checkpoint of the last step: the same key, so the same numbers.
  record = training.sample_eval_checkpoint(spec, tmp_path)
  assert record["sample_eval/fd"] == records[-1]["sample_eval/fd"]
  saved = json.loads((tmp_path / "sample_eval_step_2_ddim-2_n8.json").read_text())
  assert saved["sample_eval/kid"] == record["sample_eval/kid"]


@pytest.mark.parametrize("overrides, message", [
    ({"sample_eval.feature_weights": "/tmp/w.npz"}, "feature_sha256 go together"),
    ({"sample_eval.pr_k": 20}, "pr_k=20 needs more than 20 samples"),
    ({"sample_eval.feature_network": "inception"}, "feature_network must be one of"),
    ({"sample_eval.reference_split": "valid"}, "reference_split must be one of"),
    ({"sample_eval.T": 0}, "config.sample_eval.T must be an int >= 1"),
    ({"sample_eval.guidance_weight": 1.0}, "needs a class-conditional model"),
])
def test_bad_settings_are_refused_when_the_config_is_resolved(overrides, message):
  with pytest.raises(ValueError, match=message):
    config_lib.resolve(tiny_config(**{**SETTINGS, **overrides}))


def test_a_network_that_does_not_take_the_samples_is_refused_before_sampling(tmp_path):
  arrays = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
  data.register_arrays("sample_eval_vectors", arrays[:32], arrays[32:], overwrite=True)
  c = tiny_config(**SETTINGS, **{"sample_eval.cache_dir": str(tmp_path)})
  c.data.name = "sample_eval_vectors"
  c.model.update(network="mlp", image_shape=(3,), data="continuous")
  c.model.mlp = dict(hidden=8, num_layers=1, n_embd=8)
  spec = config_lib.resolve(c)
  with pytest.raises(ValueError, match="finds no shipped feature network"):
    sample_eval.SampleEvaluator(spec, spec.model.build())
  c.sample_eval.feature_network = "fashion_mnist"
  spec = config_lib.resolve(c)
  with pytest.raises(ValueError, match=r"takes .* of shape \(28, 28, 1\); this model's samples"):
    sample_eval.SampleEvaluator(spec, spec.model.build())
  assert not (tmp_path / "reference_stats").exists()


@pytest.mark.heavy
def test_two_processes_give_the_numbers_of_one(cache_dir, test_images, tmp_path):
  import helpers_sample_eval_process as worker
  spec, model, params = tiny_model_and_params(**worker.overrides(cache_dir, worker.PER_DEVICE))
  # One process, 4 of its devices: the same chunk size (4 x PER_DEVICE), so the same samples.
  one = sample_eval.SampleEvaluator(spec, model, test_images)(
      model, params, parallel.make_mesh(jax.devices()[:4]), jax.random.PRNGKey(worker.SEED))

  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  out = tmp_path / "result.json"
  procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "helpers_sample_eval_process.py"),
                             str(port), str(i), cache_dir, str(out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, f"exit {p.returncode}\n{err[-4000:]}"
  two = json.loads(out.read_text())
  assert two["sample_eval/num_samples"] == worker.NUM_SAMPLES
  assert two["sample_eval/num_features"] == 18
  for k in ("fd", "kid", "kid_std", "precision", "recall", "accuracy"):
    np.testing.assert_allclose(two[f"sample_eval/{k}"], one[f"sample_eval/{k}"], rtol=1e-9,
                               err_msg=k)
