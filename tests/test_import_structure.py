"""The package's import graph is layered: no cycles, and no library module imports a stage.

Read from the source with ``ast`` (nothing is imported), every import counts,
at module level or inside a function (a lazy import still runs, later). A
module that imports ``cortexflow.a.b`` also runs the package ``cortexflow.a``'s
``__init__``, so that edge is in the graph too. The layers, top to bottom:

- ``cortexflow.cli`` and ``cortexflow.stages`` (files in, files out; the command line);
- the library: ``models``, ``data``, ``preprocess``, ``training``, ``evaluation``;
- the plumbing every layer uses: ``errors``, ``_io``, ``devices``, ``sections``, ``config``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cortexflow"
LIBRARY = ("models", "data", "preprocess", "training", "evaluation")
TOP = ("cortexflow.stages", "cortexflow.cli")
PLUMBING = ("cortexflow.errors", "cortexflow._io", "cortexflow.devices", "cortexflow.sections", "cortexflow.config")


def _modules(package: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package by its ``__init__``)."""
    modules = {}
    for file in package.rglob("*.py"):
        parts = (package.name, *file.relative_to(package).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return modules


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, with the parent packages each import runs."""
    modules = _modules(package)

    def known(name: str) -> str | None:  # the module itself, or the package whose attribute it is
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        own_package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(file.read_bytes(), filename=str(file))):
            if isinstance(node, ast.Import):
                targets |= {known(alias.name) for alias in node.names if alias.name.split(".")[0] == package.name}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(own_package[: len(own_package) - node.level + 1] + ([base] if base else []))
                if base.split(".")[0] != package.name:
                    continue
                for alias in node.names:  # `from pkg import submodule` imports the submodule
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else known(base))
        targets.discard(None)
        for target in list(targets):
            targets |= {p for p in _parents(target) if p in modules}
        targets -= {name, *_parents(name)}  # a module's own packages are already running when it runs
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def _in(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_cycle_finder_finds_a_cycle_and_the_graph_sees_lazy_and_relative_imports(tmp_path):
    package = tmp_path / "cortexflow"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import low\n")
    (package / "sub" / "low.py").write_text("def f():\n    from cortexflow.high import g\n")
    (package / "high.py").write_text("import numpy\nfrom cortexflow.sub.low import f\n")
    graph = import_graph(package)
    assert graph["cortexflow.sub.low"] == {"cortexflow.high"}  # the lazy import inside f
    assert graph["cortexflow.high"] == {"cortexflow.sub.low", "cortexflow.sub"}  # and the package it runs
    assert graph["cortexflow.sub"] == {"cortexflow.sub.low"}  # the relative import
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and {"cortexflow.high", "cortexflow.sub.low"} <= set(cycle)
    (package / "sub" / "low.py").write_text("def f():\n    pass\n")
    assert find_cycle(import_graph(package)) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "cortexflow.stages.decoder" in graph["cortexflow.stages.cross_subject"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("layer", LIBRARY)
def test_no_library_module_imports_a_stage_or_the_command_line(layer):
    graph = import_graph()
    modules = [m for m in graph if _in(m, [f"cortexflow.{layer}"])]
    assert modules
    upward = {m: sorted(t for t in graph[m] if _in(t, TOP)) for m in modules}
    assert not any(upward.values()), {m: t for m, t in upward.items() if t}


def test_the_plumbing_imports_only_plumbing():
    graph = import_graph()
    for module in PLUMBING:
        assert graph[module] <= set(PLUMBING) | {"cortexflow"}, (module, sorted(graph[module] - set(PLUMBING)))


def test_the_config_sections_registry_names_no_stage_module():
    """sections.SECTIONS imports each section's dataclass by name when the config is checked: a lazy import too."""
    tree = ast.parse((PACKAGE / "sections.py").read_text())
    (registry,) = [ast.literal_eval(node.value) for node in tree.body
                   if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "SECTIONS"]
    modules = {target.split(":")[0] for target in registry.values()}
    assert modules and all(m in import_graph() for m in modules), modules
    assert not [m for m in modules if _in(m, TOP)], modules


def test_what_the_workflow_imports_to_build_its_dag_imports_neither_torch_nor_scipy_stats():
    """Every ``snakemake`` start (dry runs, each test's workflow, a cluster's driver) runs the
    Snakefile's module-level ``cortexflow`` imports and checks the config; torch and scipy.stats
    cost seconds of CPU there (measured: 6.4 s and 2.4 s of import time under load) and are
    needed only inside the jobs. The imports are read from the workflow's files, so a new one
    is covered too."""
    import re
    import subprocess
    import sys

    repo = PACKAGE.parent
    files = [repo / "Snakefile", *sorted((repo / "workflow").rglob("*.smk"))]
    lines = sorted({m.group(0).strip() for f in files
                    for m in re.finditer(r"^from cortexflow[.\w]* import [^\n(]+$", f.read_text(), re.M)})
    assert any("validate_config" in line for line in lines) and any("curve_path" in line for line in lines)
    code = "\n".join([*lines, "import sys, yaml",
                      "validate_config(yaml.safe_load(open('config.yaml')))",
                      "print(sorted(m for m in ('torch', 'scipy.stats', 'nilearn') if m in sys.modules))"])
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
