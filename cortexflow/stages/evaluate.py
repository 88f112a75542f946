"""Stages of rules ``evaluate`` and ``summarize`` (workflow/rules/evaluate.smk).

Each function lives beside the library code it drives (``cortexflow.evaluation``).
"""

from cortexflow.evaluation.evaluate import evaluate_stage
from cortexflow.evaluation.summary import summarize_stage

# the config section its stages' --params come from (cortexflow.stages.STAGES reads it)
STAGE_SECTIONS = "evaluation"

__all__ = ["evaluate_stage", "summarize_stage"]
