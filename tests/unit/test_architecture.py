"""The layering of DESIGN.md, checked on the source: no import circles inside probes/, probes
never imports analyses/app/saes, analyses never import app, and no analysis tokenises with
``model.tokenizer(...)`` directly (they go through probes.tokens)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # module-level statements, including those inside if/try blocks
        stack, nodes = list(tree.body), []
        while stack:
            node = stack.pop()
            nodes.append(node)
            if isinstance(node, (ast.If, ast.Try)):
                stack.extend(node.body + node.orelse + getattr(node, "finalbody", []) +
                             [h for handler in getattr(node, "handlers", []) for h in handler.body])
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _modules(package: str) -> dict[str, Path]:
    return {f"{package}.{p.stem}": p for p in (ROOT / package).glob("*.py") if p.stem != "__init__"}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles_in_probes():
    mods = _modules("probes")
    graph = {name: {m for m in _imports(path, top_level_only=False) if m in mods} - {name}
             for name, path in mods.items()}
    assert _find_cycle(graph) is None, f"import cycle: {' -> '.join(_find_cycle(graph))}"


def test_imports_point_down():
    for name, path in _modules("probes").items():
        up = {m for m in _imports(path, top_level_only=False) if m.split(".")[0] in ("analyses", "app", "saes")}
        assert not up, f"{name} imports {sorted(up)}: probes must not import analyses, saes or app"
    for package in ("analyses", "saes"):
        for name, path in _modules(package).items():
            up = {m for m in _imports(path, top_level_only=False) if m.split(".")[0] == "app"}
            assert not up, f"{name} imports {sorted(up)}: analyses never import app"


def test_analyses_tokenise_through_probes():
    offenders = []
    for package in ("analyses", "saes"):
        for name, path in _modules(package).items():
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "tokenizer"):
                    offenders.append(f"{name}:{node.lineno}")
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "tokenizer"
                        and node.func.attr in ("encode", "__call__", "batch_encode_plus")):
                    offenders.append(f"{name}:{node.lineno}")
    assert offenders == [], f"call probes.tokens instead of model.tokenizer(...): {offenders}"
