"""benchmarks/official_bench.py's import of a user's official checkout: stand-ins for the
modules only its data pipeline and logging use, and a clear refusal of a wrong folder. (The
timing itself needs the official code, which is not part of this repository.)"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import official_bench  # noqa: E402


def test_stand_ins_import_read_and_subclass_but_raise_when_used(monkeypatch):
  name = "vdm_test_not_installed.sub"
  monkeypatch.setattr(official_bench, "STAND_IN_MODULES", ("vdm_test_not_installed", name))
  for m in ("vdm_test_not_installed", name):
    monkeypatch.delitem(sys.modules, m, raising=False)
  assert official_bench.install_stand_ins() == ["vdm_test_not_installed", name]
  import vdm_test_not_installed.sub as sub   # noqa: F401  (importable: what a top import needs)
  from vdm_test_not_installed.sub import Writer
  constant = sys.modules["vdm_test_not_installed"].data.experimental.AUTOTUNE   # module level
  assert constant.__qualname__ == "vdm_test_not_installed.data.experimental.AUTOTUNE"

  class Mine(Writer):           # the official utils subclass clu's writers at import
    pass
  with pytest.raises(RuntimeError, match="is a stand-in"):
    Mine()
  with pytest.raises(RuntimeError, match="vdm_test_not_installed.sub.Writer is a stand-in"):
    Writer()
  # An installed module is left alone.
  monkeypatch.setattr(official_bench, "STAND_IN_MODULES", ("json",))
  assert official_bench.install_stand_ins() == []


def test_a_folder_without_the_official_code_is_refused(tmp_path):
  with pytest.raises(SystemExit, match="no experiment_vdm.py there"):
    official_bench.import_official(tmp_path)
