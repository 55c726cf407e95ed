"""The README's commands and code are the ones that work."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python_blocks():
  return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_api_tour_runs():
  blocks = _python_blocks()
  assert blocks, "the README has an API tour"
  for code in blocks:
    exec(compile(code, "README.md", "exec"), {})


def _first_bash_block():
  return re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1)


def test_first_block_is_two_commands_install_then_run():
  """The main job and the tests, each installing what it needs first (a fresh machine)."""
  main_cmd, test_cmd = _first_bash_block().strip().splitlines()
  assert main_cmd.startswith("pip install -e . && python -m experiments.train ")
  assert "--config=experiments/configs/quickstart.py" in main_cmd
  assert (ROOT / "experiments" / "configs" / "quickstart.py").exists()
  assert test_cmd.startswith('pip install -e ".[test]" && python -m pytest ')


def test_ci_runs_the_readme_test_command():
  ci = (ROOT / ".ci" / "run").read_text()
  test_cmd = [l for l in _first_bash_block().splitlines() if "pytest" in l][0]
  assert test_cmd in ci.splitlines()


def test_data_variables_in_the_readme_exist():
  """Every VDM_DATA_* variable the README names is one the data sources read."""
  named = set(re.findall(r"VDM_DATA_[A-Z_]+", README))
  assert named >= {"VDM_DATA_CACHE", "VDM_DATA_MIRROR", "VDM_DATA_OFFLINE", "VDM_DATA_DIR"}
  code = "".join(p.read_text() for p in (ROOT / "vdm_jax" / "data").glob("*.py"))
  assert {v for v in named if f'"{v}"' not in code} == set()
