"""Fingerprints of the source code each workflow stage runs.

Snakemake reruns a job when its params, inputs or shell command change, but it
cannot see the Python modules the command imports (docs/design-notes.md,
"Reruns after edits"). Each rule therefore puts ``stage_fingerprint(rule)`` into its params:
a hash of exactly the ``cortexflow`` source files that stage imports (found by
following its imports, :func:`stage_sources`), so an
edit of ``models/dit.py`` reruns ``train_decoder`` and what follows, and nothing
upstream.

Only the code of ``.py`` files counts (not timestamps, not ``__pycache__``),
so a checkout on another machine or a ``touch`` does not rerun anything; nor
does an edit of comments, docstrings or layout (each file is hashed as its
syntax tree without docstrings, :func:`code_of`), which cannot change what a
stage computes but would otherwise rerun a 25-minute study from its first
rule. A file that does not parse is hashed as its bytes.

Parsing costs: every Snakemake start (a dry run, a ``--summary``, each test's
run) fingerprints the whole package and every rule, about 3 s of CPU for 88
files. What a file's syntax tree gives (its code text, its imports) depends
only on its bytes and the Python that parses it, so it is also kept on disk,
keyed by both (:func:`cache_dir`): a later start reads it instead of parsing.
The values are the same with or without the cache.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

# bump when what is cached per file changes form
_CACHE_FORMAT = 1


def cache_dir() -> Path | None:
    """Where parsed-source results are kept: ``$CORTEXFLOW_CACHE_DIR`` (empty: no disk cache), else
    ``$XDG_CACHE_HOME/cortexflow`` or ``~/.cache/cortexflow``; one subfolder per Python build, since
    ``ast.unparse``'s text may differ between versions."""
    env = os.environ.get("CORTEXFLOW_CACHE_DIR")
    if env == "":
        return None
    if env:
        base = Path(env)
    else:
        try:  # no home directory (a bare batch environment): no disk cache
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cortexflow"
        except RuntimeError:
            return None
    return base / f"fingerprint-v{_CACHE_FORMAT}-{sys.implementation.cache_tag}-{platform.python_version()}"


def _cache_path(kind: str, key: str) -> Path | None:
    folder = cache_dir()
    return None if folder is None else folder / kind / key


def _cache_read(kind: str, key: str) -> bytes | None:
    """The entry's data, or None when it is absent, unreadable or fails its checksum."""
    path = _cache_path(kind, key)
    try:
        entry = None if path is None else path.read_bytes()
    except OSError:
        return None
    if entry is None or len(entry) < 65 or entry[64:65] != b"\n":
        return None
    data = entry[65:]
    return data if hashlib.sha256(data).hexdigest().encode() == entry[:64] else None


def _cache_write(kind: str, key: str, data: bytes) -> None:
    """Best effort, atomic (temporary name, then rename) and checksummed: a read-only or full disk
    only loses the cache, and a damaged entry is parsed again."""
    path = _cache_path(kind, key)
    if path is None:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(hashlib.sha256(data).hexdigest().encode() + b"\n" + data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)

# Shared plumbing left out of every fingerprint on purpose: it moves files,
# arguments and config values (whose values are in each rule's params), not
# numbers; the stage table only names the stages.
PLUMBING = ("__init__.py", "_io.py", "errors.py", "cli.py", "config.py", "sections.py", "fingerprint.py",
            "stages/__init__.py")


def _module_file(root: Path, dotted: str) -> Path | None:
    """The source file of ``cortexflow.a.b`` under ``root`` (a module or a package's __init__)."""
    parts = dotted.split(".")[1:]
    if not parts:
        return root / "__init__.py"
    module, package = root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")
    return module if module.is_file() else package if package.is_file() else None


def _imports(file: Path, root: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(module, names) of every ``cortexflow`` import in ``file``, at any depth (lazy imports run too)."""
    package = ("cortexflow", *file.relative_to(root).with_suffix("").parts)[:-1]  # the file's package
    return list(_imports_of_source(file.read_bytes(), package, str(file)))


@functools.lru_cache(maxsize=512)
def _imports_of_source(data: bytes, package: tuple[str, ...], filename: str) -> tuple:
    # cached in memory (every rule's import walk crosses the same shared modules) and on disk
    key = hashlib.sha256(data + b"\0" + ".".join(package).encode()).hexdigest()
    cached = _cache_read("imports", key)
    if cached is not None:
        try:
            return tuple((base, tuple(names)) for base, names in json.loads(cached))
        except (ValueError, TypeError):
            pass  # a damaged entry: parse again and rewrite it
    found = _parse_imports(data, package, filename)
    _cache_write("imports", key, json.dumps(found).encode())
    return found


def _parse_imports(data: bytes, package: tuple[str, ...], filename: str) -> tuple:
    tree = ast.parse(data, filename=filename)
    package = list(package)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, ()) for a in node.names if a.name.split(".")[0] == "cortexflow"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "cortexflow":
                found.append((base, tuple(a.name for a in node.names)))
    return tuple(found)


@functools.lru_cache(maxsize=None)
def _stage_module_files(rule: str, root: Path) -> tuple[str, ...]:
    from cortexflow.stages import STAGES  # a table of strings: imports no stage

    try:
        module, function, _ = STAGES[rule]
    except KeyError:
        raise KeyError(f"no stage for rule {rule!r}; known: {', '.join(sorted(STAGES))}") from None
    start = _module_file(root, module)
    # a stage module that re-exports the function: start where it is defined
    for base, names in _imports(start, root):
        if function in names and _module_file(root, base) is not None:
            start = _module_file(root, base)
            break
    seen: set[Path] = set()
    todo = [start]
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        for base, names in _imports(file, root):
            targets = [_module_file(root, f"{base}.{n}") for n in names] if names else []
            # `from package import submodule` imports the submodule; `from module import name` the module
            targets = [t for t in targets if t is not None] or [_module_file(root, base)]
            todo += [t for t in targets if t is not None and t not in seen
                     and t.relative_to(root).as_posix() not in PLUMBING]  # nor what plumbing imports
    rel = {f.relative_to(root).as_posix() for f in seen}
    return tuple(sorted(r for r in rel if r not in PLUMBING or r == start.relative_to(root).as_posix()))


def stage_sources(rule: str, root: str | Path | None = None) -> tuple[str, ...]:
    """The cortexflow source files (relative to the package) that rule ``rule``'s stage runs.

    Found by following the ``cortexflow`` imports (module level and inside
    functions) from the module that defines the stage function, statically
    (nothing is imported); package ``__init__`` files that only re-export, and
    the shared plumbing in :data:`PLUMBING`, are left out.
    """
    return _stage_module_files(rule, (package_root() if root is None else Path(root)).resolve())


def package_root() -> Path:
    """The folder of the ``cortexflow`` package that is imported (and therefore run)."""
    return Path(__file__).resolve().parent


def _source_files(root: Path, module_path: str) -> list[Path]:
    path = root / module_path
    if path.is_dir():
        return sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
    return [path]


def code_of(file: Path) -> bytes:
    """What of ``file`` runs: its syntax tree without comments, docstrings or layout, as source text.

    ``ast.unparse`` of the tree with every module, class and function docstring
    removed; a file that is not valid Python (it will fail on import anyway) is
    returned as its bytes. The text can differ between Python minor versions
    for the same file (then a study moved to another Python reruns, as it
    should check its numbers anyway), never between two runs of one Python.
    """
    return _code_of_source(file.read_bytes())


@functools.lru_cache(maxsize=512)
def _code_of_source(data: bytes) -> bytes:
    # Keyed by content: stages share most files, and the workflow fingerprints every rule (and each
    # train_decoder job's checkpoint folder), so each distinct file is parsed once per process, and once
    # per Python build on this machine (the disk cache).
    key = hashlib.sha256(data).hexdigest()
    cached = _cache_read("code", key)
    if cached is not None:
        return cached
    code = _unparse_without_docstrings(data)
    _cache_write("code", key, code)
    return code


def _unparse_without_docstrings(data: bytes) -> bytes:
    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError):
        return data
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree).encode()


def source_fingerprint(*module_paths: str, root: str | Path | None = None) -> str:
    """A short hash of the content of the given cortexflow source files/packages.

    ``module_paths`` are relative to the package folder (``"models/dit.py"``,
    ``"training/"``); a folder stands for every ``.py`` file below it. The hash
    covers each file's path relative to the package and its code
    (:func:`code_of`), so renaming, adding or editing the code of a file changes
    it, editing its comments or docstrings does not; a missing path is hashed
    as absent.
    """
    if not module_paths:
        raise ValueError("source_fingerprint needs at least one module path")
    root = package_root() if root is None else Path(root)
    digest = hashlib.sha256()
    seen: set[Path] = set()
    for module_path in module_paths:
        for file in _source_files(root, module_path):
            if file in seen:
                continue
            seen.add(file)
            digest.update(file.relative_to(root).as_posix().encode())
            digest.update(b"\0")
            digest.update(code_of(file) if file.is_file() else b"<absent>")
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def stage_fingerprint(rule: str, root: str | Path | None = None) -> str:
    """The fingerprint of the sources that workflow rule ``rule`` depends on."""
    return source_fingerprint(*stage_sources(rule, root), root=root)
