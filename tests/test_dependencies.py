"""The declared dependencies: each one used, ranges in pyproject.toml, exact pins in
constraints.txt (torch alone pinned exactly in both)."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "gflow_dist"

IMPORT_NAMES = {"pyyaml": "yaml", "astropy-healpix": "astropy_healpix",
                "universal-pathlib": "upath"}
NOT_IMPORTED = {
    "distributed": "lsdb 0.11 imports it (lsdb.catalog.dataset.healpix_dataset) undeclared",
    "xarray": "the Zarr store is laid out for xarray; the tests open it with xarray",
}
PINNED_EXACTLY = {"torch": "a looser pin pulls a multi-GB CUDA build"}


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group().lower()


def _dependencies() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def _constraints() -> dict[str, str]:
    lines = (line.split("#")[0].strip() for line in (REPO / "constraints.txt").open())
    return {_name(line): line for line in lines if line}


def _imported_top_level() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_every_dependency_is_imported_or_says_why_not():
    imported = _imported_top_level()
    for requirement in _dependencies():
        name = _name(requirement)
        if name in NOT_IMPORTED:
            assert IMPORT_NAMES.get(name, name) not in imported, f"{name} is used now"
            continue
        assert IMPORT_NAMES.get(name, name).replace("-", "_") in imported, (
            f"nothing in gflow_dist imports {name}: drop it from pyproject.toml")


def test_pyproject_states_ranges_and_constraints_pin_each_dependency_exactly():
    constraints = _constraints()
    for requirement in _dependencies():
        name = _name(requirement)
        assert ("==" in requirement) == (name in PINNED_EXACTLY), requirement
        pin = constraints.get(name)
        assert pin is not None and re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.+]+", pin), (
            f"constraints.txt has no exact pin for {name}")
    assert constraints["torch"] == "torch==2.13.0" and "torch==2.13.0" in _dependencies()
