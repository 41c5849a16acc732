"""The house keeps its rules (docs/architecture.md): no import cycles, function-level imports included; lower
packages never import higher ones; no method name compared outside methods/; every package says its job."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "stylelora"
# ground <- families/methods/model/data <- adapters <- train/paint <- tune/serve <- cli/ui. The mini's pretraining
# and evaluation scripts sit with tune (they train and paint); the rest of the mini is a base model.
LAYERS = {"errors": 0, "files": 0, "images": 0, "options": 0, "families": 1, "methods": 1, "model": 1, "data": 1,
          "mini": 1, "adapters": 2, "train": 3, "paint": 3, "score": 3, "tune": 4, "serve": 4, "mini.pretrain": 4,
          "mini.evaluate": 4, "cli": 5, "ui": 5}
METHOD_NAMES = {"dora", "loha", "lokr", "adalora", "dylora"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "ui").glob("*.py")):
        if "weights" in path.parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        parts = ["stylelora", *parts] if parts[0] == "ui" else parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            candidates = [module] + [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and not candidate.startswith(name + "."):
                out.add(candidate)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycle_from(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
            if nxt not in state and (found := visit(nxt, trail + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def _layer(module: str) -> int | None:
    parts = module.split(".")[1:]
    for size in (2, 1):
        if ".".join(parts[:size]) in LAYERS:
            return LAYERS[".".join(parts[:size])]
    return None


def test_no_import_cycles_function_level_imports_included():
    assert _cycle_from(_graph()) is None, " -> ".join(_cycle_from(_graph()) or [])


def test_lower_packages_never_import_higher_ones():
    upward = sorted(f"{a} -> {b}" for a, targets in _graph().items() for b in targets
                    if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a))
    assert not upward, upward


def test_the_ui_and_the_server_never_import_the_cli_or_each_other():
    graph = _graph()
    crossing = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                      if (a.startswith(("stylelora.ui", "stylelora.serve")) and b.startswith("stylelora.cli"))
                      or (a.startswith("stylelora.ui") and b.startswith("stylelora.serve"))
                      or (a.startswith("stylelora.serve") and b.startswith("stylelora.ui")))
    assert not crossing, crossing


def test_no_method_name_is_compared_outside_methods():
    sites = []
    for name, path in _modules().items():
        if name.startswith("stylelora.methods"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                    sites += [f"{path.relative_to(ROOT)}:{node.lineno}" for v in values
                              if isinstance(v, ast.Constant) and v.value in METHOD_NAMES]
    assert not sites, sites


def test_every_package_says_its_job_and_few_modules_sit_at_the_top():
    undocumented = [str(p.parent.relative_to(ROOT)) for p in PACKAGE.rglob("__init__.py")
                    if "weights" not in p.parts and not ast.get_docstring(ast.parse(p.read_text()))]
    top = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert not undocumented and len(top) <= 8, (undocumented, top)
