"""One environment, written down twice: requirements.txt (.venv) and environment.yml (clusters).

Both must pin the same versions, and the pins must satisfy the package's own
requirements in pyproject.toml, whose console script is the command every
workflow rule runs.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"not an exact pin: {line!r}"
        pins[canonicalize_name(requirement.name)] = specs[0].version
    return pins


def requirements_pins() -> dict[str, str]:
    return _pins((REPO / "requirements.txt").read_text().splitlines())


def environment() -> dict:
    return yaml.safe_load((REPO / "environment.yml").read_text())


def environment_pip() -> list[str]:
    pip = [d for d in environment()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml must have one pip: section"
    return pip[0]["pip"]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_environment_yml_pins_equal_requirements_txt():
    assert _pins(environment_pip()) == requirements_pins()


def test_environment_installs_the_package_and_its_python():
    assert "-e ." in environment_pip()
    python = [d for d in environment()["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == ["python=3.11"]
    assert pyproject()["project"]["requires-python"] == ">=3.11"


def test_pins_satisfy_the_package_requirements():
    pins = requirements_pins()
    project = pyproject()["project"]
    declared = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        declared += extra
    for line in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is required by pyproject.toml but not pinned"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"pin {name}=={pins[name]} does not satisfy pyproject.toml's {line!r}"
        )


def test_workflow_tools_are_pinned():
    pins = requirements_pins()
    for name in ("snakemake", "snakemake-executor-plugin-slurm", "jsonschema", "pyyaml", "pytest"):
        assert name in pins, name


def test_console_script_is_declared_and_installed():
    assert pyproject()["project"]["scripts"]["cortexflow"] == "cortexflow.cli:main"
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "cortexflow"]
    assert script.value == "cortexflow.cli:main"
    from cortexflow.cli import main

    assert script.load() is main


def test_every_public_name_resolves_to_the_object_of_its_module():
    import importlib

    import cortexflow

    for name in cortexflow.__all__:
        if name == "__version__":
            continue
        module = importlib.import_module(cortexflow._PUBLIC[name])
        assert getattr(cortexflow, name) is getattr(module, name), name
    with pytest.raises(AttributeError, match="no attribute 'NotAName'"):
        cortexflow.NotAName  # noqa: B018


def test_every_third_party_import_of_the_package_is_declared():
    """A module imported anywhere in cortexflow (lazily included) must come from a declared dependency."""
    import ast
    import sys
    from importlib.metadata import packages_distributions

    imported = set()
    for source in (REPO / "cortexflow").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"cortexflow", "__future__"}
    project = pyproject()["project"]
    declared = {canonicalize_name(Requirement(line).name) for line in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {canonicalize_name(Requirement(line).name) for line in extra}
    distributions = packages_distributions()
    for module in sorted(third_party):
        names = {canonicalize_name(d) for d in distributions.get(module, [])}
        assert names & declared, f"cortexflow imports {module!r} (from {sorted(names)}) but pyproject.toml does not declare it"


def test_the_workflow_files_are_snakefmt_clean():
    """The Snakefile and workflow/rules/*.smk as `snakefmt` writes them (pinned in requirements.txt)."""
    files = [str(REPO / "Snakefile"), *map(str, sorted((REPO / "workflow" / "rules").glob("*.smk")))]
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "\nrun: snakefmt Snakefile workflow/rules/"
