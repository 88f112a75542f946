"""Study data: the BIDS / fMRIPrep reader and the simulated default study.

``cortexflow.data.bids`` finds and validates the runs of any dataset named as
BIDS and fMRIPrep name them; ``cortexflow.data.simulate`` writes such a dataset
from a seed (imported on demand: it loads nilearn and the stimulus sources).
"""

from cortexflow.data.bids import (
    LoadedRun,
    RunFiles,
    check_same_grid,
    find_runs,
    load_run,
    load_stimuli,
    load_stimulus,
    validate_study,
)

__all__ = ["LoadedRun", "RunFiles", "check_same_grid", "find_runs", "load_run", "load_stimuli", "load_stimulus",
           "validate_study"]
