"""Errors raised on bad input.

Every message names the file (when there is one), what is wrong with it and
what to do about it, so a user can fix the input without reading the code.
"""

from __future__ import annotations

from pathlib import Path


class CortexflowInputError(ValueError):
    """Input data or configuration that cortexflow cannot use."""

    def __init__(self, problem: str, *, path: str | Path | None = None, fix: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        parts = []
        if self.path is not None:
            parts.append(f"{self.path}: ")
        parts.append(problem.rstrip("."))
        parts.append(".")
        if fix:
            parts.append(f" Fix: {fix.rstrip('.')}.")
        super().__init__("".join(parts))
