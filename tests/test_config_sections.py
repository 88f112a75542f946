"""Every config section is parsed by its stage's dataclass, with types, and the
schema describes the same keys, types and defaults (issue 10 item 3)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from cortexflow.config import default_config, deep_update, load_schema, validate_config
from cortexflow.errors import CortexflowInputError
from cortexflow.sections import (PER_MODALITY, SECTIONS, check_sections, defaults, from_mapping, schema_of,
                                 section_class, section_schemas)
from test_workflow_dag import REPO, TINY, snakemake


def _strip_descriptions(node):
    if isinstance(node, dict):
        return {k: _strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip_descriptions(v) for v in node]
    return node


def test_schema_sections_are_those_of_the_dataclasses():
    schema = load_schema()
    for section in SECTIONS:
        cls = section_class(section)
        entry = schema["properties"][section]
        if section in PER_MODALITY:
            assert set(entry["properties"]) == set(PER_MODALITY[section])
            entry = schema["$defs"][f"{section}_modality"]
        assert _strip_descriptions(entry) | {"default": {}} == _strip_descriptions(schema_of(cls)) | {"default": {}}, (
            f"{section}: the schema differs from {cls.__name__}; run `python -m cortexflow.sections`")


def test_schema_defaults_equal_the_dataclass_defaults():
    # an empty config filled by the schema gives each section exactly its dataclass's defaults
    filled = validate_config({})
    for section in SECTIONS:
        cls = section_class(section)
        if section in PER_MODALITY:
            for modality in PER_MODALITY[section]:
                assert filled[section][modality] == defaults(cls), (section, modality)
        else:
            assert filled[section] == defaults(cls), section
    # and the written schema regenerates to itself (descriptions kept)
    props, defs = section_schemas(load_schema())
    assert {k: v for k, v in load_schema()["properties"].items() if k in SECTIONS} == props
    assert load_schema()["$defs"] == defs


def test_every_section_of_the_shipped_configs_parses():
    parsed = check_sections(default_config())
    assert {"glm", "evaluation", "decoder.text", "sampling.image", "vae.audio"} <= set(parsed)
    tiny = yaml.safe_load((REPO / TINY).read_text())
    parsed = check_sections(validate_config(deep_update(default_config(), tiny)))
    assert parsed["decoder.text"].steps == 30 and parsed["sampling.image"].num_steps == 5


@pytest.mark.parametrize("override, key, expected", [
    ({"decoder": {"text": {"steps": "ten"}}}, "decoder.text.steps", "integer"),
    ({"glm": {"hrf": "spm"}}, "glm.hrf", "unknown"),
    ({"glm": {"method": "ols"}}, "glm.method", "one of 'lsa', 'lss'"),
    ({"vae": {"image": {"hidden_dims": [16, "32"]}}}, "vae.image.hidden_dims", "list of integer"),
    ({"vae": {"audio": {"audio": {"n_mels": 3.5}}}}, "vae.audio.audio.n_mels", "integer"),
    ({"dataset": {"select_top_k": "all"}}, "dataset.select_top_k", "integer or null"),
    ({"evaluation": {"text_features": {"ngram_range": [2]}}}, "evaluation.text_features.ngram_range", "2 values"),
    ({"simulate": {"runs": {"image": "two"}}}, "simulate.runs", "mapping of string to integer"),
    ({"sampling": {"text": {"top_k": True}}}, "sampling.text.top_k", "integer"),
    ({"baseline": {"cv_folds": 2.0}}, "baseline.cv_folds", "integer"),
    ({"rois": {"networks": {"image": "Visual"}}}, "rois.networks", "list of string"),
])
def test_bad_values_are_refused_naming_key_value_type_and_fix(override, key, expected):
    config = deep_update(default_config(), override)
    with pytest.raises(CortexflowInputError) as info:
        check_sections(config)
    message = str(info.value)
    assert key in message and expected in message and "Fix:" in message, message


@dataclass
class Inner:
    size: float = 1.0


@dataclass
class Outer:
    ids: tuple[int, ...] = (1,)
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None
    mode: Literal["a", "b"] = "a"


def test_the_helper_converts_and_nests():
    parsed = from_mapping(Outer, {"ids": [3, 4], "inner": {"size": 2}, "maybe": {"size": 5}, "mode": "b"}, "x")
    assert parsed == Outer(ids=(3, 4), inner=Inner(2.0), maybe=Inner(5.0), mode="b")
    assert isinstance(parsed.inner.size, float)
    with pytest.raises(CortexflowInputError, match=r"x\.inner\.size"):
        from_mapping(Outer, {"inner": {"size": "big"}}, "x")
    with pytest.raises(CortexflowInputError, match=r"x\.maybe\.other"):
        from_mapping(Outer, {"maybe": {"other": 1}}, "x")
    with pytest.raises(CortexflowInputError, match="one of 'a', 'b'"):
        from_mapping(Outer, {"mode": "c"}, "x")


def test_a_dry_run_rejects_a_bad_value_before_any_job(tmp_path):
    bad = copy.deepcopy(yaml.safe_load((REPO / TINY).read_text()))
    bad["decoder"]["text"] = {**bad["decoder"]["text"], "steps": "ten"}
    bad["glm"] = {"method": "lsa"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = snakemake(REPO, "-n", "--configfile", str(path), "--directory", str(tmp_path / "wd"), check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "decoder.text.steps" in out and "'ten'" in out and "integer" in out, out[-3000:]
    assert not (tmp_path / "wd" / "results").exists()
