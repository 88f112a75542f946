"""The model stages' config sections (cortexflow.models.params) read through sections.modality_params."""

from __future__ import annotations

import pytest

from cortexflow.errors import CortexflowInputError
from cortexflow.models.params import CrossSubjectParams, DecoderParams, SamplingParams, VAEParams
from cortexflow.sections import check_sections, modality_params, parse_section, section_class


def test_one_modality_entry_becomes_its_dataclass_and_the_stages_see_the_same_names():
    import cortexflow.stages.params as stage_params

    p = modality_params({"image": {"depth": 2}, "audio": {"depth": 7}}, "image", DecoderParams, "decoder")
    assert isinstance(p, DecoderParams) and p.depth == 2 and p.hidden_dim == DecoderParams().hidden_dim
    assert modality_params({"audio": None}, "audio", VAEParams, "vae") == VAEParams()  # empty: the defaults
    assert stage_params.DecoderParams is DecoderParams and stage_params.modality_params is modality_params
    assert [section_class(s) for s in ("vae", "decoder", "sampling", "cross_subject")] == [
        VAEParams, DecoderParams, SamplingParams, CrossSubjectParams]


def test_a_missing_modality_and_sampling_keys_in_decoder_are_refused_with_the_fix():
    with pytest.raises(CortexflowInputError, match="no entry for modality 'text'") as err:
        modality_params({"image": {}}, "text", SamplingParams, "sampling")
    assert "sampling: {text: {...}}" in str(err.value)
    with pytest.raises(CortexflowInputError, match=r"\['cfg_scale', 'num_steps'\] in the config section "
                                                   r"decoder.audio are sampling settings") as err:
        modality_params({"audio": {"num_steps": 5, "cfg_scale": 1.0, "depth": 2}}, "audio", DecoderParams, "decoder")
    assert "move them to sampling: {audio: {...}}" in str(err.value)
    # batch_size is a key of both sections: allowed in decoder
    assert modality_params({"audio": {"batch_size": 8}}, "audio", DecoderParams, "decoder").batch_size == 8
    # the same check on the workflow's path (the whole config)
    with pytest.raises(CortexflowInputError, match="sampling settings"):
        parse_section({"decoder": {"image": {"solver": "heun"}}}, "decoder", "image")


def test_cross_subject_section_is_checked_with_the_other_sections():
    from cortexflow.config import default_config

    config = {**default_config(), "data": {"modalities": ["image"]}}
    parsed = check_sections({**config, "cross_subject": {"runs": [1, 3]}})
    assert parsed["cross_subject"] == CrossSubjectParams(runs=[1, 3])
    assert set(parsed) >= {"decoder.image", "sampling.image", "vae.image"} and "decoder.text" not in parsed
    with pytest.raises(CortexflowInputError, match="cross_subject.runs must list positive run counts"):
        check_sections({**config, "cross_subject": {"runs": [0]}})
