"""Imports only point down the documented layers (docs/craft/PROJECT_STRUCTURE.md), and `craft/` needs only torch.

Every `import` in the source counts, including the ones inside functions.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from conftest import REPO_ROOT

# Bottom to top. A module may import its own package and the packages of lower layers; packages that share a layer
# are siblings and do not import each other.
LAYERS = [
    {"prismatic.util"},
    {"prismatic.vla"},
    {"prismatic.models"},
    {"prismatic.assets", "prismatic.synthetic"},
    {"prismatic.training", "prismatic.eval"},
]
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_every_prismatic_package_has_a_layer() -> None:
    packages = {f"prismatic.{p.name}" for p in (REPO_ROOT / "prismatic").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(RANK)


def test_imports_only_point_down() -> None:
    upward = []
    for path in sorted((REPO_ROOT / "prismatic").rglob("*.py")):
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        own = package_of(module)
        if own not in RANK:  # prismatic/__init__.py
            continue
        for target in imported_modules(path):
            other = package_of(target)
            if target.startswith("prismatic.") and other != own and RANK[other] >= RANK[own]:
                upward.append(f"{module} imports {target}")
    assert upward == []


def test_craft_needs_only_torch() -> None:
    allowed = {"torch", "craft", "__future__", *sys.stdlib_module_names}
    foreign = [
        f"{path.name} imports {name}"
        for path in sorted((REPO_ROOT / "craft").rglob("*.py"))
        for name in imported_modules(path)
        if name.split(".")[0] not in allowed
    ]
    assert foreign == []
