"""Where a whole workflow run's time went, from Snakemake's own log (issue 24).

    .venv/bin/python benchmarks/run_timeline.py make_run.log --cores 2 --out /tmp/timeline.md

Reads the log that ``snakemake`` (or ``make run``) printed: each job's start
(the timestamp line before ``rule NAME:`` / ``localrule NAME:``, with its
``jobid``, ``wildcards`` and ``threads``) and its end (the timestamp line before
``Finished jobid: N``). Snakemake stamps to the second, so a job's duration is
good to about a second. Reports

- per rule: jobs, summed job-seconds, mean and longest job, and the share of all
  job-seconds (what the run spent its cores on);
- the run: wall clock from the first job's start to the last job's end, the
  core-seconds the jobs held (duration x threads, capped at ``--cores``), and how
  much of the machine that is; how long 0, 1, 2, ... jobs ran at once;
- milestones: when the study existed, when the first and the last decoder
  training started and ended, and when the summary was written, as minutes from
  the first job's start;
- the ten longest jobs.

It reads only the log, so it works on a run that another machine made.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import re
import sys
from dataclasses import dataclass
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
RULE = re.compile(r"^(?:local)?rule (\w+):$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)")
FIELD = re.compile(r"^\s+(jobid|wildcards|threads): (.*)$")


@dataclass
class Job:
    jobid: int
    rule: str
    start: dt.datetime
    end: dt.datetime | None = None
    wildcards: str = ""
    threads: int = 1

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds() if self.end else float("nan")


def parse_log(lines: list[str]) -> list[Job]:
    """The finished jobs of a Snakemake log, in order of start."""
    jobs: dict[int, Job] = {}
    stamp: dt.datetime | None = None
    current: dict | None = None  # the job block being read: rule, start, fields
    for line in lines:
        line = line.rstrip("\n")
        if m := STAMP.match(line):
            stamp = dt.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            current = None
            continue
        if stamp is None:
            continue
        if m := RULE.match(line):
            current = {"rule": m.group(1), "start": stamp}
            continue
        if m := FINISHED.match(line):
            job = jobs.get(int(m.group(1)))
            if job is not None:
                job.end = stamp
            continue
        if current is not None and (m := FIELD.match(line)):
            key, value = m.groups()
            if key == "jobid":
                current["jobid"] = int(value)
                jobs[int(value)] = Job(int(value), current["rule"], current["start"])
            elif "jobid" in current:
                job = jobs[current["jobid"]]
                if key == "wildcards":
                    job.wildcards = value
                else:
                    job.threads = int(value)
    return sorted((j for j in jobs.values() if j.end is not None), key=lambda j: (j.start, j.jobid))


def summarize(jobs: list[Job], cores: int) -> dict:
    """The numbers of the report, as a dict (the tests read it)."""
    if not jobs:
        raise SystemExit("no finished job in the log")
    first, last = min(j.start for j in jobs), max(j.end for j in jobs)
    wall = (last - first).total_seconds()
    by_rule = collections.defaultdict(list)
    for job in jobs:
        by_rule[job.rule].append(job.seconds)
    total = sum(j.seconds for j in jobs)
    # how many jobs ran in each second of the run
    running = collections.Counter()
    busy = 0.0
    for second in range(int(wall)):
        t = first + dt.timedelta(seconds=second + 0.5)
        active = [j for j in jobs if j.start <= t < j.end]
        running[len(active)] += 1
        busy += min(cores, sum(j.threads for j in active))

    def minutes(t: dt.datetime) -> float:
        return (t - first).total_seconds() / 60

    trainings = [j for j in jobs if j.rule == "train_decoder"]
    milestones = {}
    for rule, label in (("simulate_study", "study written (simulate_study ends)"),
                        ("summarize", "summary written (summarize ends)")):
        ends = [j.end for j in jobs if j.rule == rule]
        if ends:
            milestones[label] = minutes(max(ends))
    if trainings:
        milestones["first decoder training starts"] = minutes(min(j.start for j in trainings))
        milestones["last decoder training starts"] = minutes(max(j.start for j in trainings))
        milestones["last decoder training ends"] = minutes(max(j.end for j in trainings))
    return {
        "wall_s": wall, "job_s": total, "busy_core_s": busy, "cores": cores, "jobs": len(jobs),
        "rules": {rule: {"jobs": len(s), "sum_s": sum(s), "mean_s": sum(s) / len(s), "max_s": max(s),
                         "share": sum(s) / total if total else 0.0}
                  for rule, s in sorted(by_rule.items(), key=lambda kv: -sum(kv[1]))},
        "running": dict(sorted(running.items())),
        "milestones": milestones,
        "longest": [(j.rule, j.wildcards, j.seconds) for j in sorted(jobs, key=lambda j: -j.seconds)[:10]],
    }


def report(s: dict, source: str) -> str:
    """The markdown report."""
    lines = [f"# Where the run's time went ({source})", "",
             f"{s['jobs']} jobs; wall clock from the first job's start to the last job's end: "
             f"**{s['wall_s'] / 60:.1f} min**; the jobs held {s['busy_core_s'] / 60:.1f} core-minutes of the "
             f"{s['cores']} cores' {s['cores'] * s['wall_s'] / 60:.1f} "
             f"(**{s['busy_core_s'] / max(s['cores'] * s['wall_s'], 1):.0%}** busy; Snakemake's own process "
             "and anything else on the machine are not counted).", "",
             "| rule | jobs | job-minutes | share | mean s | longest s |", "|---|---:|---:|---:|---:|---:|"]
    for rule, r in s["rules"].items():
        lines.append(f"| {rule} | {r['jobs']} | {r['sum_s'] / 60:.1f} | {r['share']:.0%} | {r['mean_s']:.0f} | "
                     f"{r['max_s']:.0f} |")
    lines += ["", "| jobs running at once | minutes |", "|---:|---:|"]
    lines += [f"| {k} | {v / 60:.1f} |" for k, v in s["running"].items()]
    if s["milestones"]:
        lines += ["", "| milestone | minutes from the first job's start |", "|---|---:|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in sorted(s["milestones"].items(), key=lambda kv: kv[1])]
    lines += ["", "| longest jobs | wildcards | s |", "|---|---|---:|"]
    lines += [f"| {rule} | {wc} | {sec:.0f} |" for rule, wc, sec in s["longest"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="the output of snakemake / make run")
    parser.add_argument("--cores", type=int, default=2, help="the cores the run had (default 2)")
    parser.add_argument("--out", type=Path, help="write the markdown report here (default: print it)")
    args = parser.parse_args(argv)
    text = report(summarize(parse_log(args.log.read_text(errors="replace").splitlines()), args.cores), args.log.name)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
