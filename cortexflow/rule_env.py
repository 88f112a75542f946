"""The rules' conda environment, one per version of this checkout's source.

Snakemake keys a conda environment by the content of its env file (an MD5 of
the file's bytes and the absolute ``--conda-prefix``; ``snakemake/deployment/
conda.py``), and creates it once. The rules' env file installs this checkout's
package; were it the same file for every checkout and every edit, the first
environment created under a shared ``--conda-prefix`` would run its code for
every later checkout without a word. So the Snakefile does not hand Snakemake
``workflow/envs/cortexflow.yml`` itself but :func:`render_rule_env`'s copy of
it: the same text under a first line that names the checkout's
:func:`package_fingerprint`, written to a file named by it. A new fingerprint
is a new file content, hence a new environment with that source installed
(non-editable: pip copies the code in, and never caches a wheel built from a
local folder); the same source, in any folder, reuses its environment.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cortexflow import _io
from cortexflow.fingerprint import source_fingerprint

TEMPLATE = Path("workflow") / "envs" / "cortexflow.yml"


def package_fingerprint(checkout: str | Path) -> str:
    """A short hash of what a non-editable install of ``checkout`` puts into an environment.

    The code of every ``.py`` file of its ``cortexflow`` package (docstrings and
    comments left out, as for the rules' rerun fingerprints:
    :func:`cortexflow.fingerprint.code_of`) and its ``pyproject.toml`` (version,
    dependencies, the ``cortexflow`` command).
    """
    checkout = Path(checkout)
    package = checkout / "cortexflow"
    if not (package / "__init__.py").is_file():
        raise FileNotFoundError(f"no cortexflow package in {checkout}")
    digest = hashlib.sha256(source_fingerprint(".", root=package).encode())
    pyproject = checkout / "pyproject.toml"
    digest.update(pyproject.read_bytes() if pyproject.is_file() else b"<absent>")
    return digest.hexdigest()[:16]


def rule_env_text(checkout: str | Path, fingerprint: str | None = None) -> str:
    """The env file of the rules for ``checkout``: its template under a line naming the fingerprint."""
    checkout = Path(checkout)
    fingerprint = fingerprint or package_fingerprint(checkout)
    return (f"# cortexflow source fingerprint {fingerprint}: rendered from {TEMPLATE} by the Snakefile "
            f"(cortexflow.rule_env); edit that file, not this one\n{(checkout / TEMPLATE).read_text()}")


def render_rule_env(checkout: str | Path, out_dir: str | Path) -> Path:
    """Write :func:`rule_env_text` to ``out_dir/cortexflow-<fingerprint>.yml`` (once) and return its absolute path."""
    fingerprint = package_fingerprint(checkout)
    text = rule_env_text(checkout, fingerprint)
    path = (Path(out_dir) / f"cortexflow-{fingerprint}.yml").resolve()
    if not path.is_file() or path.read_text() != text:
        with _io.atomic_write(path) as tmp:
            tmp.write_text(text)
    return path
