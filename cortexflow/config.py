"""The workflow configuration outside Snakemake: load, validate, fill defaults.

The Snakefile validates its config with ``snakemake.utils.validate`` against
``workflow/schemas/config.schema.yaml``; this module reads the same schema, so
``cortexflow <stage> --config my.yaml`` sees exactly the parameters, defaults
included, that the workflow would pass to that stage.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import yaml

from cortexflow.errors import CortexflowInputError

log = logging.getLogger("cortexflow.config")

SCHEMA_RELPATH = Path("workflow") / "schemas" / "config.schema.yaml"
CONFIG_RELPATH = Path("config.yaml")


def repo_root() -> Path:
    """The folder holding the Snakefile, config.yaml and workflow/.

    The package is installed editable from the repository, so it is the parent
    of the package folder.
    """
    return Path(__file__).resolve().parent.parent


def _repo_file(relpath: Path) -> Path:
    path = repo_root() / relpath
    if not path.is_file():
        raise CortexflowInputError(
            f"cannot find {relpath} beside the cortexflow package (looked in {repo_root()})",
            path=path,
            fix="install cortexflow editable from its repository (`pip install -e .` or `make venv`) "
            "so that the workflow files sit next to the package",
        )
    return path


def schema_path() -> Path:
    """Path of the JSON schema (YAML) shared with the Snakefile."""
    return _repo_file(SCHEMA_RELPATH)


def default_config_path() -> Path:
    """Path of the embedded default configuration, the repository's config.yaml."""
    return _repo_file(CONFIG_RELPATH)


def _read_yaml(path: Path, what: str) -> Any:
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise CortexflowInputError(f"{what} does not exist", path=path, fix="check the path") from None
    except yaml.YAMLError as e:
        raise CortexflowInputError(f"{what} is not valid YAML ({e})", path=path, fix="fix the YAML syntax") from None


def load_schema() -> dict:
    return _read_yaml(schema_path(), "the config schema")


def _defaulting_validator(schema: dict):
    """A Draft 2020-12 validator that also writes each property's default.

    The jsonschema FAQ's recipe (also what ``snakemake.utils.validate`` does),
    with the defaults deep-copied so that no two configs share a mutable default.
    """
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if "default" in prop and name not in instance:
                    instance[name] = copy.deepcopy(prop["default"])
        yield from validate_properties(validator, properties, instance, subschema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})(schema)


def _key_name(error) -> str:
    keys = [str(k) for k in error.absolute_path]
    if error.validator == "additionalProperties":
        # the offending key is in the message, not in the path
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        keys += extra[:1]
    elif error.validator == "required":
        keys.append(error.message.split("'")[1])
    return ".".join(keys) or "<top level>"


def validate_config(config: dict, path: str | Path | None = None) -> dict:
    """Validate ``config`` against the schema and return a copy with defaults filled.

    Raises CortexflowInputError naming the offending key, the problem and where
    the allowed values are documented.
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise CortexflowInputError("the config must be a mapping of keys to values", path=path,
                                   fix="start from the repository's config.yaml")
    filled = copy.deepcopy(config)
    validator = _defaulting_validator(load_schema())
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(map(str, e.absolute_path)))
    from cortexflow.sections import check_sections

    try:  # every stage section with its stage's dataclass: the clearer message for keys and types
        check_sections(filled)
    except CortexflowInputError as e:
        raise CortexflowInputError(e.problem, path=path, fix=e.fix) from None
    if errors:
        error = errors[0]
        key = _key_name(error)
        fix = f"see the description of '{key}' in {SCHEMA_RELPATH}"
        if "enum" in error.schema:
            fix = f"use one of {', '.join(map(str, error.schema['enum']))} for '{key}'"
        elif error.validator == "additionalProperties":
            fix = f"remove or rename '{key}'; allowed keys are listed in {SCHEMA_RELPATH}"
        raise CortexflowInputError(f"invalid config key '{key}': {error.message}", path=path, fix=fix)
    return filled


def deep_update(base: dict, overrides: dict) -> dict:
    """``base`` updated with ``overrides``, nested mappings merged key by key.

    This is how Snakemake combines ``--configfile`` with the Snakefile's
    ``configfile:``, so a partial config file means the same thing here.
    """
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(path: str | Path) -> dict:
    """Read a workflow config (YAML) as the workflow would see it.

    The file's keys override the embedded default (config.yaml), as with
    ``snakemake --configfile``; the result is validated and the schema's
    defaults are filled in.
    """
    path = Path(path)
    overrides = _read_yaml(path, "the config file")
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise CortexflowInputError("the config must be a mapping of keys to values", path=path,
                                   fix="start from the repository's config.yaml")
    base = _read_yaml(default_config_path(), "the default config") or {}
    config = validate_config(deep_update(base, overrides), path=path)
    log.debug("loaded config %s", path)
    return config


def default_config() -> dict:
    """The embedded default configuration (config.yaml), validated, defaults filled."""
    path = default_config_path()
    return validate_config(_read_yaml(path, "the default config"), path=path)
