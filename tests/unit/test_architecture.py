"""The layering of DESIGN.md, checked on the source of every module of the package (each
subpackage, recursively): no import circles inside probes/, probes never imports analyses/app/
saes, analyses and saes never import app, saes never imports analyses (an analysis may use an
SAE, not the other way round), an analysis takes no helper from a sibling analysis (helpers
live in probes; what one analysis may take from another is its analysis API: the registered
function, its Params and its Result), no module edits ``sys.path``, hook names are built by
``probes.hooknames`` only, hooked runs go through ``probes`` (no ``run_with_cache`` elsewhere),
and no analysis tokenises with ``model.tokenizer(...)`` directly (they go through
probes.tokens)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "mechscope"
SUBPACKAGES = ("probes", "analyses", "saes", "app", "data", "sweeps")

# rule -> modules excused from it; empty: every rule holds everywhere (an entry whose module
# keeps the rule fails the test, so nothing stays excused by accident)
ALLOWED: dict[str, set[str]] = {}


def _module_name(path: Path) -> str:
    """``analyses/neurons/decode.py`` → ``analyses.neurons.decode`` (without the ``mechscope.`` prefix)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules(package: str) -> dict[str, Path]:
    """Every module of a subpackage, recursively, by its name below ``mechscope.``."""
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py")) if "__pycache__" not in p.parts}


def _all_modules() -> dict[str, Path]:
    out = {}
    for package in SUBPACKAGES:
        out.update(_modules(package))
    out.update(_modules(PACKAGE))  # the front door
    return out


def _local(name: str) -> str:
    """An imported module name below the package (``mechscope.probes.x`` → ``probes.x``)."""
    return name.removeprefix(PACKAGE + ".")


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
            out.update(_local(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(_local(node.module))
            out.update(f"{_local(node.module)}.{a.name}" for a in node.names)
    return out


def _imported_names(path: Path) -> list[tuple[str, str, int]]:
    """(module, name, line) of every ``from mechscope.X import name`` in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.extend((_local(node.module), a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.Import):
            out.extend((_local(a.name), "", node.lineno) for a in node.names)
    return out


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


def _report(rule: str, offenders: dict[str, list[str]]) -> list[str]:
    """Violations outside the allow-list, one line each: ``module: what``."""
    allowed = ALLOWED.get(rule, set())
    return [f"{mod}: {what}" for mod, whats in sorted(offenders.items()) if mod not in allowed for what in whats]


def test_cycle_finder_finds_a_planted_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_every_module_is_seen():
    """The walk is recursive and names modules as the package does (what the rules below read)."""
    mods = _all_modules()
    for name in ("probes.hooknames", "analyses.neurons.decode", "analyses.neurons", "saes.store", "app.commands.sae",
                 "app.cli", "data.sae_corpus", "mechscope"):
        assert name in mods, name
    assert _local("mechscope.probes.capture") == "probes.capture"


def test_allow_list_names_existing_modules():
    mods = _all_modules()
    stale = [m for names in ALLOWED.values() for m in names if m not in mods]
    assert stale == [], f"allow-list entries for modules that no longer exist: {stale}"


def test_no_import_cycles_in_probes():
    mods = _modules("probes")
    graph = {name: {m for m in _imports(path, top_level_only=False) if m in mods} - {name}
             for name, path in mods.items()}
    assert _find_cycle(graph) is None, f"import cycle: {' -> '.join(_find_cycle(graph))}"


def _importers(packages, forbidden) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for package in packages:
        for name, path in _modules(package).items():
            up = sorted({m for m in _imports(path, top_level_only=False) if m.split(".")[0] in forbidden})
            if up:
                out[name] = up
    return out


def test_imports_point_down():
    bad = _report("probes_up", RULES["probes_up"]())
    assert not bad, "probes must not import analyses, saes or app:\n" + "\n".join(bad)
    bad = _report("app_down", RULES["app_down"]())
    assert not bad, "analyses, saes and data never import app:\n" + "\n".join(bad)


def test_no_loop_between_saes_and_analyses():
    """An analysis may use an SAE (circuits' discrete codes); saes never import analyses."""
    bad = _report("saes_analyses", RULES["saes_analyses"]())
    assert not bad, "saes must not import analyses (move the helper to probes):\n" + "\n".join(bad)


def _analysis_unit(module: str) -> str:
    """``analyses.neurons.decode`` → ``analyses.neurons``; ``analyses.act`` → ``analyses.act``."""
    return ".".join(module.split(".")[:2])


def _is_analysis_api(obj) -> bool:
    from mechscope.probes.results import ANALYSES, Params, Result

    if isinstance(obj, type):
        return issubclass(obj, (Params, Result))
    return any(obj is fn for fn in ANALYSES.values())


def _sibling_helpers() -> dict[str, list[str]]:
    """Between analyses only the analysis API passes (registered function, Params, Result);
    a shared helper belongs in probes. ``catalog`` imports every analysis to register it."""
    offenders: dict[str, list[str]] = {}
    for name, path in _modules("analyses").items():
        if name in ("analyses", "analyses.catalog"):
            continue
        for module, imported, line in _imported_names(path):
            if not module.startswith("analyses.") or _analysis_unit(module) == _analysis_unit(name):
                continue
            obj = getattr(importlib.import_module(f"{PACKAGE}.{module}"), imported, None) if imported else None
            if obj is None or not _is_analysis_api(obj):
                offenders.setdefault(name, []).append(f"line {line}: {module}.{imported or '*'}")
    return offenders


def test_analyses_take_no_helper_from_a_sibling():
    bad = _report("sibling_helper", _sibling_helpers())
    assert not bad, "an analysis imports a helper from a sibling analysis (move it to probes):\n" + "\n".join(bad)


def sys_path_uses(source: str) -> list[str]:
    """Every ``sys.path`` in ``source`` (read or edited: the package has no reason to touch it)."""
    lines = sorted(node.lineno for node in ast.walk(ast.parse(source))
                   if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                   and node.value.id == "sys")
    return [f"line {n}: sys.path" for n in lines]


def test_sys_path_finder():
    src = "import sys\nsys.path.insert(0, 'data')\nos.path.join('a')\nsys.path = []\n"
    assert [s.split(":")[0] for s in sys_path_uses(src)] == ["line 2", "line 4"]


def _sys_path_edits() -> dict[str, list[str]]:
    offenders: dict[str, list[str]] = {}
    for name, path in _all_modules().items():
        found = sys_path_uses(path.read_text(encoding="utf-8"))
        if found:
            offenders[name] = found
    return offenders


def test_no_sys_path_edits():
    bad = _report("sys_path", _sys_path_edits())
    assert not bad, "no sys.path edits in the package (import mechscope.data...):\n" + "\n".join(bad)


_HOOK_LITERAL = re.compile(r"^(blocks\.|ln_final\.hook_|hook_(embed|pos_embed|tokens)$)")


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def hand_built_hook_names(source: str) -> list[str]:
    """Hook-name string literals and f-strings (``"blocks.3.attn.hook_z"``, ``f"blocks.{l}..."``,
    ``"hook_embed"``) in ``source``, docstrings aside."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    in_fstring = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            if _HOOK_LITERAL.match(str(node.values[0].value)):
                out.append(f"line {node.lineno}: f-string {str(node.values[0].value)!r}…")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
              and id(node) not in in_fstring and _HOOK_LITERAL.match(node.value)):
            out.append(f"line {node.lineno}: {node.value!r}")
    return out


def test_hook_name_finder_finds_planted_names():
    src = 'def f(l):\n    """blocks.0.hook_resid_pre in a docstring is fine"""\n    a = f"blocks.{l}.attn.hook_z"\n' \
          '    b = "blocks.3.hook_resid_post"\n    c = "hook_embed"\n    d = e["hook_name"]\n'
    assert [s.split(":")[0] for s in hand_built_hook_names(src)] == ["line 3", "line 4", "line 5"]


def _outside_probes(finder) -> dict[str, list[str]]:
    offenders: dict[str, list[str]] = {}
    for name, path in _all_modules().items():
        if name.split(".")[0] == "probes":
            continue
        found = finder(path.read_text(encoding="utf-8"))
        if found:
            offenders[name] = found
    return offenders


def test_hook_names_are_built_in_probes():
    bad = _report("hook_names", RULES["hook_names"]())
    assert not bad, "build hook names with probes.hooknames.name(point, layer):\n" + "\n".join(bad)


def run_with_cache_calls(source: str) -> list[str]:
    """Calls of ``X.run_with_cache`` where X is not a module imported from mechscope.probes."""
    tree = ast.parse(source)
    probe_aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in (f"{PACKAGE}.probes", "probes"):
            probe_aliases.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            probe_aliases.update(a.asname for a in node.names if a.asname and _local(a.name).startswith("probes."))
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "run_with_cache"
                and not (isinstance(node.func.value, ast.Name) and node.func.value.id in probe_aliases)):
            out.append(f"line {node.lineno}: {ast.unparse(node.func)}(...)")
    return out


def test_run_with_cache_finder():
    src = ("from mechscope.probes import capture\n"
           "capture.run_with_cache(m, x)\nmodel.run_with_cache(x)\nself.model.run_with_cache(x)\n")
    assert [s.split(":")[0] for s in run_with_cache_calls(src)] == ["line 3", "line 4"]


def test_hooked_runs_go_through_probes():
    bad = _report("run_with_cache", RULES["run_with_cache"]())
    assert not bad, "run hooked passes through probes.capture (run_with_cache / run):\n" + "\n".join(bad)


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


RULES = {
    "probes_up": lambda: _importers(("probes",), ("analyses", "app", "saes", "sweeps")),
    "app_down": lambda: _importers(("analyses", "saes", "data", "sweeps"), ("app",)),
    "saes_analyses": lambda: _importers(("saes",), ("analyses",)),
    "sibling_helper": _sibling_helpers,
    "sys_path": _sys_path_edits,
    "hook_names": lambda: _outside_probes(hand_built_hook_names),
    "run_with_cache": lambda: _outside_probes(run_with_cache_calls),
}


@pytest.mark.parametrize("rule", sorted(ALLOWED))
def test_allow_list_entries_are_still_needed(rule):
    """An allow-listed file that no longer breaks its rule must leave the allow-list."""
    assert rule in RULES
    offenders = RULES[rule]()
    fixed = sorted(m for m in ALLOWED[rule] if m not in offenders)
    assert fixed == [], f"{rule}: these files keep the rule now, take them off the allow-list: {fixed}"
