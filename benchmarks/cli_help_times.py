"""Wall time of ``cortexflow --help``, ``--version`` and every ``cortexflow <command> --help``.

Each command runs in a fresh Python process, as a user's shell runs it (the
console script's ``from cortexflow.cli import main; main()``), once to warm the
file cache and then ``--repeats`` times; the table gives the best run, the least
disturbed by other work on a shared machine, and the median. Writes a markdown
table to stdout (and to ``--out`` when given).

    python benchmarks/cli_help_times.py [--repeats 3] [--out results/cli_help_times.md]
"""

from __future__ import annotations

import argparse
import os
import platform
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


def wall_times(args: list[str], repeats: int) -> list[float]:
    times = []
    for i in range(repeats + 1):  # the first run warms the file cache and is not counted
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", RUN_MAIN, *args], capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"cortexflow {' '.join(args)} exited with {proc.returncode}:\n{proc.stderr}")
        if i:
            times.append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    for argv in command_lines():
        times = wall_times(argv, args.repeats)
        rows.append((f"cortexflow {' '.join(argv)}", min(times), statistics.median(times)))
        print(f"{rows[-1][0]}: best {rows[-1][1]:.2f} s", file=sys.stderr)
    lines = [f"Machine: {platform.node() or 'unknown'}, {os.cpu_count()} CPUs visible, Python "
             f"{platform.python_version()}; best and median of {args.repeats} warm runs, each a fresh process.", "",
             "| command | best (s) | median (s) |", "|---|---:|---:|"]
    lines += [f"| `{name}` | {best:.2f} | {median:.2f} |" for name, best, median in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
