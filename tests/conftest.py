"""Test setup: eight forced CPU devices so sharding is exercised on any machine, compiled for
speed of compiling; no downloads."""
import os
import shutil
import tempfile
from pathlib import Path

# Must be set before jax initialises its backends. The tests' programs are tiny, so their time
# goes to compiling them: LLVM without optimisation (-O0; XLA's own graph optimisations still run)
# takes a third off the suite on a 2-core CPU. The numbers agree to float32 rounding (the pinned
# samples of tests/test_sampling.py are even bit-identical); subprocesses inherit the setting.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import helpers_data  # noqa: E402  (after the flags: it imports jax)


_SESSION_ENV = {}          # the variables sessionstart replaced, to restore at the end
_SESSION_CACHE = []        # the session's download cache, removed at the end


def pytest_sessionstart(session):
  """Tests never download and never see the user's download cache: offline, with a cache of
  their own holding only the published Fashion-MNIST files (tests/helpers_data.py; found under
  the environment pytest started with, before these settings).

  Set in os.environ, so the processes the tests start inherit it; tests of downloads unset
  VDM_DATA_OFFLINE themselves (tests/test_data_download.py).
  """
  del session
  cache = Path(tempfile.mkdtemp(prefix="vdm_data_cache_"))
  _SESSION_CACHE.append(cache)
  helpers_data.install_fashion_mnist(cache)
  # The user's mirror and system-folder switch are spent once the data is found; the tests
  # set their own.
  for name, value in (("VDM_DATA_OFFLINE", "1"), ("VDM_DATA_CACHE", str(cache)),
                      ("VDM_DATA_MIRROR", None), ("VDM_DATA_NO_SYSTEM_DIRS", None)):
    _SESSION_ENV[name] = os.environ.get(name)
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  for name, value in _SESSION_ENV.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value
  for cache in _SESSION_CACHE:
    shutil.rmtree(cache, ignore_errors=True)


def pytest_report_header(config):
  del config
  return f"Fashion-MNIST: {helpers_data.ORIGIN}"
