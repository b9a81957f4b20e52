"""The library's layers import only downward: every import inside MammoPatchLib goes to a lower
layer than the importing module's, so the graph has no cycles and, e.g., evaluation never
depends on training nor the readers on the network."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "MammoPatchLib"

#: Each top-level module or package of MammoPatchLib and its layer (0 = the bottom). The
#: package's ``__init__`` is its facade (version, errors, a lazy ``predict``): it is left out.
LAYERS = {
    "vocabulary": 0, "contract": 0, "errors": 1, "config": 2,
    "io": 3, "synthetic": 4,
    "transforms": 5, "networks": 5, "postprocess": 5, "visualize": 5, "batch": 5, "datasets": 5,
    "dicom_outputs": 5, "dicomweb": 5, "volume_bridge": 5,
    "model_file": 6, "patches": 6,
    "inference": 7, "export": 7,
    "outputs": 8, "evaluation": 8,
    "activation": 9, "runner": 9, "training": 9,
    "api": 10, "result_manifest": 10,
    "cli": 11, "__main__": 12,
}
FACADE = "__init__"

def _unit(parts) -> str:
    return parts[0]


def _imports(path: Path):
    """(target unit, line) of every import of another part of MammoPatchLib in ``path``."""
    package = list(path.relative_to(LIBRARY).parent.parts)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            if target:
                yield _unit(target), node.lineno
            else:  # "from . import x": a module of the package, or a name of __init__
                for alias in node.names:
                    yield (alias.name if alias.name in LAYERS else FACADE), node.lineno
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                if name and name.startswith("MammoPatchLib."):
                    yield name.split(".")[1], node.lineno


def test_every_part_of_the_library_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in LIBRARY.iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert parts - set(LAYERS) - {FACADE} == set(), "place new modules in LAYERS"


def test_imports_only_go_down():
    upward = []
    for path in sorted(LIBRARY.rglob("*.py")):
        rel = path.relative_to(LIBRARY)
        source = _unit(rel.with_suffix("").parts)
        if source == FACADE:
            continue
        for target, line in _imports(path):
            if target not in (source, FACADE) and LAYERS[target] >= LAYERS[source]:
                upward.append(f"{rel}:{line} imports {target} (layer {LAYERS[target]} >= {LAYERS[source]})")
    assert upward == []
