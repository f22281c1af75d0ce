"""The harness's map (the docstring of ``loadtests/__init__.py``) names every package and module it has, and
``tests/unit/`` mirrors the packages."""

from __future__ import annotations

import re
from pathlib import Path

import loadtests

ROOT = Path(__file__).resolve().parents[3]
PKG = ROOT / "loadtests"


def _modules() -> dict[str, list[str]]:
    """Subpackage → its module names (``__init__``/``__main__`` left out)."""
    out: dict[str, list[str]] = {}
    for init in sorted(PKG.glob("*/__init__.py")):
        sub = init.parent
        out[sub.name] = sorted(p.stem for p in sub.glob("*.py") if not p.stem.startswith("__"))
    return out


def test_the_map_names_every_package_and_module() -> None:
    doc = loadtests.__doc__ or ""
    entries = dict(re.findall(r"^    (\w+)/ +(.+?)(?=^    \w+/|\Z)", doc, flags=re.M | re.S))
    modules = _modules()
    assert set(entries) == set(modules), "packages named in the map differ from the packages on disk"
    for pkg, names in modules.items():
        text = entries[pkg]
        missing = [n for n in names if not re.search(rf"\b{n}\b", text)]
        assert not missing, f"loadtests/{pkg}/: the map does not name {missing}"


def test_no_module_lies_loose_in_the_harness_root() -> None:
    loose = sorted(p.name for p in PKG.glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"modules outside a role package: {loose}"


def test_unit_tests_mirror_the_packages() -> None:
    unit = ROOT / "tests" / "unit"
    top = {p.name for p in unit.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert top <= {"turnbench", "servers", "clients", "loadtests", "scripts"}
    for sub in (unit / "loadtests").iterdir():
        if sub.is_dir() and (sub / "__init__.py").exists():
            assert (PKG / sub.name / "__init__.py").exists(), f"tests/unit/loadtests/{sub.name} mirrors no package"
