"""The notebooks run end to end (small settings via VDM_NOTEBOOK_FAST=1 where a notebook has
them; 2d_swirl runs its full settings) as on a fresh Colab runtime: in a Python environment where
vdm_jax is not importable until their first cell installs it, with Fashion-MNIST downloaded from a
local mirror; their cells assert numbers."""
import json
import pathlib
import shutil
import site
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from test_data_download import FileServer, published_fashion_mnist

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# The Fashion-MNIST splits each notebook downloads; 2d_swirl makes its own data.
DOWNLOADS = {"01_vdm_tour": ["t10k"], "02_train_and_sample": ["train", "t10k"], "2d_swirl": [],
             "latent_diffusion": ["train", "t10k"]}


def test_notebooks_are_stored_without_outputs():
  assert [p.name for p in NOTEBOOKS] == ["01_vdm_tour.ipynb", "02_train_and_sample.ipynb",
                                         "2d_swirl.ipynb", "latent_diffusion.ipynb"]
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert not cell.outputs and cell.execution_count is None, path.name


def first_code_cell(path):
  return next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


def test_first_cell_names_one_source_and_installs_from_it():
  for path in NOTEBOOKS:
    source = first_code_cell(path).source
    assert source.splitlines()[3] == 'VDM_JAX_SOURCE = ""', path.name   # named once, at the top
    assert source.count("VDM_JAX_SOURCE =") == 2   # the default and the environment's override
    assert '"pip", "install", "-q", VDM_JAX_SOURCE]' in source


@pytest.mark.parametrize("name", ["2d_swirl", "latent_diffusion"])
def test_notebook_has_a_colab_badge_linking_to_itself(name):
  first = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells[0]
  assert first.cell_type == "markdown"
  assert "(https://colab.research.google.com/assets/colab-badge.svg)" in first.source
  assert f"/vdm_jax/blob/main/notebooks/{name}.ipynb)" in first.source


def test_notebooks_are_built_from_their_sources():
  """The .ipynb files are what build_notebooks.py writes (same cells, same ids)."""
  sys.path.insert(0, str(ROOT / "notebooks"))
  try:
    import build_notebooks
  finally:
    sys.path.pop(0)
  assert sorted(build_notebooks.NOTEBOOKS) == [p.name for p in NOTEBOOKS]
  for path in NOTEBOOKS:
    cells = nbformat.read(path, as_version=4).cells
    want = build_notebooks.NOTEBOOKS[path.name]
    assert [(c.cell_type, c.source) for c in cells] == [(c.cell_type, c.source) for c in want]
    assert [c.id for c in cells] == [f"cell-{i}" for i in range(len(cells))]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """A wheel of this checkout, built once for both notebooks: a wheel installs in seconds, a
  source tree needs a build each time."""
  tmp = tmp_path_factory.mktemp("wheel")
  checkout = tmp / "checkout"
  shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(
      ".git", "__pycache__", "*.egg-info", "build", ".pytest_cache", "workdirs", ".venv"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"),
                  str(checkout)], check=True)
  built, = (tmp / "dist").glob("vdm_jax-*.whl")
  return built


@pytest.fixture
def fresh_python(tmp_path):
  """A new virtual environment whose Python sees the installed dependencies but not vdm_jax, and
  a Jupyter kernel running it.

  The environment has no system site-packages of its own; a .pth file appends those folders to
  sys.path as plain paths, so their packages import while their own .pth files (among them an
  editable install of this checkout) are never run. pip, found the same way, installs into the
  environment.

  Returns:
    (the environment's python, the JUPYTER_PATH folder holding its kernel "fresh").
  """
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  purelib = subprocess.run(
      [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
      check=True, capture_output=True, text=True).stdout.strip()
  pathlib.Path(purelib, "system_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
  kernel = tmp_path / "jupyter" / "kernels" / "fresh"
  kernel.mkdir(parents=True)
  (kernel / "kernel.json").write_text(json.dumps({
      "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "fresh vdm_jax", "language": "python"}))
  return python, tmp_path / "jupyter"


@pytest.fixture
def mirror():
  server = FileServer()
  server.files.update({f"/fashion_mnist/{n}": b for n, b in published_fashion_mnist().items()})
  yield server
  server.close()


def _kernel_env(monkeypatch, tmp_path, jupyter_path, mirror_url):
  monkeypatch.setenv("VDM_NOTEBOOK_FAST", "1")
  # One CPU device in the kernel, as a user's laptop has.
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
  for var in ("PYTHONPATH", "VDM_JAX_SOURCE", "VDM_DATA_OFFLINE"):
    monkeypatch.delenv(var, raising=False)
  # Data only through the mirror: no local copy anywhere the search looks.
  (tmp_path / "no_data").mkdir()
  monkeypatch.setenv("VDM_DATA_DIR", str(tmp_path / "no_data"))
  monkeypatch.setenv("VDM_DATA_NO_SYSTEM_DIRS", "1")
  monkeypatch.setenv("VDM_DATA_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("VDM_DATA_MIRROR", mirror_url)
  # Installing the wheel must need nothing from a package index.
  monkeypatch.setenv("PIP_NO_INDEX", "1")


@pytest.mark.slow
def test_first_cell_without_a_source_says_what_to_set(fresh_python, monkeypatch, tmp_path):
  python, jupyter_path = fresh_python
  _kernel_env(monkeypatch, tmp_path, jupyter_path, "http://127.0.0.1:9")
  run = subprocess.run([str(python), "-c", first_code_cell(NOTEBOOKS[0]).source],
                       capture_output=True, text=True, cwd=tmp_path)
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1] == (
      "RuntimeError: vdm_jax is not installed. Set VDM_JAX_SOURCE at the top of this cell to a git "
      "URL of your copy of the repository (git+https://...) or to the path of a checkout, then run "
      "this cell again.")


@pytest.mark.heavy
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, wheel, fresh_python, mirror, monkeypatch, tmp_path):
  python, jupyter_path = fresh_python
  _kernel_env(monkeypatch, tmp_path, jupyter_path, mirror.url)
  before = subprocess.run([str(python), "-c", "import vdm_jax"], capture_output=True, text=True,
                          cwd=tmp_path)
  assert "No module named 'vdm_jax'" in before.stderr   # only the first cell makes it importable
  monkeypatch.setenv("VDM_JAX_SOURCE", str(wheel))
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=900, kernel_name="fresh",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]
  assert not errors
  printed = "".join(o.get("text", "") for o in nb.cells[1].outputs)
  assert f"vdm_jax: {python.parents[1]}/lib/" in printed   # the copy the first cell installed
  assert "JAX devices: [Cpu" in printed
  assert sorted(mirror.requests) == sorted(
      f"/fashion_mnist/{split}-{kind}-ubyte.gz" for split in DOWNLOADS[path.stem]
      for kind in ("images-idx3", "labels-idx1"))
