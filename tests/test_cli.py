"""The ``cortexflow`` command line: help, version, one error line, and no heavy import for help.

Most checks run the command in a fresh Python process, as a shell would. Wall
times are not asserted (benchmarks/cli_help_times.py measures them); what makes
help fast is asserted instead: no torch, scipy, nilearn or pandas in
``sys.modules`` after the parser of every command is built.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
import tomllib
import typing

import pytest
import yaml

from cortexflow import cli

from test_packaging import REPO

RUN = "import sys; from cortexflow.cli import main; sys.exit(main())"
HEAVY = ("torch", "scipy", "nilearn", "pandas", "nibabel", "sklearn", "matplotlib")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def _spaces(text: str) -> str:
    return " ".join(text.split())


def test_summary_is_the_first_sentence_on_one_line():
    doc = """Train the decoder on its first
    runs (from the shared decoder). More text. And more.

    Details ``x`` and :func:`y`."""
    assert cli.summary(doc) == "Train the decoder on its first runs (from the shared decoder)."
    assert cli.summary("Scores (e.g. SSIM) per item, v1.2 of it.\n\nMore.") == "Scores (e.g. SSIM) per item, v1.2 of it."
    assert cli.summary("Uses ``torch`` here.") == "Uses torch here."
    assert cli.summary("Score it, e.g. by SSIM, per item. evaluation: JSON.") == "Score it, e.g. by SSIM, per item."


def test_top_level_help_lists_every_command_with_a_whole_sentence():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    text = _spaces(proc.stdout)
    for name, (module, function, _) in cli.commands().items():
        line = cli.summary(cli.command_source(module, function).doc)
        assert line.endswith(".") and "\n" not in line and len(line) > 20, (name, line)
        assert line.count("(") == line.count(")") and line.count('"') % 2 == 0, (name, line)
        assert re.search(r"\b" + name.replace("_", "-") + r"\b", text), name
        # argparse may break the line at a hyphen ("per- item"): compare without spaces
        assert line.replace(" ", "") in text.replace(" ", ""), (name, line)


def test_version_is_the_package_version():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    import cortexflow

    assert cortexflow.__version__ == version
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"cortexflow {version}", proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(cli.commands()))
def test_every_command_help_exits_0_and_lists_its_options(name):
    proc = run_cli(name.replace("_", "-"), "--help")
    assert proc.returncode == 0, proc.stderr
    module, function, section = cli.commands()[name]
    for option in cli.command_source(module, function).options:
        assert "--" + option.name.replace("_", "-") in proc.stdout, option.name
    assert cli.summary(cli.command_source(module, function).doc) in _spaces(proc.stdout)
    if section is not None and any(o.name == "params" for o in cli.command_source(module, function).options):
        # --params names the config section and each of its keys
        from cortexflow.sections import SECTIONS

        assert f"'{section}' section" in _spaces(proc.stdout)
        if section in SECTIONS:
            assert all(key in proc.stdout for key in cli.section_keys(section))


def test_building_every_parser_imports_no_heavy_library():
    code = f"""
import sys
from cortexflow import cli
for name in cli.commands():
    try:
        cli.main([name.replace("_", "-"), "--help"])
    except SystemExit:
        pass
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


def test_an_input_error_is_printed_once_and_logged_once(tmp_path):
    log_file = tmp_path / "simulate.log"
    missing = tmp_path / "no_such_config.yaml"
    proc = run_cli("simulate-study", "--out", str(tmp_path / "bids"), "--config", str(missing), "--log", str(log_file))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count(str(missing)) == 1 and proc.stderr.count("does not exist") == 1, proc.stderr
    assert proc.stderr.startswith("cortexflow simulate-study: error: ") and "Traceback" not in proc.stderr
    assert log_file.read_text().count(str(missing)) == 1  # the log keeps it for a cluster job
    assert not (tmp_path / "bids").exists()


def test_options_read_from_source_match_the_imported_functions():
    """The parser never imports a command; its view of each signature must be what Python sees."""
    for name in cli.commands():
        function = cli.get_command(name)
        source = cli.command_source(*cli.commands()[name][:2])
        signature = inspect.signature(function)
        hints = typing.get_type_hints(function)
        assert [o.name for o in source.options] == list(signature.parameters), name
        for option in source.options:
            param = signature.parameters[option.name]
            assert option.required == (param.default is inspect.Parameter.empty), (name, option.name)
            if not option.required:
                assert option.default == param.default, (name, option.name)
            hint = hints.get(option.name, str)
            kind, value_type = cli.option_kind(option.annotation)
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            many = typing.get_origin(hint) in (list, tuple) or any(typing.get_origin(a) in (list, tuple) for a in args)
            assert (kind == "many") == many, (name, option.name, hint)
            assert (kind == "flag") == (hint is bool), (name, option.name, hint)
            if hint in (int, float):
                assert value_type is hint, (name, option.name)


def test_option_kinds_of_annotations():
    def kind(text):
        return cli.option_kind(ast.parse(text, mode="eval").body)

    assert kind("list[int]") == ("many", int) and kind("tuple[float, ...]") == ("many", float)
    assert kind("list[str] | None") == ("many", str) and kind("Optional[int]") == ("one", int)
    assert kind("int | None") == ("one", int) and kind("bool") == ("flag", bool) and kind("Path") == ("one", str)
    assert cli.option_kind(ast.Constant("float")) == ("one", float) and cli.option_kind(None) == ("one", str)


def test_params_keys_listed_are_the_section_dataclass_keys():
    from cortexflow.sections import SECTIONS, defaults, section_class

    for section in SECTIONS:
        assert list(cli.section_keys(section)) == list(defaults(section_class(section))), section


def test_device_defaults_to_the_configs_auto():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["device"]["default"] == cli.OPTION_DEFAULTS["device"] == "auto"
    assert set(schema["properties"]["device"]["enum"]) == set(cli.CHOICES["device"])
    parser = cli.build_parser("train_decoder")
    args = parser.parse_args(["train-decoder", "--dataset", "d", "--modality", "image", "--out", "o",
                              "--checkpoint-dir", "c"])
    assert args.device == "auto" and args.params is None and args.seed == 0


def test_params_json_and_file_reach_the_command(tmp_path):
    parser = cli.build_parser("make_dataset")
    base = ["make-dataset", "--roi-betas", "b", "--trials", "t", "--voxels", "v", "--stimuli", "s", "--out-dir", "o"]
    assert parser.parse_args(base + ["--params", '{"val_fraction": 0.2}']).params == {"val_fraction": 0.2}
    (tmp_path / "p.json").write_text(json.dumps({"zscore": "run"}))
    assert parser.parse_args(base + ["--params", f"@{tmp_path / 'p.json'}"]).params == {"zscore": "run"}
