"""Sampling in chunks over every device: coverage, resumption, the same samples on any mesh."""
import dataclasses
import re

import jax
import numpy as np
import pytest

from helpers_train import tiny_model_and_params
from vdm_jax import parallel
from vdm_jax.training import sample_shards


@pytest.fixture(scope="module")
def setup():
  spec, model, params = tiny_model_and_params(**{"model.num_classes": 10, "sampling.T": 2})
  return spec, model, {"params": params}


def test_shards_cover_every_sample_once_and_resume(setup, tmp_path):
  spec, model, variables = setup
  mesh, key = parallel.make_mesh(), jax.random.PRNGKey(1)
  out = sample_shards.write_shards(model, variables, spec.sampling, key, mesh, tmp_path, 20,
                                   per_device_batch=1, grid_path=tmp_path / "grid.png")
  assert (out["chunks"], out["written"], out["skipped"]) == (3, 3, 0)   # 8 + 8 + 4 samples
  merged = sample_shards.read_shards(tmp_path)
  np.testing.assert_array_equal(merged["index"], np.arange(20))
  np.testing.assert_array_equal(merged["labels"], np.arange(20) % 10)
  assert merged["images"].shape == (20, 28, 28, 1) and merged["images"].dtype == np.uint8
  assert (tmp_path / "grid.png").exists()
  # A lost shard is drawn again, the others are skipped, the result is the same.
  sample_shards.shard_path(tmp_path, 1, 0).unlink()
  again = sample_shards.write_shards(model, variables, spec.sampling, key, mesh, tmp_path, 20,
                                     per_device_batch=1)
  assert (again["written"], again["skipped"]) == (1, 2)
  for k, v in sample_shards.read_shards(tmp_path).items():
    np.testing.assert_array_equal(v, merged[k])
  # Other settings (guidance weight, key, chunk size) would mix two distributions: refused
  # before anything is drawn, and nothing on disk changes.
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  other = dataclasses.replace(spec.sampling, guidance_weight=2.0)
  for args, kwargs, what in [((other, key), {}, "guidance_weight: 0.0 there, 2.0 now"),
                             ((spec.sampling, jax.random.PRNGKey(3)), {}, "key: "),
                             ((spec.sampling, key), {"per_device_batch": 2}, "chunk_size: 8")]:
    with pytest.raises(ValueError, match=re.escape(what)):
      sample_shards.write_shards(model, variables, *args, mesh, tmp_path, 20,
                                 **{"per_device_batch": 1, **kwargs})
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_the_same_samples_on_one_device_and_on_eight(setup):
  spec, model, variables = setup
  key = jax.random.PRNGKey(2)
  one = list(sample_shards.generate(model, variables, spec.sampling, key,
                                    parallel.make_mesh(jax.devices()[:1]), 16,
                                    per_device_batch=8))
  eight = list(sample_shards.generate(model, variables, spec.sampling, key,
                                      parallel.make_mesh(), 16, per_device_batch=1))
  assert [c.chunk for c in one] == [c.chunk for c in eight] == [0, 1]
  for a, b in zip(one, eight):
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.images, b.images)
