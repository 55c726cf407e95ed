"""The notebooks run end to end (small settings via VDM_NOTEBOOK_FAST=1); their cells assert numbers."""
import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_are_stored_without_outputs():
  assert [p.name for p in NOTEBOOKS] == ["01_vdm_tour.ipynb", "02_train_and_sample.ipynb"]
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert not cell.outputs and cell.execution_count is None, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch, tmp_path):
  monkeypatch.setenv("VDM_NOTEBOOK_FAST", "1")
  # One CPU device in the kernel, as a user's laptop has.
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]
  assert not errors
