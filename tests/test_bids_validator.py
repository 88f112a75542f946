"""The simulated study passes the official BIDS validator (bids-validator-deno), when it is installed.

The validator is a test requirement (pinned in requirements.txt, so `make test`
installs it; it brings the ``deno`` runtime from PyPI and runs offline). Where
it is missing (a bare `pip install cortexflow`) these tests skip.

Each dataset is validated as its own root: the raw dataset, and each
derivative (fMRIPrep-style outputs, ground truth). ``-r`` (recursive) would do
all three in one call, but validator 3.0.2 does not apply a derivative's
``.bidsignore`` under ``-r``, and the derivatives need theirs: fMRIPrep's
``desc-confounds_timeseries.tsv`` is not yet in the BIDS specification, and
the ground truth holds the simulation's own arrays.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cortexflow.data.simulate import simulate_study

# the venv's bin/ first: `make test` runs pytest without activating the venv
VALIDATOR = shutil.which("bids-validator-deno", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                                    os.environ.get("PATH", "")]))
pytestmark = pytest.mark.skipif(VALIDATOR is None, reason="bids-validator-deno is not installed "
                                                           "(pip install bids-validator-deno==3.0.2)")
TINY = {"subjects": 1, "image_train": 12, "image_test": 4, "sentence_train": 6, "sentence_test": 2,
        "runs": {"image": 1, "audio": 1, "text": 1}}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return simulate_study(tmp_path_factory.mktemp("bids") / "bids", TINY, seed=0)


def _validate(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([VALIDATOR, str(root)], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("part", [".", "derivatives/fmriprep", "derivatives/ground_truth"])
def test_simulated_dataset_has_no_validator_errors(study, part):
    result = _validate(study / part)
    assert "[ERROR]" not in result.stdout + result.stderr, result.stdout[-4000:]
    assert result.returncode == 0, result.stdout[-4000:]


def test_validator_catches_what_the_simulator_no_longer_writes(study, tmp_path):
    """The check can fail: a raw _bold.json without its image is an error."""
    copy = shutil.copytree(study, tmp_path / "bids", ignore=shutil.ignore_patterns("derivatives", "stimuli"))
    (copy / "sub-01" / "func" / "sub-01_task-images_run-01_bold.json").write_text('{"RepetitionTime": 2.0}')
    result = _validate(copy)
    assert result.returncode != 0 and "SIDECAR_WITHOUT_DATAFILE" in result.stdout
