"""The file-level import graph: no cycles, and the layers of the README's Layout section.

Every ``import`` / ``from ... import`` of the project's own modules is read from the source
(function-level imports included), so a lazy import cannot hide a cycle.

Layers, bottom first: ``common`` and ``geometry``; ``data``; ``models`` (which reads the
datasets' default sizes); ``helper`` (engine, checkpoints, command lines); ``localization``.
A package imports its own layer and those below (:data:`ALLOWED`). Above them are scripts:
the entry points at the top level (``train_*.py``, ``test_*.py``, ``localize.py``) and the
script folders (:data:`SCRIPT_FOLDERS`); they may import any package, and nothing imports
them except a script of the same folder (``experiments.harness``, ``benchmarks.fake_images``).
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: What each package may import from the project.
ALLOWED = {
    "common": {"common"},
    "geometry": {"common", "geometry"},
    "data": {"common", "geometry", "data"},
    "models": {"common", "geometry", "data", "models"},
    "helper": {"common", "geometry", "data", "models", "helper"},
    "localization": {"common", "geometry", "data", "models", "helper", "localization"},
}
#: Folders of scripts: only scripts of the same folder import their modules.
SCRIPT_FOLDERS = ("scripts", "experiments", "benchmarks")
#: Modules of packages that are command lines (``python -m``): nothing imports them.
CLI_MODULES = {"data.convert_polar", "data.synthetic"}


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
    """Project modules imported by ``module`` (resolving ``from package import submodule`` and
    relative imports)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
    found = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            names = [source] + [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES and name != module)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _package(module: str) -> str:
    return module.split(".")[0]


def violations(module: str, imported) -> list:
    """The imports of ``module`` that its layer forbids (module names only: see the module doc)."""
    def forbidden(other: str) -> bool:
        top, folder = _package(module), _package(other)
        if other in CLI_MODULES or (folder not in ALLOWED and folder not in SCRIPT_FOLDERS):
            return True  # a command line or a top-level entry point
        if folder in SCRIPT_FOLDERS:
            return folder != top
        return top in ALLOWED and folder not in ALLOWED[top]

    return sorted(other for other in imported if forbidden(other))


def test_the_rules_catch_each_kind_of_violation():
    """The checker on a made-up graph: every forbidden edge is reported, every allowed one is not."""
    graph = {
        "geometry.a": {"common.errors", "models.b"},
        "data.c": {"geometry.a", "models.b", "data.convert_polar"},
        "models.b": {"data.c", "helper.d"},
        "helper.d": {"models.b", "localization.e", "train_cvusa"},
        "localization.e": {"helper.d", "localize", "scripts.demo"},
        "experiments.f": {"experiments.harness", "helper.d", "benchmarks.fake_images", "localization.e"},
        "benchmarks.g": {"benchmarks.fake_images", "experiments.harness"},
        "scripts.demo": {"data.c", "helper.d", "test_cvusa"},
        "localize": {"localization.e", "common.errors"},
    }
    assert {module: violations(module, imported) for module, imported in graph.items()} == {
        "geometry.a": ["models.b"],
        "data.c": ["data.convert_polar", "models.b"],
        "models.b": ["helper.d"],
        "helper.d": ["localization.e", "train_cvusa"],
        "localization.e": ["localize", "scripts.demo"],
        "experiments.f": ["benchmarks.fake_images"],
        "benchmarks.g": ["experiments.harness"],
        "scripts.demo": ["test_cvusa"],
        "localize": [],
    }


def test_every_module_has_a_layer():
    """A new package must be given its place in :data:`ALLOWED` (else it would be read as a script)."""
    for module, path in MODULES.items():
        top_level_file = os.path.dirname(path) == REPO
        assert _package(module) in ALLOWED or _package(module) in SCRIPT_FOLDERS or top_level_file, module


def test_the_graph_is_read():
    assert {"models.config", "helper.engine", "geometry.polar", "common.errors", "localization.embed", "localize",
            "scripts.demo", "experiments.harness", "benchmarks.fake_images"} <= set(GRAPH)
    assert "geometry.polar" in GRAPH["models.polar"] and "helper.config" in GRAPH["helper.engine"]
    assert "helper.checkpoint" in GRAPH["localization.embed"] and "localization.cli" in GRAPH["localize"]
    assert "experiments.harness" in GRAPH["experiments.offset_study"]


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


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_each_module_imports_only_what_its_layer_may(module):
    bad = violations(module, GRAPH[module])
    assert not bad, f"{module} imports {bad}"


def test_geometry_polar_and_convert_polar_load_without_torch():
    import subprocess
    import sys

    code = ("import sys, data.convert_polar, geometry.polar; "
            "print(sorted(m for m in ('torch', 'data.cvusa', 'data.vigor') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
