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


def test_ci_runs_the_readme_test_command():
  ci = (ROOT / ".ci" / "run").read_text()
  bash = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1)
  test_cmd = [l for l in bash.splitlines() if "pytest" in l][0].split("#")[0].strip()
  assert test_cmd in ci.splitlines()
  main_cmd = [l for l in bash.splitlines() if "experiments.train" in l][0]
  assert "--config=experiments/configs/quickstart.py" in main_cmd
  assert (ROOT / "experiments" / "configs" / "quickstart.py").exists()
