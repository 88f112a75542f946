"""Let Snakemake exit as soon as its workflow is done.

After every scheduling pass, Snakemake's job scheduler (``JobScheduler.
_schedule_reevalutation`` in ``snakemake/scheduling/job_scheduler.py``, 9.x)
starts a ``threading.Timer`` that wakes the scheduler again one
``--max-jobs-per-timespan`` timespan later. The timer thread is not a daemon,
so at exit the interpreter waits for the last one to fire. The default profile
sets that timespan to 10 s (workflow/profiles/default/config.yaml: the
scheduler's once-a-second polling took a quarter to half of a core through a
whole study), and so every ``snakemake`` call that ran a job sat idle for up to
10 s after printing its "Elapsed time": four one-second jobs took 14.2 s under
``50/10s`` and 5.2 s under ``100/1s`` (measured, this 2-core machine).

Once the workflow has finished (Snakemake's ``onsuccess`` / ``onerror``
handlers run after the scheduler has returned) no further pass is wanted, so
workflow/rules/exit.smk cancels the pending wake-ups there.
"""

from __future__ import annotations

import threading

# Snakemake's own spelling of the method whose timers these are.
_WAKEUP = "_schedule_reevalutation"


def cancel_scheduler_wakeups() -> int:
    """Cancel the pending timers that would wake Snakemake's scheduler; returns how many.

    Only those timers are touched: their function is a closure defined in
    the scheduler method above; any other thread is left alone.
    """
    cancelled = 0
    for thread in threading.enumerate():
        function = getattr(thread, "function", None)
        if isinstance(thread, threading.Timer) and _WAKEUP in getattr(function, "__qualname__", ""):
            thread.cancel()
            cancelled += 1
    return cancelled
