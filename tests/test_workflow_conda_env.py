"""The rules' conda environment (workflow/envs/cortexflow.yml, rendered per source fingerprint).

Snakemake copies a rule's env file to <conda-prefix>/<hash>.yaml and runs
`conda env create --file` on the copy; conda writes the pip section to a
requirements file beside it and runs pip there, so relative pip paths resolve
against the copy's folder, not the repository. Without conda here, the tests
replay that last step with pip's own requirements parser, and Snakemake's key
of an environment (an MD5 of the conda prefix and the env file's bytes) with
the same formula.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_packaging import DRIVER_TOOLS, REPO, TEST_TOOLS, _pins, pyproject, requirements_pins

from cortexflow.rule_env import TEMPLATE, package_fingerprint, render_rule_env, rule_env_text

ENV = REPO / TEMPLATE


def _pip_section(text: str) -> list[str]:
    env = yaml.safe_load(text)
    pip = [d for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1
    return pip[0]["pip"]


def _parsed(requirements: list[str], workdir: Path, environ: dict[str, str]) -> list:
    """pip's InstallRequirements for these lines, parsed as conda has pip parse them (in ``workdir``)."""
    from pip._internal.network.session import PipSession
    from pip._internal.req.constructors import install_req_from_parsed_requirement
    from pip._internal.req.req_file import parse_requirements

    req_file = workdir / "condaenv.test.requirements.txt"
    req_file.write_text("\n".join(requirements) + "\n")
    old_cwd, old_env = Path.cwd(), dict(os.environ)
    os.chdir(workdir)
    os.environ.update(environ)
    try:
        return [install_req_from_parsed_requirement(r) for r in parse_requirements(str(req_file), session=PipSession())]
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)


def snakemake_env_hash(env_file: Path, conda_prefix: Path) -> str:
    """Snakemake's key of a file-based conda env (Env._get_hash: prefix, then the file's bytes; no pin or
    post-deploy file here)."""
    md5 = hashlib.md5(usedforsecurity=False)
    md5.update(os.path.realpath(conda_prefix).encode())
    md5.update(env_file.read_bytes())
    return md5.hexdigest()


def test_the_hash_formula_is_snakemakes():
    from snakemake.deployment.conda import Env

    source = inspect.getsource(Env._get_hash)
    assert "os.path.realpath(self._envs_dir)" in source and "md5hash.update(self.content)" in source
    assert not any(ENV.with_name(ENV.stem + suffix).exists() for suffix in (".post-deploy.sh", ".linux-64.pin.txt"))


def test_every_rule_uses_the_rendered_env():
    snakefile = (REPO / "Snakefile").read_text()
    assert re.search(r'RULE_ENV = str\(\s*render_rule_env\(workflow.basedir, Path\("\.snakemake"\) / "cortexflow-envs"\)',
                     snakefile)
    assert "os.environ.update(CORTEXFLOW_SOURCE=str(Path(workflow.basedir).resolve()))" in snakefile
    envs, shells = [], 0
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        envs += re.findall(r"conda:\s*\n\s*(\S+)", text)
        shells += len(re.findall(r"^\s*shell:", text, flags=re.M))
    assert envs and set(envs) == {"RULE_ENV"} and len(envs) == shells


def test_rule_env_pins_are_the_runtime_pins_without_driver_or_test_tools():
    pins = _pins(_pip_section(ENV.read_text()))
    runtime = requirements_pins()
    assert pins == {name: version for name, version in runtime.items() if name not in DRIVER_TOOLS}
    assert not (TEST_TOOLS | DRIVER_TOOLS) & set(pins)
    # what the package needs at run time: its dependencies and the extras its stages import
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    for line in project["dependencies"] + extras["audio"] + extras.get("nsd", []):
        assert canonicalize_name(Requirement(line).name) in pins, line
    env = yaml.safe_load(ENV.read_text())
    assert [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")] == ["python=3.11"]


def test_the_pip_entry_installs_this_checkout_not_editable_from_snakemakes_copy(tmp_path):
    copy_folder = tmp_path / "elsewhere" / ".snakemake" / "conda"
    copy_folder.mkdir(parents=True)
    rendered = render_rule_env(REPO, tmp_path / "rendered")
    lines = _pip_section(rendered.read_text())
    assert not [line for line in lines if line.startswith("-e") or "--editable" in line]
    parsed = _parsed(lines, copy_folder, {"CORTEXFLOW_SOURCE": str(REPO)})
    (project,) = [r for r in parsed if r.link is not None]
    assert not project.editable and Path(project.link.file_path) == REPO
    assert (Path(project.link.file_path) / "pyproject.toml").exists()
    # the old `-e .` would have pointed at the copy's folder, and been editable
    (naive,) = _parsed(["-e ."], copy_folder, {})
    assert naive.editable and Path(naive.link.file_path) == copy_folder


def _checkout(root: Path) -> Path:
    """A copy of what the rendering reads: the package's .py files, pyproject.toml and the env template."""
    shutil.copytree(REPO / "cortexflow", root / "cortexflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    (root / TEMPLATE).parent.mkdir(parents=True)
    shutil.copy(ENV, root / TEMPLATE)
    return root


def test_two_checkouts_get_the_same_env_for_the_same_source_and_another_for_other_source(tmp_path):
    a, b = _checkout(tmp_path / "a"), _checkout(tmp_path / "b")
    prefix = tmp_path / "shared" / "conda"
    env_a, env_b = render_rule_env(a, tmp_path / "a" / ".snakemake"), render_rule_env(b, tmp_path / "b" / ".snakemake")
    assert env_a.read_bytes() == env_b.read_bytes() and env_a.name == env_b.name
    assert snakemake_env_hash(env_a, prefix) == snakemake_env_hash(env_b, prefix)
    assert render_rule_env(a, tmp_path / "a" / ".snakemake") == env_a  # rendering again: the same file

    # an edit of b's code: another file content, so another environment under the shared prefix
    dit = b / "cortexflow" / "models" / "dit.py"
    dit.write_text(dit.read_text() + "\n\nEDITED = 1\n")
    env_b2 = render_rule_env(b, tmp_path / "b" / ".snakemake")
    assert env_b2 != env_b and package_fingerprint(b) != package_fingerprint(a)
    assert snakemake_env_hash(env_b2, prefix) != snakemake_env_hash(env_a, prefix)
    assert env_b2.read_text().splitlines()[1:] == env_a.read_text().splitlines()[1:]  # only the fingerprint differs

    # so does a change of the package metadata (dependencies, version, the command)
    (a / "pyproject.toml").write_text((a / "pyproject.toml").read_text().replace('version = "', 'version = "9'))
    assert package_fingerprint(a) not in (package_fingerprint(b), env_a.stem.split("-")[1])


def test_comments_and_docstrings_do_not_make_a_new_environment(tmp_path):
    a = _checkout(tmp_path / "a")
    before = rule_env_text(a)
    dit = a / "cortexflow" / "models" / "dit.py"
    dit.write_text("# a comment\n" + dit.read_text())
    assert rule_env_text(a) == before
    (a / "cortexflow" / "models" / "new_module.py").write_text("X = 1\n")  # a new file is new code
    assert rule_env_text(a) != before


def test_the_rendered_file_names_its_fingerprint_and_keeps_the_template():
    text = rule_env_text(REPO)
    first, rest = text.split("\n", 1)
    assert first.startswith(f"# cortexflow source fingerprint {package_fingerprint(REPO)}:")
    assert rest == ENV.read_text()
    with pytest.raises(FileNotFoundError, match="no cortexflow package"):
        package_fingerprint(REPO / "workflow")


def test_license_file_matches_pyproject():
    import tomllib

    license_field = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    assert license_field == {"text": "Apache-2.0"}
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
