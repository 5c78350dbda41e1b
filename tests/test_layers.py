"""The package's layers point one way: no import cycle, no import against the layer order.

Every module is parsed with ``ast``, so imports inside functions and under
``TYPE_CHECKING`` count too: a cycle hidden in a function is still a cycle.
docs/architecture.md describes the layers in words.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "repro_lib"
ROOT = "repro_lib"

#: Lowest first. A module may import its own layer and the layers below it, and
#: belongs to the first layer naming it or a package it sits in.
#: docs/architecture.md says what each layer is for.
LAYERS: list[tuple[str, ...]] = [
    # plain data and settings: errors, paths and labels, records, scenarios
    ("repro_lib.errors", "repro_lib.config", "repro_lib.records", "repro_lib.scenario"),
    ("repro_lib.testsh_env",),
    # the Docker objects the lab makes (labels, registries, volumes, cleanup, engines)
    ("repro_lib.lab", "repro_lib.dockerd", "repro_lib.fixtures"),
    # commits as culprit-search candidates: git, and the images the user's build hook tags
    ("repro_lib.commits",),
    # checking a build's tarball, and what a failure lost
    ("repro_lib.verify", "repro_lib.forensics"),
    # the culprit search's model and records (numpy and scipy only): the store keeps
    # its records, so it sits below the store
    ("repro_lib.culprit",),
    # where every record goes (it reads cache facts back as forensics objects)
    ("repro_lib.store", "repro_lib.locks"),
    # pure functions of records and frames: a batch's summary and a sweep's stopping
    # rule use them while running, so they sit below the running layers
    ("repro_lib.frames", "repro_lib.stats"),
    # how one build runs, one try, one batch of tries
    ("repro_lib.builders",),
    ("repro_lib.trials", "repro_lib.progress"),
    ("repro_lib.batch",),
    # a sweep's cells, shards and digest: data every running part reads
    ("repro_lib.plan",),
    # running a plan: executors hand cells to local lanes or cluster workers
    ("repro_lib.executors",),
    ("repro_lib.sweep", "repro_lib.bisect"),
    # reading stores back: merged views, then the analysis frames
    ("repro_lib.merge",),
    ("repro_lib.results",),
    # results into figures, reports, comments; the benchmark; the command line
    ("repro_lib.plots",),
    # the report's sections, each of one concern, then the report that orders them
    (
        "repro_lib.report_format",
        "repro_lib.report_context",
        "repro_lib.report_verdicts",
        "repro_lib.report_position",
        "repro_lib.report_notes",
        "repro_lib.report_lost",
        "repro_lib.report_culprit",
    ),
    ("repro_lib.report", "repro_lib.comment", "repro_lib.bench_analysis"),
    ("repro_lib.bench",),
    ("repro_lib.cli", "repro_lib.__main__"),
    # the package's front door (``__version__``, a lazy ``load_results``)
    ("repro_lib",),
]

#: Imports inside functions that stay there, with their reasons; each also carries a
#: ``# why`` comment in the code. Any other import inside a function is a hidden edge.
LOCAL_IMPORTS: dict[tuple[str, str], str] = {
    ("repro_lib", "repro_lib.results"): "`import repro_lib` stays cheap: no pandas/pyarrow",
    ("repro_lib.bench", "repro_lib.executors.cluster"): "runs on each Dask worker",
    ("repro_lib.bench", "repro_lib.sweep"): "runs on each Dask worker",
}
#: Packages whose function-local imports are all there for start-up time.
LOCAL_IMPORT_MODULES: dict[str, str] = {
    "repro_lib.cli": "each command imports what it runs, so `repro-lib --help` starts fast",
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    local: bool  # inside a function


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def imports_of(name: str, modules: dict[str, Path]) -> list[Edge]:
    """Every edge from ``name`` to another repro_lib module, with where it is."""
    tree = ast.parse(modules[name].read_text())
    base = name if _is_package(name, modules) else name.rpartition(".")[0]
    edges: list[Edge] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    anchor = base.split(".")
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    parent = ".".join(anchor + ([child.module] if child.module else []))
                else:
                    parent = child.module or ""
                # `from . import lab` names a module; `from .lab import connect` a name in one
                targets = [
                    f"{parent}.{alias.name}" if f"{parent}.{alias.name}" in modules else parent
                    for alias in child.names
                ]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # every module's parent package runs first anyway: an import of the
                # root (for ``__version__``) orders nothing, and the root imports
                # nothing at load time (test_the_root_package_imports_nothing_at_load)
                edge = Edge(name, target, child.lineno, inside)
                if target not in ("", name, ROOT) and edge not in edges:
                    edges.append(edge)
            visit(child, inside)

    visit(tree, False)
    return edges


def layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if any(name == m or name.startswith(m + ".") for m in layer):
            return index
    raise AssertionError(f"{name} is in no layer: add it to LAYERS (and docs/architecture.md)")


def graph() -> dict[str, list[Edge]]:
    modules = all_modules()
    return {name: imports_of(name, modules) for name in modules}


def find_cycle(edges: dict[str, list[Edge]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for edge in edges.get(node, []):
            if state.get(edge.target) == 1:
                return stack[stack.index(edge.target) :] + [edge.target]
            if edge.target not in state:
                found = visit(edge.target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _where(edge: Edge) -> str:
    path = all_modules()[edge.source].relative_to(PACKAGE.parent)
    return f"{path}:{edge.line} imports {edge.target}"


def test_every_module_has_a_layer():
    for name in all_modules():
        layer_of(name)


def test_no_import_cycle_counting_imports_inside_functions():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_goes_up_the_layers():
    upward = [
        f"{_where(e)} (layer {layer_of(e.source)} -> {layer_of(e.target)})"
        for edges in graph().values()
        for e in edges
        if layer_of(e.target) > layer_of(e.source)
    ]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_imports_inside_functions_are_only_the_allowed_ones():
    hidden = [
        _where(e)
        for edges in graph().values()
        for e in edges
        if e.local
        and (e.source, e.target) not in LOCAL_IMPORTS
        and not any(e.source == m or e.source.startswith(m + ".") for m in LOCAL_IMPORT_MODULES)
    ]
    assert not hidden, "imports inside functions (move them up, or allow them with a reason):\n" + (
        "\n".join(hidden)
    )


def test_the_allowlist_names_imports_that_exist():
    local = {(e.source, e.target) for edges in graph().values() for e in edges if e.local}
    stale = sorted(set(LOCAL_IMPORTS) - local)
    assert not stale, f"allowed local imports that no longer exist: {stale}"


def test_allowed_local_imports_say_why_in_the_code():
    modules = all_modules()
    for edges in graph().values():
        for e in edges:
            if e.local and (e.source, e.target) in LOCAL_IMPORTS:
                lines = modules[e.source].read_text().splitlines()
                near = " ".join(lines[max(0, e.line - 3) : e.line])
                assert "# why" in near, f"{_where(e)}: add a one-line `# why` comment"


def test_the_root_package_imports_nothing_at_load():
    tree = ast.parse(all_modules()[ROOT].read_text())
    assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]


@pytest.mark.parametrize(
    "source, planted, check",
    [
        # a plain back-import: the plan reaching up into the sweep
        ("plan.py", "from .sweep import run_sweep", "test_no_import_goes_up_the_layers"),
        # the cycle the package used to hide: batch -> ... -> merge, inside a function
        (
            "batch.py",
            "def planted():\n    from .merge import merged_view",
            "test_imports_inside_functions_are_only_the_allowed_ones",
        ),
        (
            "batch.py",
            "def planted():\n    from .merge import merged_view",
            "test_no_import_cycle_counting_imports_inside_functions",
        ),
        # a cycle inside one layer, which the order alone would not catch
        (
            "lab/runs.py",
            "from .cleanup import sweep",
            "test_no_import_cycle_counting_imports_inside_functions",
        ),
    ],
)
def test_a_planted_back_import_is_caught(tmp_path, monkeypatch, source, planted, check):
    copy = tmp_path / "repro_lib"
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (copy / source).write_text((copy / source).read_text() + "\n\n" + planted + "\n")
    monkeypatch.setitem(globals(), "PACKAGE", copy)
    with pytest.raises(AssertionError):
        globals()[check]()


def test_the_architecture_doc_names_every_layer_entry():
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = [
        name
        for layer in LAYERS
        for name in layer
        if name != ROOT and f"`{name.rpartition('.')[2]}" not in doc
    ]
    assert not missing, f"docs/architecture.md does not name {missing}"
