"""The file-level import graph: no cycles, and the layers of the README's Layout section.

Every ``import`` / ``from ... import`` of the project's own modules is read from the source
(function-level imports included), so a lazy import cannot hide a cycle.
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("common", "geometry", "models", "data", "helper")
#: Modules that are command lines (run as scripts or with ``python -m``): nothing imports them.
CLI_MODULES = {"data.convert_polar", "data.synthetic", "train_cvusa", "train_vigor", "test_cvusa", "test_vigor"}
#: What each bottom layer may import from the project.
ALLOWED = {"common": {"common"}, "geometry": {"common", "geometry"}}


def _module_files():
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "__pycache__")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                yield (rel[: -len(".__init__")] if rel.endswith(".__init__") else rel), path


MODULES = dict(_module_files())


def _runtime_nodes(node):
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
            continue
        yield child
        yield from _runtime_nodes(child)


def _imports(module: str, path: str):
    """Project modules imported by ``module`` (resolving ``from package import submodule``)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES and name != module)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _package(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_is_read():
    assert {"models.config", "helper.engine", "geometry.polar", "common.errors"} <= set(GRAPH)
    assert "geometry.polar" in GRAPH["models.polar"] and "helper.config" in GRAPH["helper.engine"]


def test_no_import_cycle():
    state = {}

    def visit(module, stack):
        state[module] = "open"
        for other in sorted(GRAPH[module]):
            if state.get(other) == "open":
                cycle = stack[stack.index(other):] + [other]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if other not in state:
                visit(other, stack + [other])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _package(m) in ("models", "data")))
def test_models_and_data_import_no_engine_parser_or_cli(module):
    bad = {m for m in GRAPH[module] if _package(m) == "helper" or m in CLI_MODULES}
    assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _package(m) in ALLOWED))
def test_common_and_geometry_are_the_bottom(module):
    bad = {m for m in GRAPH[module] if _package(m) not in ALLOWED[_package(module)]}
    assert not bad, f"{module} imports {sorted(bad)}"


def test_nothing_imports_a_command_line_module():
    importers = {module: sorted(GRAPH[module] & CLI_MODULES) for module in GRAPH if GRAPH[module] & CLI_MODULES}
    assert not importers, importers


def test_geometry_polar_and_convert_polar_load_without_torch():
    import subprocess
    import sys

    code = ("import sys, data.convert_polar, geometry.polar; "
            "print(sorted(m for m in ('torch', 'data.cvusa', 'data.vigor') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
