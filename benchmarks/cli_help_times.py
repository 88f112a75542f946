"""Wall time of ``cortexflow --help``, ``--version`` and every ``cortexflow <command> --help``.

Each command runs in a fresh Python process, as a user's shell runs it (the
console script's ``from cortexflow.cli import main; main()``), once to warm the
file cache and then ``--repeats`` times; the table gives the best wall time, the
least disturbed by other work on a shared machine, the median, and the best CPU
time (user + system of the process), which other work on the machine disturbs
far less than the wall time. Writes a markdown table to stdout (and to
``--out`` when given).

    python benchmarks/cli_help_times.py [--repeats 3] [--out results/cli_help_times.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

RUN_MAIN = "import sys; from cortexflow.cli import main; sys.exit(main())"


def command_lines() -> list[list[str]]:
    """``--help``, ``--version`` (when the command has it) and ``<command> --help`` for every listed subcommand."""
    from cortexflow.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    version = [["--version"]] if "--version" in parser._option_string_actions else []
    return [["--help"], *version, *([action.dest, "--help"] for action in sub._choices_actions)]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_times(args: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """(wall times, CPU times) in seconds of ``repeats`` warm runs of ``cortexflow *args``."""
    walls, cpus = [], []
    for i in range(repeats + 1):  # the first run warms the file cache and is not counted
        cpu, start = _children_cpu(), time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", RUN_MAIN, *args], capture_output=True, text=True)
        elapsed, cpu = time.perf_counter() - start, _children_cpu() - cpu
        if proc.returncode != 0:
            raise SystemExit(f"cortexflow {' '.join(args)} exited with {proc.returncode}:\n{proc.stderr}")
        if i:
            walls.append(elapsed)
            cpus.append(cpu)
    return walls, cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    load = os.getloadavg()[0]
    for argv in command_lines():
        walls, cpus = run_times(argv, args.repeats)
        rows.append((f"cortexflow {' '.join(argv)}", min(walls), statistics.median(walls), min(cpus)))
        print(f"{rows[-1][0]}: best {rows[-1][1]:.2f} s, CPU {rows[-1][3]:.2f} s", file=sys.stderr)
    load = max(load, os.getloadavg()[0])
    lines = [f"Machine: {platform.node() or 'unknown'}, {os.cpu_count()} CPUs visible, Python "
             f"{platform.python_version()}, load average up to {load:.1f} while measuring; {args.repeats} warm "
             "runs, each a fresh process.", "",
             "| command | best wall (s) | median wall (s) | best CPU (s) |", "|---|---:|---:|---:|"]
    lines += [f"| `{name}` | {best:.2f} | {median:.2f} | {cpu:.2f} |" for name, best, median, cpu in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
