"""The ``cortexflow`` command: one subcommand per workflow stage, and a few tools.

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

Every subcommand is a function named in :data:`COMMANDS` (the workflow stages
come from :data:`cortexflow.stages.STAGES`). Its options, its one-line summary
(the first sentence of its docstring) and its help are read from its source
with ``ast``, not imported, so ``--help`` never loads torch, scipy or nilearn;
the function's module is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import importlib.util
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cortexflow import __version__
from cortexflow.errors import CortexflowInputError
from cortexflow.stages import STAGES

# Subcommands that are not workflow rules: name (underscores) -> (module, function,
# config section its --params come from, or None). Add one line per command; its
# options are the function's keyword arguments, its summary its docstring's first
# sentence (the workflow stages are found in cortexflow/stages/ by name).
COMMANDS: dict[str, tuple[str, str, str | None]] = {}

ALIASES = {"simulate": "simulate_study", "check": "check_study"}
# Defaults of the command line that differ from the Python functions': like the
# workflow (config `device: auto`), a command runs on CUDA when there is one;
# Python callers keep the functions' explicit cpu.
OPTION_DEFAULTS = {"device": "auto"}
log = logging.getLogger("cortexflow.cli")

# Help of the options the stages share (by keyword name); others get their type.
OPTION_HELP = {
    "bold": "preprocessed BOLD run (NIfTI)",
    "events": "the run's BIDS events.tsv",
    "confounds": "the run's fMRIPrep confounds TSV",
    "mask": "brain mask on the BOLD grid (NIfTI)",
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
    "outs": "one output file per --seeds entry, in the same order",
    "seeds": "the training seeds to train together (config.seed + k for training seed k)",
    "out_curves": "one loss-curve file per --seeds entry (default: beside each output)",
    "ground_truth": "the simulator's ground-truth folder of the subject (noise ceiling)",
    "glmsingle": "GLMsingle's TYPED_FITHRF_GLMDENOISE_RR file (.npy, or .mat from MATLAB) for the runs of --glmsingle-events: "
                 "its betas are used instead of estimating them, and the BOLD run is not read",
    "glmsingle_events": "the events.tsv of every run that GLMsingle fitted, in its run order (this run's among them)",
    "sidecar": "the BOLD run's JSON sidecar (RepetitionTime; default: beside --bold)",
    "stimuli_tsv": "the study's stimuli.tsv",
    "evaluation": "the config's evaluation section as JSON (the metrics' settings)",
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


def summary(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line (the subcommand list's entry)."""
    paragraph = " ".join(plain(doc).strip().split("\n\n")[0].split())
    depth = 0
    for i, char in enumerate(paragraph):
        depth += {"(": 1, ")": -1}.get(char, 0)
        # a full stop outside brackets, before the end or a space ("v1.2" and "e.g. x" go on)
        if char in ".!?" and depth == 0 and (i + 1 == len(paragraph) or paragraph[i + 1] == " ") and \
                not re.search(r"\b(e\.g|i\.e|cf|etc|vs|al|Fig|Eq)\.$", paragraph[: i + 1]):
            return paragraph[: i + 1]
    return paragraph


REQUIRED = object()  # the default of an argument that has none


@dataclass(frozen=True)
class Option:
    """One keyword argument of a command function, as its source declares it."""

    name: str
    annotation: ast.expr | None
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class CommandSource:
    """A command function read from its module's source: docstring and keyword arguments."""

    module: str
    function: str
    doc: str
    options: tuple[Option, ...]


def _module_file(module: str) -> Path:
    """The source file of a module, found without importing it or its packages.

    (``importlib.util.find_spec`` would import the parent packages, and
    ``cortexflow.preprocess``'s ``__init__`` imports scipy and nilearn.)
    """
    parts = module.split(".")
    if parts[0] == "cortexflow":
        base = Path(__file__).resolve().parent.joinpath(*parts[1:])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"no module {module!r}")
    return Path(spec.origin)


def _function_node(module: str, function: str) -> tuple[str, ast.FunctionDef]:
    """(module defining it, its ``def`` node), following ``from x import function`` re-exports."""
    origin = _module_file(module)
    tree = ast.parse(origin.read_bytes(), filename=str(origin))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return module, node
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and any(
                a.name == function and a.asname in (None, function) for a in node.names):
            return _function_node(node.module, function)
    raise ImportError(f"{module} has no function {function!r}")


def _literal(node: ast.expr | None):
    return REQUIRED if node is None else ast.literal_eval(node)


@functools.lru_cache(maxsize=None)
def command_source(module: str, function: str) -> CommandSource:
    """The docstring and keyword arguments of ``module.function``, parsed (its module is not imported)."""
    where, node = _function_node(module, function)
    args = node.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    options = [Option(a.arg, a.annotation, _literal(d)) for a, d in zip(positional, defaults)
               if a.arg not in ("self", "cls") and a not in args.posonlyargs]
    options += [Option(a.arg, a.annotation, _literal(d)) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    return CommandSource(where, function, ast.get_docstring(node) or "", tuple(options))


def _annotation(node: ast.expr | None) -> ast.expr | None:
    """The annotation as an expression (a string annotation parsed), or None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return ast.parse(node.value, mode="eval").body
    return node


def _union_members(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union_members(node.left) + _union_members(node.right)
    if isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("Optional", "typing.Optional"):
        return [node.slice, ast.Constant(None)]
    return [node]


def option_kind(annotation: ast.expr | None) -> tuple[str, type]:
    """("one" | "many" | "flag", the type of each value) of an option from its annotation.

    ``list[int]``, ``tuple[str, ...]``, ``Sequence[...]``: many values; ``bool``: a
    --x/--no-x flag; ``int``/``float``: that type; ``X | None``: as ``X``;
    anything else (paths, strings): one string.
    """
    node = _annotation(annotation)
    if node is None:
        return "one", str
    members = [m for m in _union_members(node) if not (isinstance(m, ast.Constant) and m.value is None)]
    node = members[0] if len(members) == 1 else node
    scalar = {"int": int, "float": float, "str": str}
    if isinstance(node, ast.Subscript) and ast.unparse(node.value).split(".")[-1] in ("list", "tuple", "Sequence",
                                                                                      "List", "Tuple"):
        item = node.slice.elts[0] if isinstance(node.slice, ast.Tuple) else node.slice
        return "many", scalar.get(ast.unparse(item), str)
    name = ast.unparse(node).split(".")[-1]
    if name in ("list", "tuple"):
        return "many", str
    if name == "bool":
        return "flag", bool
    return "one", scalar.get(name, str)


@functools.lru_cache(maxsize=None)
def section_keys(section: str) -> tuple[str, ...]:
    """The keys of config section ``section``: the fields of its dataclass, read from the source."""
    from cortexflow.sections import SECTIONS

    module, name = SECTIONS[section].split(":")
    tree = ast.parse(_module_file(module).read_bytes())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    return tuple(n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                 and not n.target.id.startswith("_") and "ClassVar" not in ast.unparse(n.annotation))


def _params_help(section: str | None) -> str:
    if section is None:
        return "parameters as JSON or @file.json"
    from cortexflow.sections import PER_MODALITY, SCHEMA, SECTIONS

    if section not in SECTIONS:  # a section the schema alone describes (e.g. data)
        return (f"the config's '{section}' section as JSON or @file.json (its keys are described in {SCHEMA}). "
                "Without --params or --config: the default config's section")
    keys = ", ".join(section_keys(section))
    if section in PER_MODALITY:
        shape = (f"the config's '{section}' section, one entry per modality ({', '.join(PER_MODALITY[section])}) "
                 f"as JSON or @file.json, e.g. '{{\"image\": {{\"{section_keys(section)[0]}\": ...}}}}'; each "
                 f"modality's keys: {keys}")
    else:
        shape = f"the config's '{section}' section as JSON or @file.json; its keys: {keys}"
    return (f"{shape} (described in {SCHEMA}; keys left out take their defaults). Without --params or --config: "
            "the default config's section")


def commands() -> dict[str, tuple[str, str, str | None]]:
    """Every subcommand: name (underscores) -> (module, function, config section)."""
    return {**STAGES, **COMMANDS}


def get_command(name: str):
    """The function that subcommand ``name`` runs (its module imported now)."""
    module, function, _ = commands()[name.replace("-", "_")]
    return getattr(importlib.import_module(module), function)


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


def _add_command_parser(sub, name: str) -> None:
    """The full parser of subcommand ``name``: its options from the function's keyword arguments."""
    module, function, section = commands()[name]
    source = command_source(module, function)
    doc = plain(source.doc)
    p = sub.add_parser(name.replace("_", "-"), help=summary(source.doc), description=doc,
                       aliases=[a for a, t in ALIASES.items() if t == name], formatter_class=_HelpFormatter)
    p.set_defaults(_command=name)
    for option in source.options:
        flag = "--" + option.name.replace("_", "-")
        if option.name == "params":
            p.add_argument(flag, type=_load_params, default=None, help=_params_help(section))
            continue
        kind, value_type = option_kind(option.annotation)
        help_text = OPTION_HELP.get(option.name) or (
            "output " + option.name[4:].replace("_", " ") if option.name.startswith("out_")
            else option.name.replace("_", " "))
        default = OPTION_DEFAULTS.get(option.name, option.default)
        if kind == "flag":
            p.add_argument(flag, dest=option.name, action=argparse.BooleanOptionalAction, help=help_text,
                           default=False if option.required else default)
            continue
        kwargs: dict = {"dest": option.name, "required": option.required, "help": help_text,
                        "default": argparse.SUPPRESS if option.required else default, "type": value_type}
        if kind == "many":
            kwargs["nargs"] = "+"
        if option.name in CHOICES:
            kwargs["choices"] = CHOICES[option.name]
        p.add_argument(flag, **kwargs)
    if any(option.name == "params" for option in source.options) and section:
        p.add_argument("--config", default=None, help=f"workflow config file; its '{section}' section gives the parameters")
    p.add_argument("--log", default=None, help="also write the log to this file")
    p.add_argument("--verbose", "-v", action="store_true", help="log debug messages too")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only`` (a command name), the options of just that command.

    Nothing is imported to build it: every command's options and summary are read
    from its function's source (:func:`command_source`)."""
    parser = argparse.ArgumentParser(prog="cortexflow", description=plain(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, (module, function, _) in commands().items():
        if name == only:
            _add_command_parser(sub, name)
        else:  # listed; its summary is read only for the list (`cortexflow --help`), not for another command
            sub.add_parser(name.replace("_", "-"), aliases=[a for a, t in ALIASES.items() if t == name],
                           help=summary(command_source(module, function).doc) if only is None else None)
    return parser


def _requested_command(argv: list[str]) -> str | None:
    for arg in argv:
        if arg.startswith("-"):
            continue
        key = ALIASES.get(arg, arg).replace("-", "_")
        return key if key in commands() else None
    return None


class _NotForTheConsole(logging.Filter):
    """Drops records marked ``extra={"console": False}``: messages printed to stderr already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True)


def _setup_logging(log_file: str | None, verbose: bool) -> None:
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(_NotForTheConsole())
    handlers: list[logging.Handler] = [console]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:  # without reading every command's source for the parser
        print(f"cortexflow {__version__}")
        return 0
    parser = build_parser(_requested_command(argv))
    args = parser.parse_args(argv)
    if not hasattr(args, "_command"):
        parser.print_help()
        return 1
    _setup_logging(args.log, args.verbose)
    name = args._command
    # --config is the workflow config file of a command with --params; check-study's own --config
    # takes key=value overrides and is passed through
    has_params = "params" in vars(args)
    kwargs = {k: v for k, v in vars(args).items()
              if not k.startswith("_") and k not in ("log", "verbose") and (k != "config" or not has_params)}
    try:
        if "params" in kwargs:
            params = kwargs["params"]
            if params is None:
                section = commands()[name][2]
                if getattr(args, "config", None) is not None:
                    params = _config_section(args.config, section, name)
                else:  # the embedded default config, validated and with schema defaults
                    from cortexflow.config import default_config

                    params = dict(default_config().get(section, {})) if section else {}
            kwargs["params"] = params
        start = time.perf_counter()
        get_command(name)(**kwargs)
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
    log.error("%s", e, extra={"console": False})  # into the --log file; stderr gets the line below, once
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
