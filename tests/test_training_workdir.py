"""The workdir lock and the resume checks."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers_train import tiny_config
from vdm_jax import config as config_lib
from vdm_jax.training import workdir as workdir_lib


def test_a_second_holder_fails_at_once_naming_the_first(tmp_path):
  with workdir_lib.WorkdirLock(tmp_path):
    holder = json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"]
    start = time.perf_counter()
    with pytest.raises(workdir_lib.WorkdirInUseError,
                       match=rf"is in use by another run \(.*\"pid\": {os.getpid()}.*\); wait"):
      workdir_lib.WorkdirLock(tmp_path).acquire()
    assert time.perf_counter() - start < 1.0
  with workdir_lib.WorkdirLock(tmp_path):   # released: free again
    pass


def test_a_lock_left_by_a_killed_process_is_recovered(tmp_path):
  code = ("import sys, time; sys.path.insert(0, sys.argv[2]);"
          "from vdm_jax.training.workdir import WorkdirLock;"
          "WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path),
                           str(__import__("pathlib").Path(__file__).parents[1])],
                          stdout=subprocess.PIPE, text=True, env=env)
  try:
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_lib.WorkdirInUseError, match=rf"\"pid\": {proc.pid}"):
      workdir_lib.WorkdirLock(tmp_path).acquire()
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  lock = workdir_lib.WorkdirLock(tmp_path)
  lock.acquire()     # the kernel released the dead holder's lock; its file is still there
  assert json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())["pid"] == os.getpid()
  lock.release()


def test_resume_checks_compare_dataset_seed_and_image_shape(tmp_path):
  spec = config_lib.resolve(tiny_config())
  meta = workdir_lib.checkpoint_meta(spec)
  assert workdir_lib.check_resume(spec, meta, 4, tmp_path) == []
  other = dict(meta, seed=7, dataset="mnist")
  with pytest.raises(workdir_lib.CheckpointMismatchError,
                     match=r"step 4 .* other settings \(dataset: checkpoint 'mnist', config "
                     r"'fashion_mnist'; seed: checkpoint 7, config 0\).*--allow_config_change"):
    workdir_lib.check_resume(spec, other, 4, tmp_path)
  assert len(workdir_lib.check_resume(spec, other, 4, tmp_path, allow_changes=True)) == 2
  # Another global batch only changes the data order: allowed.
  assert workdir_lib.check_resume(spec, dict(meta, global_batch_size=64), 4, tmp_path) == []


def test_config_is_replaced_atomically_and_read_back(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"config.json: .* is not the folder of a training "
                     r"run .*--config=<file>"):
    workdir_lib.read_config(tmp_path)
  spec = config_lib.resolve(tiny_config())
  workdir_lib.write_config(spec, tmp_path)
  assert config_lib.resolve(workdir_lib.read_config(tmp_path)) == spec
  assert not (tmp_path / "config.json.tmp").exists()
