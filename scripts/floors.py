#!/usr/bin/env python3
"""Turn the lower bounds of pyproject.toml into pins, for scripts/test_floors.sh.

    python scripts/floors.py                    # pins of [project] dependencies and the "test" extra
    python scripts/floors.py --extras test,book # other extras
    python scripts/floors.py --skip torch,torchvision

Every requirement ``name>=X`` (with or without an upper bound) becomes ``name==X`` (and a
pin ``name==X`` stays one); a requirement without a lower bound is an error, since its floor could not be tested. The
output is a pip constraints file: pip then installs exactly the declared minimum of each
direct dependency, and resolves everything else as usual.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
_REQ = re.compile(r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*)(?:;.*)?$")


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    reqs = list(project.get("dependencies", []))
    own = re.sub(r"[-_.]+", "-", project["name"]).lower()
    for extra in extras:
        for req in project.get("optional-dependencies", {}).get(extra, []):
            # "chapter6-utils[test,book]" inside an extra points back at the project itself
            if re.sub(r"[-_.]+", "-", _REQ.match(req).group("name")).lower() != own:
                reqs.append(req)
    return reqs


def floor_pins(reqs: list[str], skip: set[str] = frozenset()) -> list[str]:
    pins, seen = [], set()
    for req in reqs:
        match = _REQ.match(req)
        if not match:
            raise ValueError(f"cannot read the requirement {req!r}")
        name = re.sub(r"[-_.]+", "-", match.group("name")).lower()
        if name in skip or name in seen:
            continue
        lower = re.search(r"(?:>=|==)\s*([0-9][^,\s]*)", match.group("spec"))  # a pin is its own floor
        if not lower:
            raise ValueError(f"{req!r} has no lower bound (>=): its floor cannot be tested")
        seen.add(name)
        pins.append(f"{name}=={lower.group(1)}")
    return pins


def import_check() -> int:
    """Import every top-level module of every runtime dependency of the installed
    chapter6-utils, and every module of chapter6_utils; print the failures."""
    import importlib
    import pkgutil
    from importlib.metadata import packages_distributions, requires

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    wanted = {norm(_REQ.match(r).group("name")) for r in requires("chapter6-utils") or [] if "extra ==" not in r}
    modules = sorted(m for m, dists in packages_distributions().items()
                     if not m.startswith("_") and {norm(d) for d in dists} & wanted)
    import chapter6_utils

    modules += [m.name for m in pkgutil.walk_packages(chapter6_utils.__path__, "chapter6_utils.")]
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 -- report every one
            failed.append(f"{name}: {type(err).__name__}: {err}")
    print(f"  {len(modules) - len(failed)}/{len(modules)} modules import")
    for line in failed:
        print(f"  FAILED {line}")
    return 1 if failed else 0


def closure_check(extras: list[str]) -> int:
    """pip check, restricted to what chapter6-utils[extras] needs: every requirement in that
    closure is installed at a version it accepts. (A plain ``pip check`` also judges packages
    an earlier install step left behind that nothing needs any more.)"""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    todo, seen, problems = [("chapter6-utils", set(extras))], set(), []
    while todo:
        name, wanted_extras = todo.pop()
        key = (norm(name), frozenset(wanted_extras))
        if key in seen:
            continue
        seen.add(key)
        for text in distribution(name).requires or []:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (wanted_extras or {""})):
                continue
            try:
                have = distribution(req.name).version
            except PackageNotFoundError:
                problems.append(f"{name} needs {req}, which is not installed")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                problems.append(f"{name} needs {req}, but {req.name} {have} is installed")
            todo.append((req.name, set(req.extras)))
    print(f"  {len(seen)} distributions in the closure of chapter6-utils[{','.join(extras)}]: "
          f"{len(problems)} unmet requirements")
    for line in problems:
        print(f"  FAILED {line}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--extras", default="test", help="comma-separated extras to include")
    parser.add_argument("--skip", default="", help="comma-separated names to leave out (e.g. torch)")
    parser.add_argument("--import-check", action="store_true",
                        help="instead: import every runtime dependency and module of the installed package")
    parser.add_argument("--closure-check", action="store_true",
                        help="instead: check the requirements of the installed package and --extras")
    opts = parser.parse_args(argv)
    if opts.import_check:
        return import_check()
    if opts.closure_check:
        return closure_check([e for e in opts.extras.split(",") if e])
    extras = [e for e in opts.extras.split(",") if e]
    skip = {re.sub(r"[-_.]+", "-", s).lower() for s in opts.skip.split(",") if s}
    try:
        pins = floor_pins(requirements(opts.pyproject, extras), skip)
    except ValueError as err:
        print(f"floors: {err}", file=sys.stderr)
        return 1
    print("\n".join(pins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
