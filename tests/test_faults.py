"""Faults injected into real runs: a second run, kill -9, SIGTERM, changed settings, bad data.

The runs are `python -m experiments.train` processes on a tiny config (60 steps, a checkpoint
every 5, one CPU device), restarted with the same command. "Bit-identical" compares every leaf
of the final train state exactly.
"""
import dataclasses
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers_data import fashion_mnist_dir
from helpers_train import wait_for_checkpoint, write_config_file
from vdm_jax import checkpoint, config as config_lib, data, logging_utils, parallel, training
from vdm_jax.training import workdir as workdir_lib

REPO = Path(__file__).resolve().parents[1]
NUM_STEPS, CKPT_EVERY, LOG_EVERY = 60, 5, 5



@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv("VDM_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
  return write_config_file(
      tmp_path_factory.mktemp("faults") / "tiny.py",
      **{"training.num_steps": NUM_STEPS, "training.log_every": LOG_EVERY,
         "training.checkpoint_every": CKPT_EVERY, "sampling.T": 2, "sampling.num_samples": 2})


def resolve(config_file, **overrides):
  spec = importlib.util.spec_from_file_location("tiny_fault_config", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in overrides.items():
    group, name = key.split(".", 1)
    config[group][name] = value
  return config_lib.resolve(config)


def start(config_file, workdir) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env.pop("VDM_DATA_DIR", None)
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.train", f"--config={config_file}",
       f"--workdir={workdir}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def run(config_file, workdir) -> str:
  """The same command to the end; returns its stdout."""
  proc = start(config_file, workdir)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return out


def one_device():
  return parallel.make_mesh(jax.devices()[:1])


def train(spec, workdir):
  return training.train_and_evaluate(spec, workdir, mesh=one_device())


def final_state(spec, workdir):
  model, state, step = training.restore_state(spec, workdir, mesh=one_device())
  assert step == NUM_STEPS
  return jax.device_get(state)


def assert_bit_identical(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_one_history(workdir):
  records = logging_utils.read_metrics(workdir)
  train = [r["step"] for r in records if "train/bpd" in r]
  assert train == list(range(LOG_EVERY, NUM_STEPS + 1, LOG_EVERY)), train
  assert [r["step"] for r in records if "eval/bpd" in r] == [NUM_STEPS]


@pytest.fixture(scope="module")
def reference(config_file, tmp_path_factory):
  """An uninterrupted run; while it runs, a second run on its workdir is refused."""
  workdir = tmp_path_factory.mktemp("reference")
  proc = start(config_file, workdir)
  wait_for_checkpoint([proc], workdir, CKPT_EVERY)
  spec = resolve(config_file)
  t0 = time.perf_counter()
  with pytest.raises(workdir_lib.WorkdirInUseError,
                     match=rf"is in use by another run \(.*\"pid\": {proc.pid}"):
    train(spec, workdir)
  refused_after = time.perf_counter() - t0
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return spec, workdir, refused_after


@pytest.mark.heavy
def test_second_run_is_refused_and_the_first_finishes_unharmed(reference):
  spec, workdir, refused_after = reference
  assert refused_after < 10.0
  assert_one_history(workdir)
  assert final_state(spec, workdir) is not None


@pytest.mark.heavy
def test_sigterm_then_kill_9_then_restart_is_bit_identical_with_one_history(
    config_file, reference, tmp_path):
  spec, ref_dir, _ = reference
  # SIGTERM: a checkpoint of the step reached, exit 0.
  proc = start(config_file, tmp_path)
  wait_for_checkpoint([proc], tmp_path, 3 * CKPT_EVERY)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  [event] = [r for r in logging_utils.read_metrics(tmp_path) if r.get("event") == "preempted"]
  assert f"step {event['step']}: stopped by SIGTERM" in out
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
  assert ckpt.latest_step() == event["step"] < NUM_STEPS
  ckpt.close()
  # The same command resumes; kill -9 it a few checkpoints later.
  proc = start(config_file, tmp_path)
  killed_at = wait_for_checkpoint([proc], tmp_path, event["step"] + 3 * CKPT_EVERY)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert killed_at < NUM_STEPS
  # ... and again: the dead run's lock does not block it.
  run(config_file, tmp_path)
  assert_bit_identical(final_state(spec, tmp_path), final_state(spec, ref_dir))
  assert_one_history(tmp_path)


@pytest.mark.heavy
def test_changed_settings_on_resume_fail_before_compute(config_file, reference, tmp_path):
  spec, ref_dir, _ = reference
  workdir = tmp_path / "w"
  shutil.copytree(ref_dir, workdir)
  saved_config = (workdir / "config.json").read_bytes()
  saved_metrics = (workdir / "metrics.jsonl").read_bytes()
  fashion = data.get_spec("fashion_mnist")
  data.register_dataset("fashion_mnist_copy", dataclasses.replace(fashion), overwrite=True)
  cases = [
      ({"training.seed": 1}, workdir_lib.CheckpointMismatchError, r"seed: checkpoint 0, config 1"),
      ({"data.name": "fashion_mnist_copy",
        "data.data_dir": str(fashion_mnist_dir())}, workdir_lib.CheckpointMismatchError,
       r"dataset: checkpoint 'fashion_mnist', config 'fashion_mnist_copy'"),
      ({"model.unet": dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                           dropout=0.0, with_fourier_features=False)},
       checkpoint.IncompatibleCheckpointError, r"another structure"),
  ]
  for overrides, error, message in cases:
    changed = resolve(config_file, **overrides)
    t0 = time.perf_counter()
    with pytest.raises(error, match=message):
      train(changed, workdir)
    assert time.perf_counter() - t0 < 30
    assert (workdir / "config.json").read_bytes() == saved_config
    assert (workdir / "metrics.jsonl").read_bytes() == saved_metrics


def test_bad_data_fails_before_the_first_step(config_file, tmp_path):
  # A test split cut short: found when the run starts, not after training.
  folder = tmp_path / "fashion_mnist"
  shutil.copytree(fashion_mnist_dir(), folder)
  images = folder / "t10k-images-idx3-ubyte.gz"
  import gzip
  images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-784]))
  spec = resolve(config_file, **{"data.data_dir": str(tmp_path)})
  t0 = time.perf_counter()
  with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: truncated"):
    train(spec, tmp_path / "w1")
  assert time.perf_counter() - t0 < 30 and not (tmp_path / "w1").exists()
  # 8-bit data with a model of 16 values: said as such, not as a divergence.
  spec = resolve(config_file, **{"model.vocab_size": 16})
  with pytest.raises(ValueError, match=r"config.model \(data='discrete', vocab_size=16\): the "
                     r"train data of 'fashion_mnist': data values must lie in \[0, 16\), found "
                     r"min 0 and max 255\. Quantise the data to vocab_size levels or set "
                     r"vocab_size to match it"):
    train(spec, tmp_path / "w2")
  assert not (tmp_path / "w2").exists()
