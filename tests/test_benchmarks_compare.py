"""benchmarks/compare.py: two revisions run alternately in their own worktrees, the medians and
the pairwise ratios of what they print, and the regression exit."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import compare  # noqa: E402

# A stand-in benchmark: its figures depend on the revision (STEP) and on the run (the log of
# earlier runs, outside the worktrees, gives each call its position).
SCRIPT = """
import json, sys
from pathlib import Path
STEP = {step}
log = Path({log!r})
n = len(log.read_text().splitlines()) if log.exists() else 0
log.open("a").write("{name}\\n")
print("warming up")
print(json.dumps({{"step_s": STEP, "images_per_s": 8 / STEP, "run": n + 1,
                   "nested": {{"compile_s": 2.0}}, "ok": True, "args": sys.argv[1:]}}))
"""


def _repo(tmp_path, steps):
  repo = tmp_path / "repo"
  repo.mkdir()
  run = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)
  run("init", "-q")
  run("config", "user.email", "a@b.c")
  run("config", "user.name", "t")
  commits = []
  for i, step in enumerate(steps):
    (repo / "fake_bench.py").write_text(SCRIPT.format(step=step, log=str(tmp_path / "log"),
                                                      name="AB"[i]))
    run("add", "fake_bench.py")
    run("commit", "-qm", f"rev {i}")
    commits.append(subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                                  capture_output=True, text=True).stdout.strip())
  return repo, commits


def _main(repo, tmp_path, *extra):
  return compare.main([*extra[:-1], f"--repo={repo}", "--script=fake_bench.py",
                       f"--workdir={tmp_path / 'trees'}", "--", extra[-1]])


def test_alternating_runs_medians_and_ratios(tmp_path):
  repo, (a, b) = _repo(tmp_path, [1.0, 1.5])
  out = _main(repo, tmp_path, a[:8], b[:8], "--pairs=3", "--figure=step_s:lower",
              "--threshold=0.6", "--x=1")
  assert (tmp_path / "log").read_text().split() == list("ABABAB")   # alternately, A first
  f = out["figures"]
  assert (f["step_s"]["a_median"], f["step_s"]["b_median"]) == (1.0, 1.5)
  assert f["step_s"]["ratios"] == [1.5] * 3 and f["step_s"]["ratio_median"] == 1.5
  # The runs' positions 1..6: A had 1, 3, 5 and B 2, 4, 6, so each pair's ratio is B's over
  # the A run just before it.
  assert f["run"]["ratios"] == [2.0, round(4 / 3, 4), 1.2] and f["run"]["a_median"] == 3
  assert f["nested.compile_s"]["ratios"] == [1.0] * 3 and "ok" not in f
  assert out["regressed"] == [] and out["a"]["commit"] == a and out["b"]["commit"] == b
  assert out["args"] == ["--x=1"] and out["order"] == "A B A B A B"
  assert not any((tmp_path / "trees").iterdir())      # worktrees removed
  listed = subprocess.run(["git", "-C", str(repo), "worktree", "list"], check=True,
                          capture_output=True, text=True).stdout
  assert len(listed.splitlines()) == 1


def test_a_regression_past_the_threshold_exits_1(tmp_path, capsys):
  repo, (a, b) = _repo(tmp_path, [1.0, 1.5])
  # step_s went up 1.5x (lower is better), images_per_s down to 0.667x (higher is better, by
  # its name): both past 0.3; compile_s did not change.
  with pytest.raises(SystemExit) as e:
    _main(repo, tmp_path, a, b, "--pairs=1", "--figure=step_s", "--figure=images_per_s",
          "--figure=nested.compile_s", "--threshold=0.3", "--y")
  assert e.value.code == 1
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert [(r["figure"], r["better"]) for r in out["regressed"]] == [("step_s", "lower"),
                                                                    ("images_per_s", "higher")]
  assert out["figures"]["images_per_s"]["ratio_median"] == round(1 / 1.5, 4)
  # B against itself: nothing regresses.
  same = _main(repo, tmp_path, b, b, "--pairs=1", "--figure=step_s", "--threshold=0.0", "--y")
  assert same["regressed"] == [] and same["figures"]["step_s"]["ratios"] == [1.0]


def test_bad_input_is_refused(tmp_path):
  repo, (a, b) = _repo(tmp_path, [1.0, 1.5])
  with pytest.raises(SystemExit, match="'nope' is not a commit"):
    _main(repo, tmp_path, a, "nope", "--y")
  with pytest.raises(SystemExit, match="reports no such number"):
    _main(repo, tmp_path, a, b, "--pairs=1", "--figure=nothing", "--y")
  with pytest.raises(SystemExit, match="'lower' or 'higher'"):
    _main(repo, tmp_path, a, b, "--figure=step_s:up", "--y")
  # A benchmark that fails stops the comparison with status 2.
  (repo / "fake_bench.py").write_text("raise SystemExit(3)\n")
  subprocess.run(["git", "-C", str(repo), "commit", "-qam", "broken"], check=True)
  with pytest.raises(SystemExit) as e:
    _main(repo, tmp_path, a, "HEAD", "--pairs=1", "--y")
  assert e.value.code == 2
