"""The package's structure: no import cycles between autoprune's modules.

Imports are read with ``ast`` (module level and inside functions alike: a function-level import is
still a dependency, only a deferred one), so the check needs no import of the package itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Source folder of each top-level package (autoprune_plugins lives in plugins/, see pyproject).
PACKAGES = {"autoprune": ROOT / "autoprune", "autoprune_plugins": ROOT / "plugins"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the two packages."""
    found: dict[str, Path] = {}
    for top, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``module`` imports (the most specific module each import names)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` names the submodule when there is one, else an attribute of pkg.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import a.b.c` of a function: the module that holds it
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, without imports of the root for ``hookimpl``."""
    known = _modules()
    return {m: _imported(m, p, known) - {"autoprune"} for m, p in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_graph_reads_imports_of_every_kind() -> None:
    """The parser sees module-level, function-level, relative and from-imports (else 'acyclic' is vacuous)."""
    graph = import_graph()
    assert "autoprune.search.run" in graph and "autoprune_plugins.scenarios" in graph
    assert "autoprune.errors" in graph["autoprune.config"]
    assert sum(len(v) for v in graph.values()) > 100


def test_find_cycle_detects_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# The dependency rules docs/architecture.md states: (rule, importers, importers exempt, forbidden imports,
# imports exempt). Imports of the package root (``hookimpl``) are already left out of the graph.
FRONT_ENDS = ("autoprune.cli", "autoprune.cli_common", "autoprune.latency_cli", "autoprune.export")
CORE = (
    "autoprune.errors",
    "autoprune.hookspecs",
    "autoprune.choices",
    "autoprune.host",
    "autoprune.config",
    "autoprune.evaluation",
    "autoprune.criteria",
    "autoprune.strategies",
    "autoprune.scenarios",
    "autoprune.data",
    "autoprune.models",
    "autoprune.pruning",
)
PLUGIN_API = (
    "autoprune.errors",
    "autoprune.hookspecs",
    "autoprune.criteria",
    "autoprune.strategies",
    "autoprune.scenarios",
    "autoprune.data",
    "autoprune.models",
    "autoprune.pruning",
    "autoprune.engine",
    "autoprune.distill",
)
RULES: list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = [
    (
        "errors, hookspecs and choices import nothing of autoprune",
        ("autoprune.errors", "autoprune.hookspecs", "autoprune.choices"),
        (),
        ("autoprune", "autoprune_plugins"),
        (),
    ),
    (
        "the core (plugin APIs, data, models, pruning, host, config) never imports the engine, the search, the "
        "front ends or the contract kit",
        CORE,
        (),
        ("autoprune.engine", "autoprune.search", "autoprune.testing", "autoprune_plugins", *FRONT_ENDS),
        (),
    ),
    (
        "only the search itself and the front ends import the search",
        ("autoprune", "autoprune_plugins"),
        ("autoprune.search", *FRONT_ENDS),
        ("autoprune.search",),
        (),
    ),
    ("nothing imports the command line", ("autoprune", "autoprune_plugins"), (), ("autoprune.cli",), ()),
    (
        "the built-in plugins use only the plugin API, as a third party would",
        ("autoprune_plugins",),
        (),
        ("autoprune",),
        PLUGIN_API,
    ),
    (
        "the package reaches the built-in plugins through the host, except the contract kit's default criterion",
        ("autoprune",),
        ("autoprune.testing.contracts",),
        ("autoprune_plugins",),
        (),
    ),
    (
        "neither backend imports the other (what they share is in autoprune.search.backend and "
        "autoprune.search.records)",
        ("autoprune.search.optuna_backend", "autoprune.search.ray_backend"),
        (),
        ("autoprune.search.optuna_backend", "autoprune.search.ray_backend"),
        (),
    ),
]


def broken_rules(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks a rule of RULES, as 'rule: importer -> imported'."""
    broken = []
    for rule, importers, exempt, forbidden, allowed in RULES:
        for module, imports in sorted(graph.items()):
            if not _under(module, importers) or _under(module, exempt):
                continue
            broken += [
                f"{rule}: {module} -> {imported}"
                for imported in sorted(imports)
                if _under(imported, forbidden) and not _under(imported, allowed)
            ]
    return broken


def test_dependency_rules_hold() -> None:
    assert broken_rules(import_graph()) == []


def test_dependency_rules_catch_a_breach() -> None:
    graph = import_graph()
    graph["autoprune.pruning.flops"] = graph["autoprune.pruning.flops"] | {"autoprune.search.run"}
    graph["autoprune_plugins.criteria"] = graph["autoprune_plugins.criteria"] | {"autoprune.search.trial"}
    graph["autoprune.errors"] = {"autoprune.config"}
    graph["autoprune.search.ray_backend"] = graph["autoprune.search.ray_backend"] | {"autoprune.search.optuna_backend"}
    broken = broken_rules(graph)
    assert sorted(b.partition(":")[0] for b in broken) == sorted(
        [
            RULES[0][0],  # errors -> config
            RULES[1][0],
            RULES[2][0],  # pruning -> search: core rule, search rule
            RULES[2][0],
            RULES[4][0],  # built-in plugin -> search: search rule, plugin API rule
            RULES[6][0],  # one backend -> the other
        ]
    )
    assert sum(b.endswith("autoprune.pruning.flops -> autoprune.search.run") for b in broken) == 2


def _resolve(name: str) -> object:
    """The module, class or function a dotted name refers to (the longest importable prefix, then attributes)."""
    import importlib

    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


def test_architecture_doc_names_what_exists() -> None:
    """Every `autoprune...` name docs/architecture.md gives in backticks is a module or attribute that exists."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    names = sorted(set(re.findall(r"`(autoprune(?:_plugins)?(?:\.\w+)*)`", text)))
    assert len(names) > 40
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert missing == []


def test_architecture_doc_states_every_rule_module() -> None:
    """The rules' front ends and core modules are each named in the doc, so rule and doc change together."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert [m for m in (*FRONT_ENDS, *CORE) if f"`{m}`" not in text] == []


MAX_LINES = 60  # about a screen


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """Functions of ``source`` longer than ``limit`` lines (def to last line) with no written reason: a comment
    starting ``# long:`` on the def line or in the comment block just above the def (or its decorators)."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if node.end_lineno is None or node.end_lineno - node.lineno + 1 <= limit:
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1  # 0-based
        above = []
        i = first - 1
        while i >= 0 and lines[i].strip().startswith("#"):
            above.append(lines[i].strip())
            i -= 1
        if "# long:" not in lines[node.lineno - 1] and not any(c.startswith("# long:") for c in above):
            found.append((node.name, node.lineno))
    return found


def test_long_functions_need_a_written_reason() -> None:
    """No function on the package's path runs past a screen without a `# long:` reason beside it."""
    offenders = [
        f"{path.relative_to(ROOT)}:{line} {name}"
        for path in _modules().values()
        for name, line in long_functions(path.read_text())
    ]
    assert offenders == []


def test_long_function_check_sees_length_and_reason() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    assert long_functions("def short():\n    return 1\n") == []
    method = body.replace("    ", "        ")
    assert long_functions(f"class A:\n    @staticmethod\n    def f():\n{method}") == [("f", 3)]
    assert long_functions(f"# long: a reason\n# more of it\n@decorator\ndef f():\n{body}") == []
    assert long_functions(f"def f():  # long: a reason\n{body}") == []
    assert long_functions(f"# long: not this one's\n\ndef f():\n{body}") == [("f", 3)]
