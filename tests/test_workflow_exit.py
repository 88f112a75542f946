"""Snakemake exits when the workflow is done (cortexflow.workflow_exit, workflow/rules/exit.smk).

Snakemake's scheduler leaves a non-daemon timer behind after each scheduling pass,
one ``--max-jobs-per-timespan`` timespan long, and the interpreter waits for it at
exit. Here the timespan is an hour: without the exit handlers Snakemake would sit
out that hour after its last job, and the test's ten-minute limit would kill it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cortexflow.workflow_exit import cancel_scheduler_wakeups

from test_workflow_dag import REPO, snakemake, workflow_env

HOUR = "--max-jobs-per-timespan", "10/1h"


def _toy(folder: Path, with_exit_handlers: bool) -> Path:
    folder.mkdir()
    include = f'include: "{REPO / "workflow" / "rules" / "exit.smk"}"\n' if with_exit_handlers else ""
    (folder / "Snakefile").write_text(
        include
        + 'rule all:\n    input: "a.txt", "b.txt"\n\n'
        + 'rule one:\n    output: "{name}.txt"\n    shell: "echo {wildcards.name} > {output}"\n'
    )
    return folder


def test_with_the_exit_handlers_snakemake_does_not_wait_out_the_timespan(tmp_path):
    toy = _toy(tmp_path / "toy", with_exit_handlers=True)
    proc = snakemake(toy, "--cores", "1", *HOUR, env=workflow_env(REPO), timeout=600)
    assert (toy / "a.txt").read_text() == "a\n" and (toy / "b.txt").read_text() == "b\n"
    assert "Finished jobid: 0 (Rule: all)" in proc.stderr + proc.stdout


def test_without_them_snakemake_still_waits_so_the_handlers_are_needed(tmp_path):
    """The behaviour the handlers exist for: the same run without them is still
    alive 5 s after it printed its "Elapsed time" (its timespan is an hour)."""
    toy = _toy(tmp_path / "toy", with_exit_handlers=False)
    popen = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", *HOUR], cwd=toy,
                             env=workflow_env(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(popen.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any(line.startswith("Elapsed time") for line in list(lines)):
            assert popen.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        assert (toy / "b.txt").exists(), "".join(lines)
        with pytest.raises(subprocess.TimeoutExpired):
            popen.wait(timeout=5)
    finally:
        popen.kill()
        popen.wait()


def test_only_the_scheduler_s_timers_are_cancelled():
    class JobScheduler:  # the name Snakemake's closure carries in its __qualname__
        def _schedule_reevalutation(self, delay):
            timer = threading.Timer(delay, lambda: None)
            timer.start()
            return timer

    wakeup = JobScheduler()._schedule_reevalutation(3600)
    other = threading.Timer(3600, lambda: None)
    other.start()
    try:
        assert cancel_scheduler_wakeups() == 1
        wakeup.join(timeout=10)
        assert not wakeup.is_alive() and other.is_alive()
    finally:
        other.cancel()
        wakeup.cancel()


def test_the_workflow_includes_the_exit_handlers():
    snakefile = (REPO / "Snakefile").read_text()
    assert 'include: "workflow/rules/exit.smk"' in snakefile
