"""The code's shape: science packages depend one way, no import cycles, no Hydra below the entry points."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "skintumor"
LAYERS = ("data", "augment", "models", "evaluate", "explain")  # each may import only those before it
SHARED = {"skintumor", "skintumor.errors"}  # importable from everywhere


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """skintumor modules ``path`` imports anywhere in the file (late imports inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("skintumor")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("skintumor"):
            for alias in node.names:  # `from skintumor.data import dicom` imports the module skintumor.data.dicom
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return found


GRAPH = {name: imports(path) - {name} for name, path in MODULES.items()}


def layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_import_cycles():
    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in GRAPH.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    cycles = sorted(m for m in GRAPH if reaches(m, m, set()))
    assert not cycles, f"modules on an import cycle: {cycles}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) is not None))
def test_science_packages_depend_one_way(name):
    """data -> augment -> models -> evaluate -> explain: a package never imports a later one, nor an entry point."""
    for other in GRAPH[name] - SHARED:
        assert layer(other) is not None and layer(other) <= layer(name), f"{name} imports {other}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) is not None))
def test_science_modules_import_no_hydra(name):
    tree = ast.parse(MODULES[name].read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {n for n in names if n.split(".")[0] in ("hydra", "omegaconf")}, name
