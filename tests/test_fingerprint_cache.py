"""The disk cache of parsed sources behind cortexflow.fingerprint: same values, and no parsing once warm."""

from __future__ import annotations

import pytest

from cortexflow import fingerprint
from cortexflow.fingerprint import source_fingerprint, stage_sources


def _fresh_process():
    """Forget what this process parsed, as a new Snakemake start would."""
    fingerprint._code_of_source.cache_clear()
    fingerprint._imports_of_source.cache_clear()
    fingerprint._stage_module_files.cache_clear()


@pytest.fixture
def pkg(tmp_path):
    root = tmp_path / "cortexflow"
    (root / "models").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "models" / "__init__.py").write_text("")
    (root / "models" / "dit.py").write_text('"""DiT."""\nfrom cortexflow.models import vae\n\ndef f(x):\n    return 2 * x\n')
    (root / "models" / "vae.py").write_text("def g(y):\n    return y + 1\n")
    return root


def _values(root):
    _fresh_process()
    return source_fingerprint("models/", root=root), fingerprint._imports(root / "models" / "dit.py", root)


def test_a_warm_cache_gives_the_same_values_without_parsing(pkg, tmp_path, monkeypatch):
    monkeypatch.setenv("CORTEXFLOW_CACHE_DIR", "")
    uncached = _values(pkg)
    assert uncached[1] == [("cortexflow.models", ("vae",))]
    monkeypatch.setenv("CORTEXFLOW_CACHE_DIR", str(tmp_path / "cache"))
    assert _values(pkg) == uncached  # cold: parses and writes
    assert len(list((tmp_path / "cache").rglob("*"))) > 4

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed although the cache holds the file")

    monkeypatch.setattr(fingerprint.ast, "parse", no_parsing)
    assert _values(pkg) == uncached  # warm: read from disk only


def test_an_edit_is_seen_through_a_warm_cache(pkg, tmp_path, monkeypatch):
    monkeypatch.setenv("CORTEXFLOW_CACHE_DIR", str(tmp_path / "cache"))
    before = _values(pkg)
    (pkg / "models" / "vae.py").write_text("def g(y):\n    return y + 2\n")
    assert _values(pkg)[0] != before[0]
    (pkg / "models" / "vae.py").write_text("def g(y):\n    return y + 1\n")
    assert _values(pkg) == before
    (pkg / "models" / "dit.py").write_text("from cortexflow.models import vae, dit\n")
    assert _values(pkg)[1] == [("cortexflow.models", ("vae", "dit"))]


def test_damaged_entries_are_parsed_again_and_rewritten(pkg, tmp_path, monkeypatch):
    monkeypatch.setenv("CORTEXFLOW_CACHE_DIR", "")
    uncached = _values(pkg)
    monkeypatch.setenv("CORTEXFLOW_CACHE_DIR", str(tmp_path / "cache"))
    _values(pkg)
    entries = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    for n, entry in enumerate(entries):  # a flipped byte, a truncation, an empty file
        data = entry.read_bytes()
        entry.write_bytes([data[:-1] + b"#", data[:40], b""][n % 3])
    assert _values(pkg) == uncached
    assert all(fingerprint._cache_read(p.parent.name, p.name) is not None for p in entries)  # rewritten


def test_an_unusable_cache_folder_only_loses_the_cache(pkg, tmp_path, monkeypatch):
    monkeypatch.setenv("CORTEXFLOW_CACHE_DIR", "")
    uncached = _values(pkg)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("CORTEXFLOW_CACHE_DIR", str(blocker))
    assert _values(pkg) == uncached
    assert blocker.read_text().startswith("a file")


def test_the_real_package_s_stage_sources_are_the_same_through_the_cache(tmp_path, monkeypatch):
    from cortexflow.stages import STAGES

    monkeypatch.setenv("CORTEXFLOW_CACHE_DIR", "")
    _fresh_process()
    uncached = {rule: (stage_sources(rule), fingerprint.stage_fingerprint(rule)) for rule in STAGES}
    monkeypatch.setenv("CORTEXFLOW_CACHE_DIR", str(tmp_path / "cache"))
    for _ in range(2):  # cold, then warm
        _fresh_process()
        assert {rule: (stage_sources(rule), fingerprint.stage_fingerprint(rule)) for rule in STAGES} == uncached
    _fresh_process()
