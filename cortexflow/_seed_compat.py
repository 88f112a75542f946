"""Support for the seed library's (cortexflowx 0.4) module paths.

The modules ``cortexflow.dit``, ``cortexflow.flow_matching``, ``cortexflow.vae``,
``cortexflow.brain_encoder``, ``cortexflow.brain2img``, ``cortexflow.brain2audio``,
``cortexflow.brain2text`` and ``cortexflow._types`` re-export the seed's public
names from where they live in this package. A few seed names have no
counterpart here; importing one raises an ``ImportError`` that says why and
what to use instead (see docs/seed-compat.md), rather than Python's bare
"cannot import name".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping


class SeedNameError(ImportError):
    """A name of the seed library that this package does not provide."""


def missing_names(module: str, reasons: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that raises :class:`SeedNameError` with the reason
    for the seed names in ``reasons`` and ``AttributeError`` for anything else."""

    def __getattr__(name: str) -> object:
        if name in reasons:
            raise SeedNameError(
                f"{module}.{name} (cortexflowx 0.4) is not part of this cortexflow: {reasons[name]}. "
                "See docs/seed-compat.md",
                name=name,
            )
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
