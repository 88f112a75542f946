"""Config sections as typed dataclasses: the one unknown-key and type check.

Every stage section of the workflow config (``glm``, ``rois``, ...) has a
dataclass that holds its keys, types and defaults. :func:`from_mapping` builds
one from the config's mapping, refusing unknown keys and values of the wrong
type with a message that names the config key, the value, the expected type
and the fix. :func:`check_sections` parses every section of a config at once;
the Snakefile calls it while it builds the job graph (``workflow/rules/
common.smk``), so ``snakemake -n`` rejects a bad value before any job runs, and
``cortexflow <stage> --config`` calls it through :mod:`cortexflow.config`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from cortexflow.errors import CortexflowInputError

SCHEMA = "workflow/schemas/config.schema.yaml"

# config section -> "module:Class" of its dataclass; PER_MODALITY sections hold
# one sub-section per modality, each parsed with the class.
SECTIONS: dict[str, str] = {
    "simulate": "cortexflow.data.simulate:SimulationConfig",
    "glm": "cortexflow.preprocess.glm:GLMConfig",
    "rois": "cortexflow.preprocess.rois:ROIConfig",
    "dataset": "cortexflow.preprocess.dataset:DatasetConfig",
    "vae": "cortexflow.models.params:VAEParams",
    "decoder": "cortexflow.models.params:DecoderParams",
    "baseline": "cortexflow.models.ridge:RidgeConfig",
    "sampling": "cortexflow.models.params:SamplingParams",
    "evaluation": "cortexflow.evaluation.evaluate:EvaluationConfig",
    "cross_subject": "cortexflow.models.params:CrossSubjectParams",
}
PER_MODALITY: dict[str, tuple[str, ...]] = {
    "vae": ("image", "audio"),
    "decoder": ("image", "audio", "text"),
    "sampling": ("image", "audio", "text"),
}


def section_class(section: str) -> type:
    """The dataclass of config section ``section`` (imported on first use)."""
    module, name = SECTIONS[section].split(":")
    return getattr(importlib.import_module(module), name)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_name(hint: Any) -> str:
    """A reader's name for a type hint: ``integer``, ``list of integer``, ``one of 'a', 'b'``."""
    if hint is Any or hint is None:
        return "any value"
    if hint is type(None):
        return "null"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"list of {len(args)} values ({', '.join(type_name(a) for a in args)})"
        return f"list of {type_name(args[0])}" if args else "list"
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}" if args else "mapping"
    if dataclasses.is_dataclass(hint):
        return f"mapping of {hint.__name__}'s keys"
    return {int: "integer", float: "number", str: "string", bool: "true or false"}.get(hint, getattr(hint, "__name__", str(hint)))


class _Mismatch(Exception):
    """A value that does not fit its type hint (internal; turned into the input error)."""


def _convert(hint: Any, value: Any, key: str) -> Any:
    """``value`` checked against ``hint`` and converted (lists to tuples, mappings to dataclasses)."""
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, key)
            except _Mismatch:
                continue
        raise _Mismatch
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch
        return from_mapping(hint, value, key)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _Mismatch
            return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or hint is tuple) else items
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch
        k_hint, v_hint = args if args else (Any, Any)
        return {_convert(k_hint, k, key): _convert(v_hint, v, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if isinstance(hint, type) and not isinstance(value, hint):
        raise _Mismatch
    return value


def from_mapping(cls: type, values: Mapping | None, key: str):
    """Dataclass ``cls`` from a config mapping at config key ``key`` (e.g. ``decoder.text``).

    Unknown keys and values whose type does not fit the field's annotation
    (nested dataclasses, ``X | None``, ``list[int]``, ``tuple[int, int]``,
    ``Mapping[str, T]``, ``Literal[...]``) raise :class:`CortexflowInputError`
    naming the key, the value, the expected type and the fix. An ``int`` is
    accepted where a ``float`` is expected; nothing else is coerced.
    """
    if isinstance(values, cls):
        return values
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise CortexflowInputError(
            f"config key '{key}' is {values!r}; expected a mapping of {cls.__name__}'s keys",
            fix=f"write {key}: {{key: value, ...}} (see '{key}' in {SCHEMA})")
    known = [f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]
    unknown = sorted(set(values) - set(known), key=str)
    if unknown:
        raise CortexflowInputError(
            f"{key} config: unknown keys {', '.join(f'{key}.{u}' for u in unknown)}",
            fix=f"remove or rename them; the keys of {key} are {', '.join(known)} (described in {SCHEMA})")
    hints = _hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints.get(name, Any)
        try:
            kwargs[name] = _convert(hint, value, f"{key}.{name}")
        except _Mismatch:
            default = defaults(cls)[name]
            raise CortexflowInputError(
                f"config key '{key}.{name}' is {value!r} ({type(value).__name__}); expected {type_name(hint)}",
                fix=f"give {key}.{name} a value of that type (default: {default!r}; see {SCHEMA})") from None
    return cls(**kwargs)


def _default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None


def defaults(cls: type) -> dict[str, Any]:
    """The dataclass's defaults as plain config values (tuples as lists, nested dataclasses as mappings)."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {f.name: plain(_default(cls, f.name)) for f in dataclasses.fields(cls)
            if f.init and not f.name.startswith("_")}


def parse_section(config: Mapping, section: str, modality: str | None = None):
    """The dataclass of one section of ``config`` (one modality's entry for per-modality sections)."""
    cls = section_class(section)
    values = config.get(section) or {}
    if section in PER_MODALITY:
        if modality is None:
            raise ValueError(f"section {section} is per modality: pass modality")
        if not isinstance(values, Mapping):
            raise CortexflowInputError(f"config key '{section}' is {values!r}; expected a mapping of modality to settings",
                                       fix=f"write {section}: {{image: {{...}}, ...}} (see {SCHEMA})")
        return modality_params(values, modality, cls, section)
    return from_params(cls, values, section)


def modality_params(params: Mapping, modality: str, cls: type, section: str):
    """The dataclass ``cls`` of one modality's sub-section of config section ``section`` (e.g. ``decoder.image``)."""
    if modality not in params:
        raise CortexflowInputError(f"the config section {section} has no entry for modality {modality!r}",
                                   fix=f"add {section}: {{{modality}: {{...}}}} (an empty mapping takes the defaults)")
    return from_params(cls, params[modality] or {}, f"{section}.{modality}")


def from_params(cls: type, values: Mapping | None, key: str):
    """``cls.from_params`` where the class has one (a section with its own merging rules), else :func:`from_mapping`."""
    hook = getattr(cls, "from_params", None)
    if hook is not None:
        return hook(values, key=key) if "key" in _parameters(hook) else hook(values)
    return from_mapping(cls, values, key)


def _parameters(func) -> set[str]:
    import inspect

    return set(inspect.signature(func).parameters)


def check_sections(config: Mapping, modalities: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse every stage section of ``config``; return {section or section.modality: dataclass}.

    Raises the first :class:`CortexflowInputError` (config key, value, expected
    type, fix). ``modalities`` limits the per-modality sections to those the
    study decodes (default: ``config['data']['modalities']`` when present).
    """
    if modalities is None:
        data = config.get("data")
        modalities = data.get("modalities") if isinstance(data, Mapping) else None
        if not isinstance(modalities, (list, tuple)):  # the schema reports a bad data.modalities
            modalities = ("image", "audio", "text")
    parsed: dict[str, Any] = {}
    for section in SECTIONS:
        if section in PER_MODALITY:
            for modality in PER_MODALITY[section]:
                if modality in modalities:
                    parsed[f"{section}.{modality}"] = parse_section(config, section, modality)
        else:
            parsed[section] = parse_section(config, section)
    return parsed


# ---------------------------------------------------------------- the schema
def schema_of(hint: Any) -> dict[str, Any]:
    """The JSON schema (as in workflow/schemas/config.schema.yaml) of a type hint or a section dataclass."""
    if hint is Any:
        return {}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        options = [schema_of(a) for a in args if a is not type(None)]
        nullable = type(None) in args
        if len(options) == 1 and set(options[0]) <= {"type", "items", "additionalProperties"}:
            one = dict(options[0])
            if nullable:
                one["type"] = [one["type"], "null"] if isinstance(one["type"], str) else [*one["type"], "null"]
            return one
        return {"anyOf": options + ([{"type": "null"}] if nullable else [])}
    if dataclasses.is_dataclass(hint):
        hints = _hints(hint)
        plain = defaults(hint)
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {name: {**schema_of(hints.get(name, Any)), "default": plain[name]} for name in plain},
        }
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return {"type": "array", "items": schema_of(args[0]), "minItems": len(args), "maxItems": len(args)}
        return {"type": "array", "items": schema_of(args[0]) if args else {}}
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return {"type": "object", "additionalProperties": schema_of(args[1]) if args else {}}
    names = {int: "integer", float: "number", str: "string", bool: "boolean"}
    return {"type": names[hint]} if hint in names else {}


def _describe(generated: dict, old: dict) -> dict:
    """``generated`` with the descriptions of ``old`` (the schema file as it was) carried over."""
    out = dict(generated)
    if "description" in old:
        out = {"description": old["description"], **out}
    props = out.get("properties")
    if props:
        old_props = old.get("properties", {})
        out["properties"] = {k: _describe(v, old_props.get(k, {})) for k, v in props.items()}
    return out


def section_schemas(old: Mapping | None = None) -> tuple[dict, dict]:
    """({section: schema}, {$defs name: schema}) of every stage section, from the dataclasses."""
    old = old or {}
    props, defs = {}, {}
    for section in SECTIONS:
        generated = schema_of(section_class(section))
        old_section = old.get("properties", {}).get(section, {})
        if section in PER_MODALITY:
            name = f"{section}_modality"
            defs[name] = _describe(generated, old.get("$defs", {}).get(name, {}))
            props[section] = {
                "description": old_section.get("description", ""),
                "type": "object",
                "default": {},
                "additionalProperties": False,
                "properties": {m: {"$ref": f"#/$defs/{name}", "default": {}} for m in PER_MODALITY[section]},
            }
        else:
            props[section] = {"description": old_section.get("description", ""), **_describe(generated, old_section),
                              "default": {}}
    return props, defs


def write_schema(path: str = SCHEMA) -> None:
    """Rewrite the stage sections of the config schema from the dataclasses (descriptions kept)."""
    import yaml

    with open(path) as f:
        old = yaml.safe_load(f)
    props, defs = section_schemas(old)
    schema = dict(old)
    schema["properties"] = {**old["properties"], **props}
    schema["$defs"] = defs
    text = yaml.safe_dump(schema, sort_keys=False, width=100, allow_unicode=True, default_flow_style=None)
    with open(path, "w") as f:
        f.write("# Generated in part: the stage sections (simulate ... evaluation) and $defs are\n"
                "# written from the sections' dataclasses by `python -m cortexflow.sections`\n"
                "# (descriptions are kept); tests/test_config_sections.py checks they agree.\n" + text)


if __name__ == "__main__":
    write_schema()
