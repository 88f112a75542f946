"""The rules' conda environment (workflow/envs/cortexflow.yml) can install the project.

Snakemake copies a rule's env file to <conda-prefix>/<hash>.yaml and runs
`conda env create --file` on the copy; conda writes the pip section to a
requirements file beside it and runs pip there, so relative pip paths resolve
against the copy's folder, not the repository. Without conda here, the test
replays that last step with pip's own requirements parser: from a folder like
.snakemake/conda/, the pip entry must name this checkout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from test_packaging import REPO, _pins, requirements_pins

ENV = REPO / "workflow" / "envs" / "cortexflow.yml"


def _pip_section(path: Path) -> list[str]:
    env = yaml.safe_load(path.read_text())
    pip = [d for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1
    return pip[0]["pip"]


def _editable_paths(requirements: list[str], workdir: Path, environ: dict[str, str]) -> list[Path]:
    """Where pip, run in ``workdir`` on these lines (as conda writes them), looks for editable projects."""
    from pip._internal.network.session import PipSession
    from pip._internal.req.req_file import parse_requirements

    req_file = workdir / "condaenv.test.requirements.txt"
    req_file.write_text("\n".join(requirements) + "\n")
    old_cwd, old_env = Path.cwd(), dict(os.environ)
    os.chdir(workdir)
    os.environ.update(environ)
    try:
        parsed = list(parse_requirements(str(req_file), session=PipSession()))
        paths = [Path(os.path.abspath(r.requirement)) for r in parsed if r.is_editable]  # relative to pip's cwd
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
    return paths


def test_every_rule_uses_the_workflow_env_and_the_file_exists():
    uses = []
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        uses += [(smk, m) for m in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text())]
    assert uses and all((smk.parent / path).resolve() == ENV for smk, path in uses), uses


def test_workflow_env_pins_equal_requirements_txt_and_its_python():
    assert _pins(_pip_section(ENV)) == requirements_pins()
    env = yaml.safe_load(ENV.read_text())
    assert [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")] == ["python=3.11"]


def test_the_pip_entry_finds_the_checkout_from_snakemakes_copy(tmp_path):
    copy_folder = tmp_path / "elsewhere" / ".snakemake" / "conda"
    copy_folder.mkdir(parents=True)
    # what the Snakefile sets before Snakemake creates environments
    snakefile = (REPO / "Snakefile").read_text()
    assert 'os.environ.update(CORTEXFLOW_SOURCE=str(Path(workflow.basedir).resolve()))' in snakefile
    environ = {"CORTEXFLOW_SOURCE": str(REPO)}
    (project,) = _editable_paths(_pip_section(ENV), copy_folder, environ)
    assert project == REPO and (project / "pyproject.toml").exists()
    # the root environment.yml's `-e .` (fine for `conda env create -f environment.yml`
    # in the checkout) would have pointed at the copy's folder
    (naive,) = _editable_paths(["-e ."], copy_folder, environ)
    assert naive == copy_folder


def test_license_file_matches_pyproject():
    import tomllib

    license_field = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    assert license_field == {"text": "Apache-2.0"}
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
