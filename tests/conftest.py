"""Shared pytest settings and fixtures for the test suite."""

from __future__ import annotations

import sys

import pytest

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
