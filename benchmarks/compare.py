"""Two revisions of this repository timed side by side: the same benchmark, alternately A B A B.

    python benchmarks/compare.py HEAD~3 HEAD -- --config=paper --what=train --steps=5
    python benchmarks/compare.py main my-branch --pairs=5 --figure=step_s --threshold=0.05 \\
        -- --config=small --what=train

A speed or compile-time change shows only against the same machine at the same time: load and
thermal state drift over minutes, and a machine kind varies between hosts. So each revision is
checked out in its own git worktree (`git worktree add --detach`, under --workdir, removed
afterwards unless --keep) and its benchmark script (--script, default benchmarks/bench.py; any
script whose last stdout line is one JSON object) runs in a fresh process with that worktree
first on PYTHONPATH, in the order A B A B ... for --pairs pairs, so a drift hits both alike.

Printed (one JSON object): both commits, the command, and for every numeric figure of the
benchmark's JSON (nested keys joined with '.') the median of A and of B, each pair's ratio B/A
and their median. Each --figure (repeatable; NAME, or NAME:lower / NAME:higher for which way is
better, default: names with '_per_s', 'tflops' or 'mfu' are higher-is-better, others lower) is
checked: when its median ratio is worse than 1 +- --threshold, it is listed under "regressed"
and the exit status is 1. A run that fails stops the comparison with its output and status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIGHER_IS_BETTER = ("_per_s", "tflops", "mfu")


def git(repo: Path, *args: str) -> str:
  return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                        text=True).stdout.strip()


def resolve_commit(repo: Path, rev: str) -> str:
  try:
    return git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}")
  except subprocess.CalledProcessError:
    raise SystemExit(f"{rev!r} is not a commit of {repo}: give a branch, tag or commit "
                     f"(git log --oneline lists them).") from None


def flatten(record: dict, prefix: str = "") -> dict[str, float]:
  """The numeric leaves of a JSON object, nested keys joined by '.' (booleans left out)."""
  out = {}
  for k, v in record.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, name + "."))
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
      out[name] = float(v)
  return out


def parse_figure(item: str) -> tuple[str, bool]:
  """'step_s' -> ('step_s', False); 'images_per_s:higher' -> (..., True): higher is better."""
  name, _, way = item.partition(":")
  if way not in ("", "lower", "higher"):
    raise SystemExit(f"--figure {item}: the direction after ':' must be 'lower' or 'higher'.")
  higher = way == "higher" if way else any(s in name for s in HIGHER_IS_BETTER)
  return name, higher


def run_once(tree: Path, script: str, bench_args: list[str], log) -> dict:
  """One benchmark process in worktree `tree`; its last stdout line as JSON."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(tree)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  cmd = [sys.executable, str(tree / script), *bench_args]
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode != 0 or not lines:
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    print(f"{shlex.join(cmd)} in {tree} exited {proc.returncode}"
          f"{'' if lines else ' without a JSON line'}: the comparison stops.", file=sys.stderr)
    raise SystemExit(2)
  print(f"  {tree.name}: {shlex.join(cmd[1:])} ({time.perf_counter() - start:.1f} s)", file=log)
  return json.loads(lines[-1])


def compare(a: list[dict], b: list[dict]) -> dict[str, dict]:
  """Per figure present in every run: medians and the pairwise ratios B/A."""
  fa, fb = [flatten(r) for r in a], [flatten(r) for r in b]
  names = sorted(set.intersection(*(set(f) for f in fa + fb)))
  out = {}
  for n in names:
    va, vb = [f[n] for f in fa], [f[n] for f in fb]
    ratios = [y / x if x else float("nan") for x, y in zip(va, vb)]
    out[n] = {"a_median": statistics.median(va), "b_median": statistics.median(vb),
              "ratios": [round(q, 4) for q in ratios],
              "ratio_median": round(statistics.median(ratios), 4)}
  return out


def regressions(figures: dict[str, dict], chosen: list[tuple[str, bool]],
                threshold: float) -> list[dict]:
  out = []
  for name, higher in chosen:
    if name not in figures:
      raise SystemExit(f"--figure {name}: the benchmark reports no such number; it reports "
                       f"{', '.join(figures)}.")
    q = figures[name]["ratio_median"]
    if (q < 1 - threshold) if higher else (q > 1 + threshold):
      out.append({"figure": name, "ratio_median": q,
                  "better": "higher" if higher else "lower", "threshold": threshold})
  return out


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              usage="compare.py REV_A REV_B [options] -- <benchmark args>")
  p.add_argument("rev_a")
  p.add_argument("rev_b")
  p.add_argument("--pairs", type=int, default=3, help="A B rounds (default 3)")
  p.add_argument("--script", default="benchmarks/bench.py",
                 help="the benchmark, relative to the repository root")
  p.add_argument("--figure", action="append", default=[],
                 help="a figure to check (NAME[:lower|:higher]); repeatable")
  p.add_argument("--threshold", type=float, default=0.05,
                 help="relative change of a --figure's median ratio that counts as a regression")
  p.add_argument("--repo", default=None, help="the repository (default: this script's)")
  p.add_argument("--workdir", default=None, help="where the worktrees go (default: a temp dir)")
  p.add_argument("--keep", action="store_true", help="leave the worktrees in place")
  p.add_argument("--out", default=None, help="also append the JSON object to this file")
  return p


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  if "--" in argv:
    split = argv.index("--")
    argv, bench_args = argv[:split], argv[split + 1:]
  else:
    bench_args = []
  args = make_parser().parse_args(argv)
  if args.pairs < 1:
    raise SystemExit(f"--pairs must be >= 1, got {args.pairs}.")
  if not 0 <= args.threshold < 1:
    raise SystemExit(f"--threshold must be in [0, 1), got {args.threshold}.")
  chosen = [parse_figure(f) for f in args.figure]
  repo = Path(args.repo or Path(__file__).resolve().parents[1])
  repo = Path(git(repo, "rev-parse", "--show-toplevel"))
  commits = {"a": resolve_commit(repo, args.rev_a), "b": resolve_commit(repo, args.rev_b)}
  root = Path(args.workdir or tempfile.mkdtemp(prefix="vdm_compare_"))
  trees = {k: root / f"{k}_{c[:10]}" for k, c in commits.items()}
  log = sys.stderr
  try:
    for k, tree in trees.items():
      if not tree.exists():
        git(repo, "worktree", "add", "--detach", str(tree), commits[k])
      if not (tree / args.script).is_file():
        raise SystemExit(f"{args.script} does not exist at {commits[k][:10]} "
                         f"({getattr(args, 'rev_' + k)}).")
    runs = {"a": [], "b": []}
    for i in range(args.pairs):
      print(f"pair {i + 1}/{args.pairs}", file=log)
      for k in ("a", "b"):
        runs[k].append(run_once(trees[k], args.script, bench_args, log))
  finally:
    if not args.keep:
      for tree in trees.values():
        if tree.exists():
          subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                         capture_output=True)
  figures = compare(runs["a"], runs["b"])
  result = {"a": {"rev": args.rev_a, "commit": commits["a"]},
            "b": {"rev": args.rev_b, "commit": commits["b"]},
            "script": args.script, "args": bench_args, "pairs": args.pairs,
            "order": " ".join(["A B"] * args.pairs), "figures": figures,
            "checked": [n for n, _ in chosen],
            "regressed": regressions(figures, chosen, args.threshold)}
  line = json.dumps(result)
  print(line, flush=True)
  if args.out:
    with open(args.out, "a") as f:
      f.write(line + "\n")
  if result["regressed"]:
    names = ", ".join(f"{r['figure']} (B/A {r['ratio_median']})" for r in result["regressed"])
    print(f"regressed past {args.threshold:g}: {names}", file=log)
    raise SystemExit(1)
  return result


if __name__ == "__main__":
  main()
