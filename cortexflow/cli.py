"""The ``cortexflow`` command: one subcommand per workflow stage.

Options are generated from each stage function's keyword arguments, so the
command line and the Python API cannot drift apart::

    cortexflow simulate --out data/sim/bids --config config.yaml
    cortexflow glm-betas --bold ... --params '{"hrf_model": "spm"}'

``--params`` takes JSON (or ``@file.json``); ``--config config.yaml`` reads the
stage's section of a workflow config instead. Errors in the input (including a
file given on the command line that does not exist) are printed as one message
(file, problem, fix) and exit with status 2. Any other exception is a bug or an
environment failure: its traceback goes to the ``--log`` file (to stderr when
there is none, or with ``--verbose``), one line names it and the log, and the
exit status is 1.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import json
import logging
import re
import sys
import time
import typing
from pathlib import Path

from cortexflow.errors import CortexflowInputError
from cortexflow.stages import STAGES, get_stage

ALIASES = {"simulate": "simulate_study", "check": "check_study"}
log = logging.getLogger("cortexflow.cli")

# Help of the options the stages share (by keyword name); others get their type.
OPTION_HELP = {
    "bold": "preprocessed BOLD run (NIfTI)",
    "events": "the run's BIDS events.tsv",
    "confounds": "the run's fMRIPrep confounds TSV",
    "mask": "brain mask on the BOLD grid (NIfTI)",
    "sidecar": "the BOLD run's JSON sidecar (RepetitionTime)",
    "stimuli": "the study's stimuli.tsv (or its BIDS root)",
    "dataset": "folder written by make-dataset",
    "latents": "latent cache written by encode-latents",
    "vae": "autoencoder written by pretrain-vae",
    "ridge": "ridge decoder written by fit-baseline",
    "decoder": "decoder written by train-decoder",
    "checkpoint_dir": "folder of resumable training checkpoints",
    "sampling": "the config's sampling section as JSON (summary.md says how the decoders were sampled)",
    "modality": "which stimuli the stage works on",
    "seed": "seed of every random draw",
    "threads": "CPU threads for torch and BLAS",
    "device": "where models run; auto picks cuda when present",
    "out": "output file",
    "ground_truth": "the simulator's ground-truth folder of the subject (noise ceiling)",
    "configfile": "workflow config file(s), applied over config.yaml in order, as snakemake --configfile",
    "config": "KEY=VALUE overrides (YAML values, dotted keys nest), as snakemake --config",
    "headers_only": "read headers and tables only, not the voxels (faster; misses NaN voxels and truncated files)",
    "expdesign": "NSD's nsddata/experiments/nsd/nsd_expdesign.mat",
    "roi": "NSD ROI file whose voxels (label >= 1) are decoded (roi/nsdgeneral.nii.gz)",
    "regions": "NSD ROI label files that split the ROI into regions (roi/streams.nii.gz ...)",
    "region_tables": "their FreeSurfer colour tables naming the labels (label/<name>.mgz.ctab)",
    "stim_info": "NSD's nsd_stim_info_merged.csv (adds COCO ids)",
}
CHOICES = {"modality": ("image", "audio", "text"), "device": ("auto", "cpu", "cuda")}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help; descriptions keep their paragraphs."""


def plain(doc: str) -> str:
    """A docstring without reStructuredText markup (``x``, :func:`x`) for the terminal."""
    doc = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc)
    return doc.replace("``", "")


def _stage_doc(module: str, function: str) -> str:
    """The docstring of a stage function, read from its source without importing it
    (so ``cortexflow --help`` does not import every stage's libraries)."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return ast.get_docstring(node) or ""
        if isinstance(node, ast.ImportFrom) and node.module and any(a.name == function for a in node.names):
            return _stage_doc(node.module, function)
    return ""


def _load_params(value: str) -> dict:
    # argparse reports an ArgumentTypeError's own message (any other error as "invalid value")
    if value.startswith("@"):
        try:
            value = Path(value[1:]).read_text()
        except OSError as e:
            raise argparse.ArgumentTypeError(str(CortexflowInputError(
                f"cannot read the --params file ({e.strerror or e})", path=value[1:],
                fix="pass an existing JSON file as @file.json, or the JSON itself"))) from None
    try:
        params = json.loads(value)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(str(CortexflowInputError(
            f"--params is not valid JSON ({e})", fix="pass a JSON object or @file.json"))) from None
    if not isinstance(params, dict):
        raise argparse.ArgumentTypeError(str(CortexflowInputError(
            "--params must be a JSON object", fix="pass e.g. '{\"key\": 1}'")))
    return params


def _config_section(path: str, section: str | None, stage: str) -> dict:
    from cortexflow.config import load_config

    cfg = load_config(path)
    return dict(cfg.get(section, {})) if section else {}


def _add_stage_parser(sub, name: str) -> None:
    module, func_name, section = STAGES[name]
    cli_name = name.replace("_", "-")
    func = get_stage(name)
    doc = plain(inspect.getdoc(func) or "")
    p = sub.add_parser(cli_name, help=doc.splitlines()[0] if doc else None, description=doc,
                       aliases=[a for a, t in ALIASES.items() if t == name], formatter_class=_HelpFormatter)
    p.set_defaults(_stage=name)
    hints = typing.get_type_hints(func)
    for pname, param in inspect.signature(func).parameters.items():
        if param.kind not in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD):
            continue
        flag = "--" + pname.replace("_", "-")
        required = param.default is inspect.Parameter.empty
        hint = hints.get(pname, str)
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if pname == "params":
            p.add_argument(flag, type=_load_params, default=None, help="stage parameters as JSON or @file.json")
            continue
        kwargs: dict = {"dest": pname, "required": required and pname != "params"}
        kwargs["help"] = OPTION_HELP.get(pname) or (
            "output " + pname[4:].replace("_", " ") if pname.startswith("out_") else pname.replace("_", " "))
        kwargs["default"] = param.default if not required else argparse.SUPPRESS  # no "(default: None)"
        if pname in CHOICES:
            kwargs["choices"] = CHOICES[pname]
        if origin in (list, tuple) or hint in (list, tuple):
            kwargs["nargs"] = "+"
            kwargs["type"] = args[0] if args and args[0] in (int, float) else str
        elif hint is bool:
            kwargs = {"dest": pname, "action": argparse.BooleanOptionalAction, "help": kwargs["help"],
                      "default": param.default if not required else False}
        elif hint in (int, float):
            kwargs["type"] = hint
        elif type(None) in args:
            non_none = [a for a in args if a is not type(None)]
            kwargs["type"] = non_none[0] if non_none and non_none[0] in (int, float) else str
        p.add_argument(flag, **kwargs)
    if "params" in inspect.signature(func).parameters:
        p.add_argument("--config", default=None, help=f"workflow config file; its '{section}' section gives the parameters")
    p.add_argument("--log", default=None, help="also write the log to this file")
    p.add_argument("--verbose", "-v", action="store_true", help="log debug messages too")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only`` (a stage name), import and describe just that stage,
    so a command does not pay for importing every other stage's libraries."""
    parser = argparse.ArgumentParser(prog="cortexflow", description=plain(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(title="stages", metavar="STAGE")
    if only is not None:
        _add_stage_parser(sub, only)
        return parser
    for name, (module, function, _) in STAGES.items():  # the list only: no stage is imported
        doc = plain(_stage_doc(module, function))
        sub.add_parser(name.replace("_", "-"), help=doc.splitlines()[0] if doc else None,
                       aliases=[a for a, t in ALIASES.items() if t == name])
    return parser


def _requested_stage(argv: list[str]) -> str | None:
    for arg in argv:
        if arg.startswith("-"):
            continue
        key = ALIASES.get(arg, arg).replace("-", "_")
        return key if key in STAGES else None
    return None


def _setup_logging(log_file: str | None, verbose: bool) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_requested_stage(argv))
    args = parser.parse_args(argv)
    if not hasattr(args, "_stage"):
        parser.print_help()
        return 1
    _setup_logging(args.log, args.verbose)
    name = args._stage
    # --config is the config file of a stage with --params; check-study's own --config takes key=value
    own_config = "params" not in inspect.signature(get_stage(name)).parameters
    kwargs = {k: v for k, v in vars(args).items()
              if not k.startswith("_") and k not in ("log", "verbose") and (k != "config" or own_config)}
    try:
        if "params" in kwargs:
            params = kwargs["params"]
            if params is None:
                section = STAGES[name][2]
                if args.config is not None:
                    params = _config_section(args.config, section, name)
                else:  # the embedded default config, validated and with schema defaults
                    from cortexflow.config import default_config

                    params = dict(default_config().get(section, {})) if section else {}
            kwargs["params"] = params
        start = time.perf_counter()
        get_stage(name)(**kwargs)
        log.info("%s finished in %.1f s", name, time.perf_counter() - start)
    except CortexflowInputError as e:
        return _input_error(name, e)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        # an input path that the stage did not check itself: still the one-line message
        what = {FileNotFoundError: "does not exist", IsADirectoryError: "is a folder, not a file",
                NotADirectoryError: "is not inside a folder", PermissionError: "cannot be read or written (permission denied)"}
        return _input_error(name, CortexflowInputError(
            f"the file {what.get(type(e), 'cannot be used')}", path=e.filename,
            fix="check the paths given on the command line (run the earlier stages first if it is one of their outputs)"))
    except Exception as e:  # noqa: BLE001 - anything else is reported, with its traceback, in the job's log
        trainer = sys.modules.get("cortexflow.training.trainer")  # imported if a training stage ran
        if trainer is not None and isinstance(e, trainer.TrainingInterrupted):
            # a time limit's SIGTERM: the checkpoint is written, a rerun resumes; not a bug, no traceback
            print(f"cortexflow {name.replace('_', '-')}: {e}", file=sys.stderr)
            return 128 + 15  # what a process killed by SIGTERM reports
        return _unexpected_error(name, e, args.log, args.verbose)
    return 0


def _input_error(name: str, e: CortexflowInputError) -> int:
    log.error("%s", e)
    print(f"cortexflow {name.replace('_', '-')}: error: {e}", file=sys.stderr)
    return 2


def _unexpected_error(name: str, e: BaseException, log_file: str | None, verbose: bool) -> int:
    """The traceback into the stage's log (where a cluster job's output is kept), one line on stderr."""
    import traceback

    trace = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    summary = f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__
    for handler in logging.getLogger().handlers:
        handler.flush()
    if log_file:
        try:
            with open(log_file, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR cortexflow.cli: {name} failed unexpectedly\n{trace}")
        except OSError:
            log_file = None
    if not log_file or verbose:
        sys.stderr.write(trace)
    where = f"; the traceback is in {log_file}" if log_file else ""
    print(f"cortexflow {name.replace('_', '-')}: unexpected error: {summary}{where}. This is a bug or a failure "
          f"of the machine (memory, disk); please report it with the log", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
