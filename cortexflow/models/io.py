"""Save a model with its configuration, and rebuild it from the file alone.

A model file is a ``torch.save``d dict (written atomically through
``cortexflow._io``):

    format             "cortexflow-model/1"
    class              import path of the model class ("cortexflow.models.brain2img.Brain2Image")
    config_class       import path of its config dataclass
    config             dataclasses.asdict(model.config), nested configs as dicts
    state_dict         model.state_dict()
    extra              anything JSON-like the caller adds (training step, data ids, ...)
    cortexflow_version the version that wrote it

:func:`load_model` imports the class, rebuilds the (nested) config dataclass
from the dict, calls ``cls.from_config(config)`` and loads the weights, so a
later workflow stage needs nothing but the path. It reads with
``torch.load(weights_only=True)`` (no pickled code runs) and imports classes
only from the ``cortexflow`` package.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import types
import typing
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cortexflow._io import load_torch, save_torch
from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.models.io")

__all__ = ["FORMAT", "save_model", "load_model", "read_model_file", "config_from_dict", "module_spec", "module_from_spec"]

FORMAT = "cortexflow-model/1"
_ALLOWED_PACKAGE = "cortexflow"


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _import(path: str, *, file: str | Path | None = None) -> type:
    module_name, _, name = str(path).rpartition(".")
    if not module_name or module_name.split(".")[0] != _ALLOWED_PACKAGE:
        raise CortexflowInputError(
            f"refusing to import {path!r}: model files may only name classes of the cortexflow package",
            path=file,
            fix="save models whose class (and config class) live in cortexflow",
        )
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise CortexflowInputError(
            f"the class {path!r} named in the file does not exist in this cortexflow ({err})",
            path=file,
            fix="load the file with the cortexflow version that wrote it, or retrain",
        ) from err
    return obj


def _check_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise CortexflowInputError(
            f"{type(model).__name__} has no dataclass `config`, so it cannot be rebuilt from a file",
            fix="save cortexflow models (each has a .config dataclass and from_config)",
        )
    if not hasattr(type(model), "from_config"):
        raise CortexflowInputError(f"{type(model).__name__} has no from_config classmethod")
    return config


def module_spec(module: nn.Module) -> dict[str, Any]:
    """``{"class", "config_class", "config"}``: what :func:`module_from_spec` needs to
    rebuild ``module`` (untrained). Used for sub-modules chosen at run time,
    such as a pipeline's brain encoder."""
    config = _check_config(module)
    return {"class": _qualname(type(module)), "config_class": _qualname(type(config)), "config": dataclasses.asdict(config)}


def module_from_spec(spec: dict[str, Any], *, file: str | Path | None = None) -> nn.Module:
    """Rebuild a module (fresh weights) from :func:`module_spec`'s dict."""
    try:
        cls_path, config_path, config = spec["class"], spec["config_class"], spec["config"]
    except (KeyError, TypeError) as err:
        raise CortexflowInputError(f"a module spec lacks {err}", path=file) from err
    cls = _import(cls_path, file=file)
    config_cls = _import(config_path, file=file)
    return cls.from_config(config_from_dict(config_cls, config, file=file))


def config_from_dict(cls: type, data: dict[str, Any], *, file: str | Path | None = None) -> Any:
    """Rebuild dataclass ``cls`` from ``dataclasses.asdict`` output, recursing
    into fields typed as dataclasses (or ``Dataclass | None``) and turning lists
    back into tuples where the field is a tuple."""
    if not isinstance(data, dict):
        raise CortexflowInputError(f"the config of {cls.__name__} is not a dict", path=file)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CortexflowInputError(
            f"the file's {cls.__name__} has fields this cortexflow does not know: {unknown}",
            path=file,
            fix="load it with the cortexflow version that wrote it",
        )
    kwargs = {name: _convert(hints.get(name), value, file) for name, value in data.items()}
    return cls(**kwargs)


def _convert(hint: Any, value: Any, file: str | Path | None) -> Any:
    if value is None or hint is None:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        dataclass_options = [a for a in options if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(dataclass_options) == 1:
            return config_from_dict(dataclass_options[0], value, file=file)
        return value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value, file=file)
    if (hint is tuple or origin is tuple) and isinstance(value, list):
        return tuple(value)
    return value


def save_model(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (class, config, weights, ``extra``) to ``path`` atomically."""
    from cortexflow import __version__

    config = _check_config(model)
    payload = {
        "format": FORMAT,
        "class": _qualname(type(model)),
        "config_class": _qualname(type(config)),
        "config": dataclasses.asdict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
        "cortexflow_version": __version__,
    }
    out = save_torch(path, payload)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("saved %s (%.2f M parameters) to %s", type(model).__name__, n_params / 1e6, out)
    return out


def read_model_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw dict of a model file, validated (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CortexflowInputError("model file does not exist", path=path, fix="run the stage that writes it first")
    payload = load_torch(path, "model file", map_location=map_location,
                          fix="the file is corrupt or was not written by cortexflow.models.save_model; "
                              "delete it and rerun the stage")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CortexflowInputError(
            "not a cortexflow model file (no 'format' marker)",
            path=path,
            fix="write models with cortexflow.models.save_model",
        )
    missing = [k for k in ("class", "config_class", "config", "state_dict") if k not in payload]
    if missing:
        raise CortexflowInputError(f"model file lacks {missing}", path=path, fix="the file is corrupt; rerun the stage")
    return payload


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu", *, return_extra: bool = False
) -> nn.Module | tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved at ``path`` (in eval mode); with ``return_extra``, also its ``extra`` dict."""
    payload = read_model_file(path, map_location)
    cls = _import(payload["class"], file=path)
    config = config_from_dict(_import(payload["config_class"], file=path), payload["config"], file=path)
    model = cls.from_config(config)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise CortexflowInputError(
            f"the weights do not fit the model the config describes ({str(err).splitlines()[0]})",
            path=path,
            fix="the file is inconsistent or from another cortexflow version; retrain",
        ) from err
    model.to(map_location).eval()
    log.info("loaded %s from %s", cls.__name__, path)
    return (model, dict(payload.get("extra") or {})) if return_extra else model
