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
    "vocabulary": 0, "contract": 0, "errors": 1, "config": 2, "distributed": 2,
    "io": 3, "synthetic": 4,
    "transforms": 5, "networks": 5, "postprocess": 5, "other_breast": 5, "visualize": 5, "datasets": 5, "volume_bridge": 5,
    "model_file": 6, "patches": 6,
    "inference": 7, "export": 7,
    "results": 8, "evaluation": 8,
    "activation": 9, "training": 9,
    "prediction": 10,
    "api": 11, "result_manifest": 11,
    "cli": 12, "__main__": 13,
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


def _module_of(path: Path) -> str:
    """'evaluation.report' for evaluation/report.py, 'io' for io/__init__.py."""
    parts = list(path.relative_to(LIBRARY).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or FACADE


def _module_imports(path: Path, modules):
    """The modules of MammoPatchLib that ``path`` imports anywhere (at the top or inside a
    function: a lazy import closes a cycle as surely as any other, only later)."""
    package = list(path.relative_to(LIBRARY).parent.parts)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            targets = [".".join(base + [a.name]) for a in node.names] + [".".join(base)]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("MammoPatchLib."):
            base = node.module.split(".")[1:]
            targets = [".".join(base + [a.name]) for a in node.names] + [".".join(base)]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".", 1)[1] for a in node.names if a.name.startswith("MammoPatchLib.")]
        # "from .x import y": y is a module of x, or a name in x (then the import is of x)
        for target in targets:
            if target in modules:
                yield target
                break


def _cycle(graph):
    """One import cycle of ``graph`` (module -> imported modules) as a list, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _graph():
    files = {_module_of(p): p for p in LIBRARY.rglob("*.py")}
    return {name: {t for t in _module_imports(path, files) if t != name} for name, path in files.items()}


def test_no_module_imports_itself_through_others():
    """Layers compare top-level parts; inside a part, two modules must not import each other
    either (directly, or round a longer loop; lazy imports included)."""
    graph = _graph()
    graph.pop(FACADE, None)  # the facade imports its parts lazily, and nothing imports it back
    assert _cycle(graph) is None


def test_the_cycle_check_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


MAX_FUNCTION_LINES = 80


def test_no_library_function_is_over_80_lines():
    """A function a reader must hold in their head at once fits on a screen; longer ones are
    split where the split has a name."""
    long = []
    for path in sorted(LIBRARY.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                where = f"{path.relative_to(LIBRARY).as_posix()}:{node.name}"
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{where} ({lines} lines)")
    assert long == []


#: What training's cross-validation and model writers may use of evaluation: the out-of-fold
#: type it produces, the Predictor it predicts held-out women with (and the case type), and the
#: card's phrases for a model's description. Figures, operating points and reports are
#: evaluation's alone: training never computes them.
TRAINING_USES_OF_EVALUATION = {"evaluation.out_of_fold", "evaluation.lesions", "evaluation.model_card"}
CROSS_VALIDATION_TRAINING = ("training/crossval.py", "training/cell_bundle.py", "training/cell_head_fit.py",
                             "training/run.py")


def test_cross_validation_training_computes_no_figures():
    files = {_module_of(p): p for p in LIBRARY.rglob("*.py")}
    found = []
    for name in CROSS_VALIDATION_TRAINING:
        used = {t for t in _module_imports(LIBRARY / name, files) if t.startswith("evaluation")}
        found += [f"{name} imports {t}" for t in sorted(used - TRAINING_USES_OF_EVALUATION)]
    assert found == []
