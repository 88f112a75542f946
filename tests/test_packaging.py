"""The pinned environments: runtime (requirements.txt, environment.yml) and development (requirements-dev.txt).

requirements.txt (.venv of `make run`) and environment.yml (a cluster's driver)
pin the same runtime versions, with no test tools; requirements-dev.txt adds
the test tools on top (`make test`). Together the pins satisfy the package's own
requirements in pyproject.toml, whose console script is the command every
workflow rule runs.
"""

from __future__ import annotations

import shutil
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
        if requirement.url:  # the project itself (`cortexflow @ file://...`), not a pin
            continue
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"not an exact pin: {line!r}"
        pins[canonicalize_name(requirement.name)] = specs[0].version
    return pins


# what only the tests need; never in a runtime environment
TEST_TOOLS = {"pytest", "pytest-xdist", "snakefmt", "bids-validator-deno"}
# what only the process that runs Snakemake needs; never in the rules' environment
DRIVER_TOOLS = {"snakemake", "snakemake-executor-plugin-slurm", "jsonschema"}


def requirements_pins() -> dict[str, str]:
    """The runtime pins (requirements.txt)."""
    return _pins((REPO / "requirements.txt").read_text().splitlines())


def dev_pins() -> dict[str, str]:
    """The pins requirements-dev.txt adds to the runtime ones."""
    return _pins((REPO / "requirements-dev.txt").read_text().splitlines())


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
    runtime, dev = requirements_pins(), dev_pins()
    project = pyproject()["project"]
    extras = project.get("optional-dependencies", {})
    # the runtime pins hold the package's dependencies and its runtime extras; the test extra is in the dev pins
    declared = [(line, runtime) for line in project["dependencies"]]
    declared += [(line, dev if extra == "test" else runtime) for extra, lines in extras.items() for line in lines]
    assert {canonicalize_name(Requirement(line).name) for line in extras["test"]} == TEST_TOOLS
    for line, pins in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is required by pyproject.toml but not pinned where it belongs"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"pin {name}=={pins[name]} does not satisfy pyproject.toml's {line!r}"
        )


def test_workflow_tools_are_runtime_pins_and_test_tools_dev_pins():
    runtime, dev = requirements_pins(), dev_pins()
    assert DRIVER_TOOLS | {"pyyaml", "torch"} <= set(runtime)
    assert set(dev) == TEST_TOOLS
    lines = [line.strip() for line in (REPO / "requirements-dev.txt").read_text().splitlines()]
    assert "-r requirements.txt" in lines  # the dev environment is the runtime plus the test tools


def test_runtime_environments_carry_no_test_tools():
    assert not TEST_TOOLS & set(requirements_pins())
    assert not TEST_TOOLS & set(_pins(environment_pip()))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_installs_the_runtime_only_and_make_test_both():
    def recipe(target: str) -> str:  # what make would run, from scratch (-B), without running it (-n)
        proc = subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    run, test = recipe("run"), recipe("test")
    assert "-r requirements.txt" in run and "requirements-dev.txt" not in run and "snakemake" in run
    assert "-r requirements.txt" in test and "-r requirements-dev.txt" in test and "pytest" in test
    # separate stamps: `make test` after `make run` only adds the dev pins
    assert ".installed-dev" in test and ".installed-dev" not in run


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
    """The Snakefile and workflow/rules/*.smk as `snakefmt` writes them (pinned in requirements-dev.txt)."""
    files = [str(REPO / "Snakefile"), *map(str, sorted((REPO / "workflow" / "rules").glob("*.smk")))]
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "\nrun: snakefmt Snakefile workflow/rules/"
