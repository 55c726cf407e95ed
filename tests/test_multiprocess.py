"""Several processes for real: 2 processes x 2 CPU devices against 1 process x 4 devices.

The 2-process run is `python -m experiments.train` twice, joined through
`--coordinator_address=127.0.0.1:<port> --num_processes=2 --process_id=<i>` (CPU collectives
over gloo), with one shared workdir; the reference trains the same tiny config here on a mesh of
4 devices, meanwhile. The global batch, each device's share of it and every key are the same,
so the results agree to float32 rounding (all-reduces sum in another order): train losses and
eval bpd within rtol 1e-5, parameters within rtol 1e-5 / atol 5e-6 (Adam divides by the
gradients' scale, so a near-zero gradient can move by more than its own rounding), image
counts, sample ids and sampled images exactly.

Killed and restarted: both processes of a 2 x 2 run get SIGKILL after a checkpoint, and the same
two commands, started again, finish with parameters, optimizer state and EMA bit-identical to
the uninterrupted 2 x 2 run, and one metrics history.
"""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers_train import wait_for_checkpoint, write_config_file
from vdm_jax import config as config_lib, logging_utils, parallel, training
from vdm_jax.training import sample_shards

REPO = Path(__file__).resolve().parents[1]
NUM_STEPS, CKPT_EVERY = 24, 4



def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(config, workdir, num_processes, devices_per_process, *args):
  """Starts the processes of one run; returns them (Popen, stdout/stderr captured)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  env.pop("VDM_DATA_DIR", None)
  port = free_port()
  procs = []
  for i in range(num_processes):
    dist = ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
             f"--process_id={i}", "--distributed_timeout_s=120"] if num_processes > 1 else [])
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "experiments.train", f"--config={config}",
         f"--workdir={workdir}", *dist, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  return procs


def finish(procs, timeout=600):
  outs = [p.communicate(timeout=timeout) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, f"exit {p.returncode}\n{err[-4000:]}"
  return outs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multiprocess")
  config = write_config_file(
      root / "tiny.py", **{"training.num_steps": NUM_STEPS,
                           "training.checkpoint_every": CKPT_EVERY, "training.log_every": 1,
                           "eval.max_batches": 2, "sampling.T": 2, "sampling.num_samples": 10,
                           "sampling.per_device_batch": 2})
  one, two = root / "one", root / "two"
  procs = launch(config, two, 2, 2)
  spec, mesh = _spec(config), parallel.make_mesh(jax.devices()[:4])
  training.train_and_evaluate(spec, one, mesh=mesh)            # while the 2 processes run
  finish(procs)
  procs = launch(config, two, 2, 2, "--mode=sample")
  training.sample_checkpoint(spec, one, mesh=mesh)
  outs = finish(procs)
  return config, one, two, outs


def _spec(config):
  import importlib.util
  module_spec = importlib.util.spec_from_file_location("tiny_multiprocess_config", config)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return config_lib.resolve(module.get_config())


@pytest.mark.heavy
def test_two_processes_train_and_evaluate_as_one(runs):
  config, one, two, _ = runs
  m1, m2 = logging_utils.read_metrics(one), logging_utils.read_metrics(two)
  loss1 = [r["train/loss"] for r in m1 if "train/loss" in r]
  loss2 = [r["train/loss"] for r in m2 if "train/loss" in r]
  assert len(loss1) == len(loss2) == NUM_STEPS
  np.testing.assert_allclose(loss2, loss1, rtol=1e-5)
  [e1], [e2] = [r for r in m1 if "eval/bpd" in r], [r for r in m2 if "eval/bpd" in r]
  assert e1["eval/num_images"] == e2["eval/num_images"] == 4000
  np.testing.assert_allclose(e2["eval/bpd"], e1["eval/bpd"], rtol=1e-5)
  np.testing.assert_allclose(e2["eval/bpd_se"], e1["eval/bpd_se"], rtol=1e-4)
  starts = [r for r in m2 if r.get("event") == "start"]
  assert len(starts) == 1 and starts[0]["num_devices"] == 4   # written once, by process 0
  spec = _spec(config)
  _, s1, _ = training.restore_state(spec, one)
  _, s2, _ = training.restore_state(spec, two)
  for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s2.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=5e-6)


@pytest.mark.heavy
def test_two_processes_sample_the_same_images_in_shards(runs):
  _, one, two, outs = runs
  s1 = sample_shards.read_shards(one / f"samples_step_{NUM_STEPS}")
  s2 = sample_shards.read_shards(two / f"samples_step_{NUM_STEPS}")
  np.testing.assert_array_equal(s2["index"], np.arange(10))     # each sample exactly once
  np.testing.assert_array_equal(s1["index"], s2["index"])
  np.testing.assert_array_equal(s1["images"], s2["images"])
  # Each process wrote its own rows of each chunk: 2 chunks of 8 (the last cut to 2).
  written = sorted(p.name for p in (two / f"samples_step_{NUM_STEPS}").glob("*.npz"))
  assert len(written) == 4 and sum("process_1" in n for n in written) == 2
  assert (two / f"samples_step_{NUM_STEPS}.png").exists()


@pytest.mark.heavy
def test_both_processes_killed_then_restarted_resume_exactly(runs, tmp_path):
  config, _, two, _ = runs
  procs = launch(config, tmp_path, 2, 2)
  killed_at = wait_for_checkpoint(procs, tmp_path, 2 * CKPT_EVERY)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  for p in procs:
    p.communicate()
  assert killed_at < NUM_STEPS
  finish(launch(config, tmp_path, 2, 2))                     # the same two commands again
  spec = _spec(config)
  _, resumed, _ = training.restore_state(spec, tmp_path)
  _, reference, _ = training.restore_state(spec, two)
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(resumed)),
                  jax.tree_util.tree_leaves(jax.device_get(reference)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  records = logging_utils.read_metrics(tmp_path)
  assert [r["step"] for r in records if "train/loss" in r] == list(range(1, NUM_STEPS + 1))
  assert [r["step"] for r in records if "eval/bpd" in r] == [NUM_STEPS]
  ref = {r["step"]: r["train/loss"] for r in logging_utils.read_metrics(two) if "train/loss" in r}
  assert {r["step"]: r["train/loss"] for r in records if "train/loss" in r} == ref
