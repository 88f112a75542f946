"""One function per workflow rule.

Each stage reads files, calls the library, and writes its outputs atomically.
The registry below maps rule names to the functions that implement them; the
``cortexflow`` command line (``cortexflow.cli``) exposes every entry as a
subcommand whose options are the function's keyword arguments.

The modules mirror ``workflow/rules/*.smk``:

- ``simulate`` (simulate.smk), ``preprocess`` (preprocess.smk) and ``evaluate``
  (evaluate.smk) re-export stage functions that live beside the library code
  they drive;
- models.smk's rules each have a module: ``vae`` (pretrain_vae,
  encode_latents), ``baseline`` (fit_baseline), ``decoder`` (train_decoder) and
  ``sample`` (sample); ``params`` gathers what they import for their config
  sections (the dataclasses live in ``cortexflow.models.params``);
- ``cross_subject`` (cross_subject.smk): shared training across subjects and
  the data-efficiency curve of a held-out subject.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from pathlib import Path


def _find_stages() -> dict[str, tuple[str, str, str | None]]:
    """rule name -> (module, function, config section), read from this package's source.

    A stage is a public function named ``<rule>_stage`` that a module here defines
    or imports (re-exports); its config section is the module's ``STAGE_SECTIONS``
    (one name, or a dict by rule). Parsed, not imported: the command line lists
    the stages (``cortexflow --help``) without importing torch or any stage.
    """
    found: dict[str, tuple[str, str, str | None]] = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        sections: str | dict | None = None
        functions: list[str] = []
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "STAGE_SECTIONS" for t in node.targets):
                sections = ast.literal_eval(node.value)
            elif isinstance(node, ast.FunctionDef):
                functions.append(node.name)
            elif isinstance(node, ast.ImportFrom):
                functions += [alias.asname or alias.name for alias in node.names]
        for function in functions:
            if function.endswith("_stage") and not function.startswith("_"):
                rule = function[: -len("_stage")]
                section = sections.get(rule) if isinstance(sections, dict) else sections
                found[rule] = (f"cortexflow.stages.{path.stem}", function, section)
    # in the workflow's order: that of the config sections (cortexflow.sections.SECTIONS)
    from cortexflow.sections import SECTIONS

    order = list(SECTIONS)
    return dict(sorted(found.items(), key=lambda item: order.index(item[1][2]) if item[1][2] in order else len(order)))


# rule name -> (module, function, config section its ``params`` come from)
STAGES: dict[str, tuple[str, str, str | None]] = _find_stages()


def get_stage(name: str) -> Callable:
    """The function implementing rule ``name`` (dashes or underscores)."""
    key = name.replace("-", "_")
    if key not in STAGES:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(sorted(STAGES))}")
    module, func, _ = STAGES[key]
    return getattr(importlib.import_module(module), func)
