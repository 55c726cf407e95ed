"""Test setup: eight forced CPU devices so sharding is exercised on any machine; no downloads."""
import os

import pytest

# Must be set before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(autouse=True, scope="session")
def _no_downloads(tmp_path_factory):
  """Tests never download and never see the user's download cache: offline, with an empty cache.

  Set in os.environ, so the processes the tests start inherit it; tests of downloads unset
  VDM_DATA_OFFLINE themselves (tests/test_data_download.py).
  """
  patch = pytest.MonkeyPatch()
  patch.setenv("VDM_DATA_OFFLINE", "1")
  patch.setenv("VDM_DATA_CACHE", str(tmp_path_factory.mktemp("vdm_data_cache")))
  yield
  patch.undo()
