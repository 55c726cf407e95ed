"""Prints the lowest versions pyproject.toml allows, one `name==version` a line, for pip.

Every `name>=version` of [project] dependencies becomes `name==version`; so do the requirements of
the extras named with --extra (all of an extra) or --only (single packages of any extra). CI
installs the result into a fresh environment and runs tests there, which is what keeps the lower
bounds true.

  python .ci/min_requirements.py --only pytest --only chex > /tmp/min.txt
"""
import argparse
import pathlib
import re
import sys
import tomllib

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
# `name[extras]>=version` with nothing else: the one form whose minimum is unambiguous.
_LOWER_BOUND = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)\s*$")


def pinned(requirement: str) -> str:
  """`name>=v` -> `name==v`; SystemExit naming the requirement for any other form."""
  match = _LOWER_BOUND.match(requirement)
  if not match:
    sys.exit(f"{PYPROJECT}: {requirement!r} is not of the form name>=version; give every "
             "dependency a plain lower bound so its minimum can be installed and tested.")
  name, extras, version = match.groups()
  return f"{name}{extras or ''}=={version}"


def _name(requirement: str) -> str:
  return re.split(r"[\[<>=!~;\s]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--extra", action="append", default=[], help="an extra to include whole")
  parser.add_argument("--only", action="append", default=[],
                      help="one package of the extras to include (by name)")
  args = parser.parse_args()
  project = tomllib.loads(PYPROJECT.read_text())["project"]
  extras = project.get("optional-dependencies", {})
  requirements = list(project["dependencies"])
  for extra in args.extra:
    if extra not in extras:
      sys.exit(f"No extra {extra!r} in {PYPROJECT}; extras: {', '.join(sorted(extras))}.")
    requirements += extras[extra]
  everything = {_name(r): r for reqs in extras.values() for r in reqs}
  for name in args.only:
    key = _name(name)
    if key not in everything:
      sys.exit(f"No package {name!r} in the extras of {PYPROJECT}; they hold "
               f"{', '.join(sorted(everything))}.")
    requirements.append(everything[key])
  print("\n".join(dict.fromkeys(pinned(r) for r in requirements)))


if __name__ == "__main__":
  main()
