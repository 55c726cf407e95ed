"""Eval and sample modes read a checkpoint and give what the run itself would."""
import json

import jax
import numpy as np
import pytest

from helpers_train import tiny_config
from vdm_jax import checkpoint, config as config_lib, data, parallel, training
from vdm_jax.training import actions, sample_shards


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir with one checkpoint (step 0) of a fresh tiny model."""
  spec = config_lib.resolve(tiny_config(**{"sampling.per_device_batch": 1,
                                           "eval.batch_size": 512}))
  path = tmp_path_factory.mktemp("modes")
  state = training.create_state(spec.model.build(), training.make_optimizer(spec.optimizer, 2),
                                0, parallel.make_mesh())
  ckpt = checkpoint.Checkpointer(path / "checkpoints")
  ckpt.save(0, state)
  ckpt.close()
  return spec, path, state


def test_evaluate_checkpoint_equals_evaluating_its_ema_params(workdir):
  spec, path, state = workdir
  record = training.evaluate_checkpoint(spec, path)
  mesh = parallel.make_mesh()
  expected = training.evaluate_params(spec.model.build(), state.ema_params, spec.eval,
                                      data.load_arrays("fashion_mnist", "test"), mesh,
                                      actions.eval_key(spec.training.seed))
  assert record["step"] == 0 and record["mode"] == "eval"
  np.testing.assert_allclose(record["eval/bpd"], expected["eval/bpd"], rtol=1e-6)
  saved = json.loads((path / "eval_step_0.json").read_text())
  assert saved["eval/bpd"] == record["eval/bpd"]


def test_sample_checkpoint_writes_shards_and_a_grid(workdir):
  spec, path, state = workdir
  out = training.sample_checkpoint(spec, path, num_samples=3, seed=5)
  assert (out["num_samples"], out["written"], out["skipped"]) == (3, 1, 0)
  merged = sample_shards.read_shards(out["dir"])
  np.testing.assert_array_equal(merged["index"], [0, 1, 2])
  assert merged["images"].shape == (3, 28, 28, 1) and merged["images"].dtype == np.uint8
  # The first chunk is the sample of its key, drawn whole.
  chunk_size = spec.sampling.per_device_batch * jax.device_count()
  expected = training.sample_params(spec.model.build(), state.ema_params,
                                    spec.sampling, jax.random.fold_in(jax.random.PRNGKey(5), 0),
                                    chunk_size)
  np.testing.assert_array_equal(merged["images"], expected[:3])
  assert (path / "samples_step_0.png").exists()
  again = training.sample_checkpoint(spec, path, num_samples=3, seed=5)
  assert (again["written"], again["skipped"]) == (0, 1)


def test_no_checkpoint_says_what_to_do(tmp_path):
  spec = config_lib.resolve(tiny_config())
  with pytest.raises(FileNotFoundError, match=r"No checkpoint in .*: train first"):
    training.evaluate_checkpoint(spec, tmp_path)


def test_eval_and_sample_move_nothing_and_say_when_no_step_is_usable(workdir, tmp_path):
  spec, path, _ = workdir
  import shutil
  damaged = tmp_path / "damaged"
  shutil.copytree(path, damaged)
  (damaged / "checkpoints" / "0" / checkpoint.COMMIT_MARKER).unlink()
  meta_file = damaged / "checkpoints" / "0" / checkpoint.STEP_METADATA
  meta_file.write_text(json.dumps(dict(json.loads(meta_file.read_text()),
                                       commit_timestamp_nsecs=None)))
  for mode in (training.evaluate_checkpoint, training.sample_checkpoint):
    with pytest.raises(checkpoint.NoUsableCheckpointError,
                       match=r"none of them restores \(step 0: incomplete"):
      mode(spec, damaged)
    assert (damaged / "checkpoints" / "0").is_dir()
  assert not (damaged / "checkpoints.incomplete").exists()
