# Exit when the workflow is done, not one scheduler timespan later (cortexflow.workflow_exit):
# the default profile's 10-s timespan otherwise kept every `snakemake` call alive ~10 s after
# its last job. The handlers run after the scheduler has returned, in the main process only.

from cortexflow.workflow_exit import cancel_scheduler_wakeups


onsuccess:
    cancel_scheduler_wakeups()


onerror:
    cancel_scheduler_wakeups()
