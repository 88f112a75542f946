"""Shared pytest settings and fixtures for the test suite."""

from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

import pytest


def pytest_configure(config):
    """One disk cache of parsed sources (cortexflow.fingerprint) for the whole run, shared by the xdist
    workers and every Snakemake the tests start (they inherit the environment), kept in the run's own
    cache folder instead of the user's ~/.cache. A test that needs another sets its own."""
    os.environ.setdefault("CORTEXFLOW_CACHE_DIR", str(Path(config.rootpath) / ".pytest_cache" / "cortexflow"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Torch on one thread: tiny models run fastest so, and the test machine is shared.

    Only where the test module uses torch (it is imported already), so tests
    that never touch torch do not pay for importing it.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(session, config, items):
    """Run the modules that hold slow (workflow) tests first, the one with the
    most slow tests first, each module in its own file order. With pytest-xdist
    (``-n 2 --dist loadfile``) the long workflow runs then start at once on both
    workers and the short tests fill in around them, instead of a long run
    starting last; without xdist only the order of whole modules changes."""
    slow = collections.Counter(item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.nodeid.split("::")[0]])
